//! The outbox publisher's tracing span. Alone in its test binary: tracing
//! caches per call site whether anyone listens, so a test that installs a
//! subscriber must not share a process with tests that run without one.

mod common;

use common::spans::Spans;

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use whizbang_core::backend::MemoryEventStore;
use whizbang_core::outbox::{MemoryOutbox, MemoryTransport, OutboxPublisher};
use whizbang_core::{receptor, Command, Context, Event, EventId, Receptor, Result, Runtime};

#[derive(Event, Serialize, Deserialize, Clone)]
#[event(publish)]
struct Shipped {
    #[stream_key]
    id: uuid::Uuid,
}

#[derive(Command, Serialize, Deserialize)]
#[command(output = EventId)]
struct Ship;

#[derive(Default)]
struct Dock;

#[receptor]
impl Receptor<Ship> for Dock {
    async fn handle(&self, _: Ship, cx: &mut Context) -> Result<EventId> {
        cx.emit(Shipped {
            id: uuid::Uuid::now_v7(),
        })
    }
}

#[tokio::test(flavor = "current_thread")]
async fn publishing_runs_in_a_span_naming_its_message_correlation_and_causation() {
    let (spans, _default) = Spans::install();
    let outbox = MemoryOutbox::new();
    let rt = Runtime::builder()
        .event_store(MemoryEventStore::new().with_outbox(outbox.clone()))
        .build()
        .expect("the runtime starts");
    let scope = rt.scope();
    let shipped = scope.send(Ship).await.expect("sent");
    scope.complete().await.expect("completed");
    let stored = rt
        .event_store()
        .read_stream(
            rt.event_store().locate(&[shipped]).await.expect("located")[0].stream_id,
            0,
        )
        .await
        .expect("read");
    let metadata = &stored[0].metadata;
    let cause = metadata.causation_id.expect("the command caused it");
    let publisher = OutboxPublisher::new(Arc::new(outbox), Arc::new(MemoryTransport::new()));
    let published =
        tokio::time::timeout(std::time::Duration::from_secs(30), publisher.publish_once())
            .await
            .expect("published within 30 s")
            .expect("published");
    assert_eq!(published, 1);
    let recorded = spans.recorded();
    let fields = recorded
        .iter()
        .find(|(n, _)| n == "whizbang.outbox.publish")
        .map(|(_, f)| f.clone())
        .unwrap_or_else(|| panic!("no outbox span in {recorded:?}"));
    for (what, value) in [
        ("message", shipped.to_string()),
        ("correlation", metadata.correlation_id.to_string()),
        ("causation", cause.to_string()),
    ] {
        assert!(
            fields.contains(&value),
            "the span names the {what} id: {fields}"
        );
    }
}

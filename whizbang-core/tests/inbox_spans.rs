//! The inbox's tracing spans. Alone in its test binary: tracing caches per
//! call site whether anyone listens, so a test that installs a subscriber
//! must not share a process with tests that run without one.

mod common;

use common::spans::Spans;

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use whizbang_core::inbox::{Delivery, Inbox};
use whizbang_core::queue::{MemoryMessageQueue, QueuedMessage};
use whizbang_core::{receptor, Context, Envelope, Event, MessageId, Receptor, Result, Runtime};

#[derive(Event, Serialize, Deserialize, Clone)]
struct Traced {
    #[stream_key]
    id: uuid::Uuid,
}

#[derive(Default)]
struct Quiet;

#[receptor]
impl Receptor<Traced> for Quiet {
    async fn handle(&self, _: Traced, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn handling_a_message_runs_in_spans_naming_its_message_correlation_and_causation() {
    let (spans, _default) = Spans::install();
    let rt = Runtime::in_memory().expect("the runtime starts");
    let inbox = Inbox::builder(rt, Arc::new(MemoryMessageQueue::new()))
        .event::<Traced>()
        .build();
    let (correlation, cause) = (MessageId::new(), MessageId::new());
    let message = QueuedMessage::from_envelope(&Envelope::new(Traced {
        id: uuid::Uuid::now_v7(),
    }))
    .expect("serialises")
    .caused_by(correlation, cause);
    let id = message.id;
    let delivered =
        tokio::time::timeout(std::time::Duration::from_secs(30), inbox.deliver(message))
            .await
            .expect("delivered within 30 s")
            .expect("delivered");
    assert_eq!(delivered, Delivery::Processed);
    let recorded = spans.recorded();
    for name in ["whizbang.inbox.process", "whizbang.receive"] {
        let fields = recorded
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no span {name} in {recorded:?}"));
        for (what, value) in [
            ("message", id),
            ("correlation", correlation),
            ("causation", cause),
        ] {
            assert!(
                fields.contains(&value.to_string()),
                "{name} names the {what} id: {fields}"
            );
        }
    }
}

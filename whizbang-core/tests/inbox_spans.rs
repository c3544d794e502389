//! The inbox's tracing spans. Alone in its test binary: tracing caches per
//! call site whether anyone listens, so a test that installs a subscriber
//! must not share a process with tests that run without one.

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

/// Records the spans opened while it is the default subscriber: name and
/// the fields given when the span was created.
#[derive(Default)]
struct Spans(std::sync::Mutex<Vec<(String, String)>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for &'static Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = String::new();
        span.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().expect("not poisoned");
        spans.push((span.metadata().name().to_owned(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(flavor = "current_thread")]
async fn handling_a_message_runs_in_spans_naming_its_message_correlation_and_causation() {
    let spans: &'static Spans = Box::leak(Box::default());
    let _default = tracing::subscriber::set_default(spans);
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
    let recorded = spans.0.lock().expect("not poisoned").clone();
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

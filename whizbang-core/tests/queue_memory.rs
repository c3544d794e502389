//! The queue conformance suite on the memory queue (manual clock: no
//! sleeping), plus what only the memory queue shows.

use std::time::Duration;
use whizbang_core::backend::conformance::queue::QueueUnderTest;
use whizbang_core::queue::{
    EnqueueOutcome, ManualClock, MemoryMessageQueue, MessageQueue, QueueOptions, QueuedMessage,
};
use whizbang_core::InstanceId;

fn manual(options: QueueOptions) -> QueueUnderTest {
    let clock = ManualClock::new();
    QueueUnderTest::manual(
        MemoryMessageQueue::with_clock(options, clock.clone()),
        clock,
    )
}

mod default_options {
    whizbang_core::queue_conformance_tests!(|| async {
        super::manual(whizbang_core::queue::QueueOptions::default())
    });
}

/// The attempt-limit contracts hold for any limit, one attempt included.
#[tokio::test]
async fn the_attempt_limit_contracts_hold_for_limits_of_one_to_three() {
    use whizbang_core::backend::conformance::queue as contracts;
    for max in 1..=3 {
        let factory = move || async move { manual(QueueOptions::default().max_attempts(max)) };
        contracts::failing_at_the_attempt_limit_dead_letters_the_message_with_its_error(&factory)
            .await;
        contracts::expired_leases_count_as_attempts_and_dead_letter_at_the_limit(&factory).await;
        contracts::dead_letters_are_listed_and_replayed_into_the_queue(&factory).await;
    }
}

#[tokio::test]
async fn run_all_passes_on_the_system_clock_with_short_ticks() {
    let factory = || async {
        QueueUnderTest::real_time(
            std::sync::Arc::new(MemoryMessageQueue::new()),
            Duration::from_millis(5),
        )
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        whizbang_core::backend::conformance::queue::run_all(&factory),
    )
    .await
    .expect("the suite finished");
}

#[tokio::test]
async fn a_typed_envelope_round_trips_through_the_queue() {
    #[derive(whizbang_core::Event, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    #[event(name = "queue_memory.shipped")]
    struct Shipped {
        #[stream_key]
        order: uuid::Uuid,
        items: Vec<String>,
    }
    let cause = whizbang_core::Envelope::new(Shipped {
        order: uuid::Uuid::now_v7(),
        items: vec![],
    });
    let mut envelope = whizbang_core::Envelope::caused_by(
        Shipped {
            order: uuid::Uuid::now_v7(),
            items: vec!["book".into()],
        },
        &cause,
    );
    envelope.metadata.insert("tenant", "t1");
    let queued = QueuedMessage::from_envelope(&envelope).expect("serialises");
    assert_eq!(queued.message_type, "queue_memory.shipped");
    let queue = MemoryMessageQueue::new();
    let EnqueueOutcome::Leased(leased) = queue
        .enqueue_and_lease(queued, InstanceId::new(), Duration::from_secs(5))
        .await
        .expect("enqueue")
    else {
        panic!("a new message is leased")
    };
    let back = leased.message.decode::<Shipped>().expect("decodes");
    assert_eq!(back, envelope);
    let wrong = leased.message.decode::<WrongType>();
    assert!(
        matches!(wrong, Err(whizbang_core::Error::InvalidInput(ref t)) if t.contains("not a `WrongType`")),
        "{wrong:?}"
    );

    #[derive(whizbang_core::Command, serde::Serialize, serde::Deserialize, Debug)]
    struct WrongType;
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
async fn every_operation_runs_in_a_span_naming_the_message_and_instance() {
    let spans: &'static Spans = Box::leak(Box::default());
    let _default = tracing::subscriber::set_default(spans);
    let queue = MemoryMessageQueue::new();
    let me = InstanceId::new();
    let lease = Duration::from_secs(5);
    let m = QueuedMessage::from_json("spans.test", "{}").expect("JSON");
    let id = m.id;
    queue
        .enqueue_and_lease(m, me, lease)
        .await
        .expect("enqueue");
    queue.renew(&[id], me, lease).await.expect("renew");
    queue.fail(id, me, "once").await.expect("fail");
    queue.lease_orphaned(me, 5, lease).await.expect("lease");
    queue.complete(id, me, "spans").await.expect("complete");
    queue.processed(id).await.expect("processed");
    let recorded = spans.0.lock().expect("not poisoned").clone();
    let named = |name: &str| {
        recorded
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no span {name} in {recorded:?}"))
    };
    for op in ["enqueue_and_lease", "fail", "complete", "processed"] {
        let fields = named(&format!("whizbang.queue.{op}"));
        assert!(fields.contains(&id.to_string()), "{op}: {fields}");
    }
    for op in [
        "enqueue_and_lease",
        "renew",
        "fail",
        "lease_orphaned",
        "complete",
    ] {
        let fields = named(&format!("whizbang.queue.{op}"));
        assert!(
            fields.contains(&me.to_string()),
            "{op} names the instance: {fields}"
        );
    }
    assert!(named("whizbang.queue.enqueue_and_lease").contains("correlation_id="));
}

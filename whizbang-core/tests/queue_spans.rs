//! The memory queue's tracing spans. Alone in its test binary: tracing
//! caches per call site whether anyone listens, so a test that installs a
//! subscriber must not share a process with tests that run without one.

mod common;

use common::spans::Spans;

use std::time::Duration;
use whizbang_core::queue::{MemoryMessageQueue, MessageQueue, QueuedMessage};
use whizbang_core::InstanceId;

#[tokio::test(flavor = "current_thread")]
async fn every_operation_runs_in_a_span_naming_the_message_and_instance() {
    let (spans, _default) = Spans::install();
    // No retry backoff: the failed message is leased again at once.
    let queue = MemoryMessageQueue::with_options(
        whizbang_core::queue::QueueOptions::default().retry_backoff(Duration::ZERO, Duration::ZERO),
    );
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
    queue
        .tick(me, whizbang_core::queue::TickRequest::lease(1, lease))
        .await
        .expect("tick");
    let recorded = spans.recorded();
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
        "tick",
    ] {
        let fields = named(&format!("whizbang.queue.{op}"));
        assert!(
            fields.contains(&me.to_string()),
            "{op} names the instance: {fields}"
        );
    }
    assert!(named("whizbang.queue.enqueue_and_lease").contains("correlation_id="));
}

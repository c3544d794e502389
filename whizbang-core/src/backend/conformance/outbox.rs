//! The outbox's contracts: the rules of [`outbox`](crate::outbox) as tests
//! any pair of an [`EventStore`] (which writes the rows in its appends) and
//! an [`Outbox`] (which leases them) runs against itself.
//!
//! Each contract takes an [`OutboxFactory`] handing out a fresh, empty
//! [`OutboxUnderTest`] (a new memory store and outbox; a new database or
//! schema). Time is real (a database's `now()`): a contract that lets a
//! lease expire sleeps [`OutboxUnderTest::tick`] (keep it a few hundred ms
//! on a database).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use whizbang_core::backend::conformance::outbox::OutboxUnderTest;
//! use whizbang_core::backend::MemoryEventStore;
//! use whizbang_core::outbox::MemoryOutbox;
//!
//! fn memory() -> OutboxUnderTest {
//!     let outbox = MemoryOutbox::new();
//!     OutboxUnderTest {
//!         events: Arc::new(MemoryEventStore::new().with_outbox(outbox.clone())),
//!         outbox: Arc::new(outbox),
//!         tick: Duration::from_millis(20),
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! whizbang_core::backend::conformance::outbox::run_all(&|| async { memory() }).await;
//! # }
//! ```

use super::helpers::bounded;
use crate::error::Error;
use crate::message::{EventId, ExpectedVersion, InstanceId, MessageId, Metadata, StreamId};
use crate::outbox::{Outbox, OutboxStatus};
use crate::queue::FailOutcome;
use crate::store::{BoxFuture, EventMetadata, EventStore, NewEvent, StreamAppend};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// An event store that writes outbox rows, and the outbox it writes.
#[derive(Clone)]
pub struct OutboxUnderTest {
    /// The event store (its appends write the rows).
    pub events: Arc<dyn EventStore>,
    /// The outbox.
    pub outbox: Arc<dyn Outbox>,
    /// A short lease: contracts sleep past it to let it expire.
    pub tick: Duration,
}

impl std::fmt::Debug for OutboxUnderTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxUnderTest")
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

/// Hands out a fresh, empty pair per contract. Implemented by every
/// `Fn() -> impl Future<Output = OutboxUnderTest>` (`|| async { .. }`).
pub trait OutboxFactory: Send + Sync {
    /// A fresh pair.
    fn outbox(&self) -> BoxFuture<'_, OutboxUnderTest>;
}

impl<F, Fut> OutboxFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = OutboxUnderTest> + Send + 'static,
{
    fn outbox(&self) -> BoxFuture<'_, OutboxUnderTest> {
        Box::pin(self())
    }
}

/// Runs every contract, each on a fresh pair.
pub async fn run_all(factory: &dyn OutboxFactory) {
    an_append_writes_one_row_per_outbound_event_and_none_for_the_others(factory).await;
    a_failed_append_writes_no_row(factory).await;
    a_lease_is_exclusive_and_counts_an_attempt(factory).await;
    an_expired_lease_is_taken_over_and_fences_its_old_owner(factory).await;
    a_failed_publish_waits_its_backoff_and_is_dead_lettered_at_the_limit(factory).await;
    a_release_gives_the_lease_and_its_attempt_back(factory).await;
    a_published_row_is_never_leased_again(factory).await;
}

fn event(stream: StreamId, outbound: bool) -> NewEvent {
    let mut extra = Metadata::default();
    extra.insert("tenant", "t1");
    NewEvent {
        event_id: EventId::new(),
        stream_id: stream,
        event_type: "whizbang.conformance.outbox",
        data: serde_json::value::to_raw_value(&serde_json::json!({ "n": 1 }))
            .unwrap_or_else(|e| panic!("a JSON payload serialises: {e}")),
        metadata: EventMetadata {
            correlation_id: MessageId::new(),
            causation_id: Some(MessageId::new()),
            timestamp: SystemTime::now(),
            extra,
        },
        typed: None,
        outbound,
    }
}

/// Appends `events` to a new stream; returns their ids.
async fn append(t: &OutboxUnderTest, events: Vec<NewEvent>) -> Vec<EventId> {
    let stream = events.first().map_or_else(StreamId::new, |e| e.stream_id);
    let ids = events.iter().map(|e| e.event_id).collect();
    within(t.events.append(vec![StreamAppend {
        stream_id: stream,
        expected: ExpectedVersion::Any,
        events,
    }]))
    .await
    .unwrap_or_else(|e| panic!("the append succeeds: {e}"));
    ids
}

async fn status(t: &OutboxUnderTest, id: EventId) -> Option<OutboxStatus> {
    within(t.outbox.status(id))
        .await
        .unwrap_or_else(|e| panic!("status answers: {e}"))
}

const LONG: Duration = Duration::from_secs(60);

/// `f`, bounded by [`BOUND`](super::BOUND).
async fn within<F: Future>(f: F) -> F::Output {
    bounded("an outbox or event store call", f).await
}

/// Only outbound events get a row; a row carries the event's ids, type,
/// payload, headers, stream and version.
pub async fn an_append_writes_one_row_per_outbound_event_and_none_for_the_others(
    factory: &dyn OutboxFactory,
) {
    let t = factory.outbox().await;
    let stream = StreamId::new();
    let out = event(stream, true);
    let (correlation, causation) = (out.metadata.correlation_id, out.metadata.causation_id);
    let ids = append(&t, vec![event(stream, false), out]).await;
    assert_eq!(
        status(&t, ids[0]).await,
        None,
        "a local event has no outbox row"
    );
    assert!(
        matches!(
            status(&t, ids[1]).await,
            Some(OutboxStatus::Pending { attempts: 0, .. })
        ),
        "an outbound event has a pending row"
    );
    let me = InstanceId::new();
    let leased = within(t.outbox.lease(me, 10, LONG)).await.unwrap();
    assert_eq!(leased.len(), 1, "one row to publish");
    let entry = &leased[0];
    let m = &entry.leased.message;
    assert_eq!(
        m.id,
        MessageId::from(ids[1]),
        "the message id is the event id"
    );
    assert_eq!(m.message_type, "whizbang.conformance.outbox");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(m.payload.get()).ok(),
        Some(serde_json::json!({ "n": 1 }))
    );
    assert_eq!((m.correlation_id, m.causation_id), (correlation, causation));
    assert_eq!(m.headers.get("tenant"), Some(&serde_json::json!("t1")));
    assert_eq!((entry.stream_id, entry.stream_version), (stream, 2));
    assert_eq!(entry.leased.attempt, 1);
}

/// An append refused for its expected version writes no row.
pub async fn a_failed_append_writes_no_row(factory: &dyn OutboxFactory) {
    let t = factory.outbox().await;
    let stream = StreamId::new();
    append(&t, vec![event(stream, false)]).await;
    let late = event(stream, true);
    let id = late.event_id;
    let err = within(t.events.append(vec![StreamAppend {
        stream_id: stream,
        expected: ExpectedVersion::NoStream,
        events: vec![late],
    }]))
    .await
    .expect_err("a stale expected version is refused");
    assert!(matches!(err, Error::Concurrency { .. }), "{err:?}");
    assert_eq!(status(&t, id).await, None, "no row without its event");
    let leased = within(t.outbox.lease(InstanceId::new(), 10, LONG))
        .await
        .unwrap();
    assert!(leased.is_empty(), "nothing to publish");
}

/// A leased row is not leased again while its lease runs; each lease is an attempt.
pub async fn a_lease_is_exclusive_and_counts_an_attempt(factory: &dyn OutboxFactory) {
    let t = factory.outbox().await;
    let ids = append(
        &t,
        vec![event(StreamId::new(), true), event(StreamId::new(), true)],
    )
    .await;
    let (a, b) = (InstanceId::new(), InstanceId::new());
    let first = within(t.outbox.lease(a, 1, LONG)).await.unwrap();
    let second = within(t.outbox.lease(b, 10, LONG)).await.unwrap();
    assert_eq!((first.len(), second.len()), (1, 1), "disjoint leases");
    assert_ne!(first[0].leased.message.id, second[0].leased.message.id);
    assert!(within(t.outbox.lease(b, 10, LONG))
        .await
        .unwrap()
        .is_empty());
    for id in ids {
        assert!(matches!(
            status(&t, id).await,
            Some(OutboxStatus::Pending { attempts: 1, .. })
        ));
    }
}

/// An expired lease is taken over (a second attempt); the old owner's
/// mark and fail are refused and change nothing.
pub async fn an_expired_lease_is_taken_over_and_fences_its_old_owner(factory: &dyn OutboxFactory) {
    let t = factory.outbox().await;
    let id = append(&t, vec![event(StreamId::new(), true)]).await[0];
    let (old, new) = (InstanceId::new(), InstanceId::new());
    assert_eq!(
        within(t.outbox.lease(old, 1, t.tick)).await.unwrap().len(),
        1
    );
    tokio::time::sleep(t.tick * 2).await;
    let taken = within(t.outbox.lease(new, 1, LONG)).await.unwrap();
    assert_eq!(taken.len(), 1, "the expired lease is taken over");
    assert_eq!(taken[0].leased.attempt, 2);
    let late = within(t.outbox.mark_published(id.into(), old)).await;
    assert!(matches!(late, Err(Error::LeaseLost { .. })), "{late:?}");
    let late = within(t.outbox.fail(id.into(), old, "late", Duration::ZERO)).await;
    assert!(matches!(late, Err(Error::LeaseLost { .. })), "{late:?}");
    within(t.outbox.mark_published(id.into(), new))
        .await
        .unwrap();
    assert_eq!(
        status(&t, id).await,
        Some(OutboxStatus::Published { attempts: 2 })
    );
}

/// A failed publish is not leased before its backoff; at the attempt limit
/// the row is dead-lettered with its last error.
pub async fn a_failed_publish_waits_its_backoff_and_is_dead_lettered_at_the_limit(
    factory: &dyn OutboxFactory,
) {
    let t = factory.outbox().await;
    let id = append(&t, vec![event(StreamId::new(), true)]).await[0];
    let me = InstanceId::new();
    let limit = t.outbox.options().max_attempts;
    for attempt in 1..=limit {
        let leased = within(t.outbox.lease(me, 1, LONG)).await.unwrap();
        assert_eq!(leased.len(), 1, "attempt {attempt} is leased");
        assert_eq!(leased[0].leased.attempt, attempt);
        let error = format!("broker down ({attempt})");
        let outcome = within(t.outbox.fail(id.into(), me, &error, t.tick))
            .await
            .unwrap();
        if attempt < limit {
            assert_eq!(outcome, FailOutcome::Retry { attempts: attempt });
            assert!(
                within(t.outbox.lease(me, 1, LONG))
                    .await
                    .unwrap()
                    .is_empty(),
                "not leased again before its backoff"
            );
            tokio::time::sleep(t.tick * 2).await;
        } else {
            assert_eq!(outcome, FailOutcome::DeadLettered { attempts: limit });
        }
    }
    let dead = within(t.outbox.dead_letters(10)).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, MessageId::from(id));
    assert_eq!(dead[0].error, format!("broker down ({limit})"));
    assert!(within(t.outbox.lease(me, 1, LONG))
        .await
        .unwrap()
        .is_empty());
}

/// A released row can be leased at once, its attempt given back.
pub async fn a_release_gives_the_lease_and_its_attempt_back(factory: &dyn OutboxFactory) {
    let t = factory.outbox().await;
    let id = append(&t, vec![event(StreamId::new(), true)]).await[0];
    let (a, b) = (InstanceId::new(), InstanceId::new());
    assert_eq!(within(t.outbox.lease(a, 1, LONG)).await.unwrap().len(), 1);
    // Another instance's release changes nothing.
    within(t.outbox.release(&[id.into()], b)).await.unwrap();
    assert!(within(t.outbox.lease(b, 1, LONG)).await.unwrap().is_empty());
    within(t.outbox.release(&[id.into()], a)).await.unwrap();
    let again = within(t.outbox.lease(b, 1, LONG)).await.unwrap();
    assert_eq!(again.len(), 1, "released: leasable at once");
    assert_eq!(
        again[0].leased.attempt, 1,
        "the released attempt was given back"
    );
}

/// A published row stays published: never leased again, even after its lease time.
pub async fn a_published_row_is_never_leased_again(factory: &dyn OutboxFactory) {
    let t = factory.outbox().await;
    let id = append(&t, vec![event(StreamId::new(), true)]).await[0];
    let me = InstanceId::new();
    assert_eq!(
        within(t.outbox.lease(me, 1, t.tick)).await.unwrap().len(),
        1
    );
    within(t.outbox.mark_published(id.into(), me))
        .await
        .unwrap();
    tokio::time::sleep(t.tick * 2).await;
    assert!(within(t.outbox.lease(me, 10, LONG))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        status(&t, id).await,
        Some(OutboxStatus::Published { attempts: 1 })
    );
    let again = within(t.outbox.mark_published(id.into(), me)).await;
    assert!(matches!(again, Err(Error::LeaseLost { .. })), "{again:?}");
}

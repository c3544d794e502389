//! The message queue's contracts: the rules of [`queue`](crate::queue) as
//! tests any [`MessageQueue`] runs against itself.
//!
//! Each contract is an `async fn` named after the behaviour it proves, taking
//! a [`QueueFactory`] that hands out a [`QueueUnderTest`]. Unlike the store
//! contracts, each needs a queue of its own (`lease_orphaned` takes whatever
//! waits in the queue): a fresh memory queue, a fresh database. Run them all
//! with [`run_all`], one from your own test, or one `#[test]` each with
//! [`queue_conformance_tests!`](crate::queue_conformance_tests):
//!
//! ```
//! use whizbang_core::backend::conformance::queue::QueueUnderTest;
//! use whizbang_core::queue::{ManualClock, MemoryMessageQueue, QueueOptions};
//!
//! fn memory() -> QueueUnderTest {
//!     let clock = ManualClock::new();
//!     QueueUnderTest::manual(
//!         MemoryMessageQueue::with_clock(QueueOptions::default(), clock.clone()),
//!         clock,
//!     )
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! whizbang_core::backend::conformance::queue::run_all(&|| async { memory() }).await;
//! # }
//! ```
//!
//! Time: contracts count it in the fixture's [`tick`](QueueUnderTest::tick)s
//! and let it pass with [`QueueUnderTest::pass`]. A queue on a manual clock
//! passes time at once; a queue on real time (a database's `now()`) sleeps,
//! so give it a tick well above the time one call takes (a few hundred ms).
//! Waits are bounded by [`BOUND`](super::BOUND).
//!
//! To run each contract under your own test attribute (a fresh database per
//! test), [`queue_contracts!`](crate::queue_contracts) hands the list of
//! contract names to a macro of yours.

use super::helpers::{bounded, ok};
use crate::error::{Error, Result};
use crate::message::{InstanceId, MessageId};
use crate::queue::{
    limits, DeadLetter, EnqueueOutcome, FailOutcome, LeasedMessage, ManualClock, MessageQueue,
    QueuedMessage,
};
use crate::store::BoxFuture;
use serde_json::value::RawValue;
use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A queue under test and how time passes for it.
#[derive(Clone)]
pub struct QueueUnderTest {
    /// The queue.
    pub queue: Arc<dyn MessageQueue>,
    /// The unit of time the contracts count in: a short lease is one tick.
    pub tick: Duration,
    pass: Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>,
}

impl std::fmt::Debug for QueueUnderTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueUnderTest")
            .field("tick", &self.tick)
            .field("options", self.queue.options())
            .finish_non_exhaustive()
    }
}

impl QueueUnderTest {
    /// A queue that reads `clock`: time passes by advancing it (a tick is a
    /// minute, and nothing sleeps).
    #[must_use]
    pub fn manual(queue: impl MessageQueue, clock: ManualClock) -> Self {
        QueueUnderTest {
            queue: Arc::new(queue),
            tick: Duration::from_secs(60),
            pass: Arc::new(move |d| {
                clock.advance(d);
                Box::pin(std::future::ready(()))
            }),
        }
    }

    /// A queue on real time (a database's clock): time passes by sleeping,
    /// `tick` at a time.
    #[must_use]
    pub fn real_time(queue: impl MessageQueue, tick: Duration) -> Self {
        QueueUnderTest {
            queue: Arc::new(queue),
            tick,
            pass: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
        }
    }

    /// Lets `ticks` ticks pass.
    pub async fn pass(&self, ticks: u32) {
        (self.pass)(self.tick * ticks).await;
    }

    /// Lets the retry backoff after failed attempt `attempts` pass
    /// ([`QueueOptions::backoff_after`](crate::queue::QueueOptions::backoff_after)).
    /// On real time, keep the queue's backoff well below its tick.
    pub async fn pass_backoff(&self, attempts: u32) {
        (self.pass)(self.queue.options().backoff_after(attempts)).await;
    }

    fn ticks(&self, n: u32) -> Duration {
        self.tick * n
    }
}

/// Hands out a fresh queue per contract. Implemented by every
/// `Fn() -> impl Future<Output = QueueUnderTest>` (`|| async { .. }`).
pub trait QueueFactory: Send + Sync {
    /// A fresh, empty queue.
    fn queue(&self) -> BoxFuture<'_, QueueUnderTest>;
}

impl<F, Fut> QueueFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = QueueUnderTest> + Send + 'static,
{
    fn queue(&self) -> BoxFuture<'_, QueueUnderTest> {
        Box::pin(self())
    }
}

/// Hands the names of every queue contract to a macro of yours, so that
/// each runs under the test attribute you choose (a fresh database each):
/// `queue_contracts!(my_macro!(extra tokens))` expands to
/// `my_macro! { extra tokens; contract_a, contract_b, .. }`.
///
/// ```
/// macro_rules! count {
///     ($prefix:literal; $($contract:ident),* $(,)?) => {
///         const CONTRACTS: &[&str] = &[$(concat!($prefix, stringify!($contract))),*];
///     };
/// }
/// whizbang_core::queue_contracts!(count!("queue."));
/// assert!(CONTRACTS.contains(&"queue.a_taken_over_lease_fences_its_old_owner"));
/// ```
#[macro_export]
macro_rules! queue_contracts {
    ($($callback:ident)::+ ! ( $($args:tt)* )) => {
        $($callback)::+ ! { $($args)*;
            the_same_id_is_leased_once_then_already_queued_then_already_processed,
            a_leased_message_keeps_its_envelope,
            a_taken_over_lease_fences_its_old_owner,
            an_expired_lease_not_taken_over_still_completes,
            failing_at_the_attempt_limit_dead_letters_the_message_with_its_error,
            expired_leases_count_as_attempts_and_dead_letter_at_the_limit,
            dead_letters_are_listed_and_replayed_into_the_queue,
            lease_orphaned_takes_waiting_and_expired_messages_up_to_max,
            concurrent_lease_orphaned_never_hands_a_message_to_two_instances,
            renew_extends_leases_all_or_none,
            release_gives_the_lease_and_its_attempt_back,
            prune_removes_only_processed_records_older_than_the_window,
            concurrent_enqueues_of_one_id_lease_it_once,
            a_dropped_enqueue_leaves_the_message_new_or_leased_until_its_lease_expires,
            bad_input_is_refused_with_a_typed_error_and_changes_nothing,
        }
    };
}

/// Generates one `#[test]` per queue contract, each named after its
/// contract, on its own current-thread tokio runtime. The argument is an
/// expression of a [`QueueFactory`](crate::backend::conformance::queue::QueueFactory).
///
/// ```
/// mod memory_queue {
///     use whizbang_core::backend::conformance::queue::QueueUnderTest;
///     use whizbang_core::queue::{ManualClock, MemoryMessageQueue, QueueOptions};
///
///     whizbang_core::queue_conformance_tests!(|| async {
///         let clock = ManualClock::new();
///         QueueUnderTest::manual(
///             MemoryMessageQueue::with_clock(QueueOptions::default(), clock.clone()),
///             clock,
///         )
///     });
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! queue_conformance_tests {
    ($factory:expr $(,)?) => {
        $crate::queue_contracts!($crate::__queue_conformance_tests!($factory));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __queue_conformance_tests {
    ($factory:expr; $($contract:ident),* $(,)?) => {
        $(
            #[test]
            fn $contract() {
                let factory = $factory;
                $crate::backend::conformance::block_on(
                    $crate::backend::conformance::queue::$contract(&factory),
                );
            }
        )*
    };
}

#[doc(inline)]
pub use crate::{queue_conformance_tests, queue_contracts};

macro_rules! run_all_contracts {
    ($backend:ident; $($contract:ident),* $(,)?) => {
        $( $contract($backend).await; )*
    };
}

/// Runs every queue contract, in order, each on a fresh queue from `backend`.
///
/// # Panics
/// At the first broken contract, naming the rule.
pub async fn run_all(backend: &dyn QueueFactory) {
    queue_contracts!(run_all_contracts!(backend));
}

// ------------------------------------------------------------ helpers

/// A fresh queue from `backend`, checked to allow take-overs.
async fn fresh(backend: &dyn QueueFactory) -> QueueUnderTest {
    let t = backend.queue().await;
    assert!(
        t.queue.options().max_attempts >= 2,
        "the queue contracts take expired leases over, so the queue under test must allow at \
         least 2 attempts (QueueOptions::max_attempts); the attempt-limit contracts also pass \
         with 1 when called on their own"
    );
    t
}

fn message(n: u64) -> QueuedMessage {
    let payload = serde_json::value::to_raw_value(&serde_json::json!({
        "n": n, "text": "é\"\\ \\u0000 is not a NUL"
    }))
    .expect("JSON serialises");
    QueuedMessage::new("conformance.queued", payload)
        .with_header("tenant", "conformance")
        .with_header("attempt", serde_json::json!({ "nested": [1, 2] }))
}

fn long(t: &QueueUnderTest) -> Duration {
    t.ticks(1000)
}

async fn enqueue(
    t: &QueueUnderTest,
    m: &QueuedMessage,
    instance: InstanceId,
    lease: Duration,
) -> EnqueueOutcome {
    ok(
        "enqueue_and_lease",
        bounded(
            "enqueue_and_lease",
            t.queue.enqueue_and_lease(m.clone(), instance, lease),
        )
        .await,
    )
}

async fn leased(
    t: &QueueUnderTest,
    m: &QueuedMessage,
    instance: InstanceId,
    lease: Duration,
) -> LeasedMessage {
    match enqueue(t, m, instance, lease).await {
        EnqueueOutcome::Leased(l) => l,
        other => panic!("enqueue_and_lease of a new id must lease it, got {other:?}"),
    }
}

async fn orphans(
    t: &QueueUnderTest,
    instance: InstanceId,
    max: usize,
    lease: Duration,
) -> Vec<LeasedMessage> {
    ok(
        "lease_orphaned",
        bounded(
            "lease_orphaned",
            t.queue.lease_orphaned(instance, max, lease),
        )
        .await,
    )
}

async fn dead(t: &QueueUnderTest) -> Vec<DeadLetter> {
    ok(
        "dead_letters",
        bounded("dead_letters", t.queue.dead_letters(limits::MAX_BATCH)).await,
    )
}

async fn processed(t: &QueueUnderTest, id: MessageId) -> bool {
    ok(
        "processed",
        bounded("processed", t.queue.processed(id)).await,
    )
    .is_some()
}

fn ids(leased: &[LeasedMessage]) -> BTreeSet<MessageId> {
    leased.iter().map(|l| l.message.id).collect()
}

fn assert_lease_lost<T: std::fmt::Debug>(
    what: &str,
    r: Result<T>,
    lost: &[MessageId],
    instance: InstanceId,
) {
    match r {
        Err(Error::LeaseLost {
            message_ids,
            instance: i,
        }) => {
            let got: BTreeSet<_> = message_ids.iter().collect();
            let want: BTreeSet<_> = lost.iter().collect();
            assert_eq!(
                got, want,
                "{what}: Error::LeaseLost must name exactly the ids whose lease is lost"
            );
            assert_eq!(
                i, instance,
                "{what}: Error::LeaseLost must name the instance"
            );
        }
        other => panic!("{what} must fail with Error::LeaseLost, got {other:?}"),
    }
}

fn assert_invalid<T: std::fmt::Debug>(what: &str, r: Result<T>) {
    match r {
        Err(Error::InvalidInput(text)) => assert!(
            text.contains("nothing"),
            "{what}: the error must say that nothing was changed: {text}"
        ),
        other => panic!("{what} must fail with Error::InvalidInput, got {other:?}"),
    }
}

fn close(a: SystemTime, b: SystemTime) -> bool {
    let drift = a
        .duration_since(b)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    drift < Duration::from_millis(1)
}

// ---------------------------------------------------------- contracts

/// Enqueueing one id three times leases it once, then answers already queued
/// (also to the instance that holds it), and after `complete` answers already
/// processed, with the processed record naming the handler.
pub async fn the_same_id_is_leased_once_then_already_queued_then_already_processed(
    backend: &dyn QueueFactory,
) {
    let t = fresh(backend).await;
    let (a, b) = (InstanceId::new(), InstanceId::new());
    let m = message(1);
    let first = leased(&t, &m, a, long(&t)).await;
    assert_eq!(first.attempt, 1, "the first lease is attempt 1");
    assert_eq!(first.last_error, None);
    for who in [a, b] {
        assert_eq!(
            enqueue(&t, &m, who, long(&t)).await,
            EnqueueOutcome::AlreadyQueued,
            "a leased id must answer AlreadyQueued to every instance"
        );
    }
    assert!(!processed(&t, m.id).await, "not processed before complete");
    ok(
        "complete",
        bounded("complete", t.queue.complete(m.id, a, "conformance.handler")).await,
    );
    assert_eq!(
        enqueue(&t, &m, b, long(&t)).await,
        EnqueueOutcome::AlreadyProcessed,
        "a completed id must answer AlreadyProcessed"
    );
    let record = ok(
        "processed",
        bounded("processed", t.queue.processed(m.id)).await,
    )
    .expect("complete keeps a processed record");
    assert_eq!(record.message_id, m.id);
    assert_eq!(
        record.handler, "conformance.handler",
        "the record names the handler"
    );
    assert!(
        orphans(&t, b, 10, long(&t)).await.is_empty(),
        "a completed message is no longer in the queue"
    );
}

/// A leased message comes back (from `enqueue_and_lease` and from
/// `lease_orphaned`) with its id, type, payload, correlation, causation,
/// headers and enqueue time.
pub async fn a_leased_message_keeps_its_envelope(backend: &dyn QueueFactory) {
    let t = fresh(backend).await;
    let (a, b) = (InstanceId::new(), InstanceId::new());
    let m = message(7).caused_by(MessageId::new(), MessageId::new());
    let first = leased(&t, &m, a, t.ticks(1)).await;
    t.pass(2).await;
    let again = orphans(&t, b, 10, long(&t)).await;
    assert_eq!(again.len(), 1, "the expired lease is taken over");
    for l in [&first, &again[0]] {
        let got = &l.message;
        assert_eq!(got.id, m.id);
        assert_eq!(got.message_type, m.message_type, "the type name is kept");
        let (p, q): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(got.payload.get()).expect("JSON"),
            serde_json::from_str(m.payload.get()).expect("JSON"),
        );
        assert_eq!(p, q, "the payload is kept");
        assert_eq!(
            got.correlation_id, m.correlation_id,
            "the correlation is kept"
        );
        assert_eq!(got.causation_id, m.causation_id, "the causation is kept");
        assert_eq!(got.headers, m.headers, "the headers are kept");
        assert!(
            close(got.enqueued_at, m.enqueued_at),
            "the enqueue time is kept (to the millisecond)"
        );
    }
    assert!(
        first.lease_expires_at < again[0].lease_expires_at,
        "a lease taken later expires later"
    );
}

/// Once a message's expired lease was taken over, its old owner's
/// `complete`, `fail`, `renew` and `release` fail with `Error::LeaseLost`
/// and change nothing: the new owner completes it, once.
pub async fn a_taken_over_lease_fences_its_old_owner(backend: &dyn QueueFactory) {
    let t = fresh(backend).await;
    let (old, new) = (InstanceId::new(), InstanceId::new());
    let m = message(2);
    leased(&t, &m, old, t.ticks(1)).await;
    t.pass(2).await;
    let taken = orphans(&t, new, 10, long(&t)).await;
    assert_eq!(
        ids(&taken),
        BTreeSet::from([m.id]),
        "the expired lease is taken over"
    );
    assert_eq!(taken[0].attempt, 2, "a take-over counts as an attempt");

    let late = |what| format!("the old owner's late {what}");
    assert_lease_lost(
        &late("complete"),
        bounded("complete", t.queue.complete(m.id, old, "old")).await,
        &[m.id],
        old,
    );
    assert_lease_lost(
        &late("fail"),
        bounded("fail", t.queue.fail(m.id, old, "old")).await,
        &[m.id],
        old,
    );
    assert_lease_lost(
        &late("renew"),
        bounded("renew", t.queue.renew(&[m.id], old, long(&t))).await,
        &[m.id],
        old,
    );
    assert_lease_lost(
        &late("release"),
        bounded("release", t.queue.release(&[m.id], old)).await,
        &[m.id],
        old,
    );
    assert!(
        !processed(&t, m.id).await,
        "a fenced complete recorded nothing"
    );
    assert!(
        dead(&t).await.is_empty(),
        "a fenced fail dead-lettered nothing"
    );
    assert_eq!(
        enqueue(&t, &m, old, long(&t)).await,
        EnqueueOutcome::AlreadyQueued,
        "the message is still leased to its new owner"
    );
    ok(
        "the new owner's complete",
        bounded("complete", t.queue.complete(m.id, new, "new")).await,
    );
    let record = ok(
        "processed",
        bounded("processed", t.queue.processed(m.id)).await,
    )
    .expect("the new owner's complete keeps a record");
    assert_eq!(record.handler, "new");
    assert_lease_lost(
        "a complete after the message was completed",
        bounded("complete", t.queue.complete(m.id, new, "new")).await,
        &[m.id],
        new,
    );
}

/// An expired lease nobody took over still belongs to its owner: its late
/// `complete` succeeds.
pub async fn an_expired_lease_not_taken_over_still_completes(backend: &dyn QueueFactory) {
    let t = fresh(backend).await;
    let a = InstanceId::new();
    let m = message(3);
    leased(&t, &m, a, t.ticks(1)).await;
    t.pass(2).await;
    ok(
        "a complete after expiry, before any take-over",
        bounded("complete", t.queue.complete(m.id, a, "late")).await,
    );
    assert!(processed(&t, m.id).await);
    assert!(orphans(&t, InstanceId::new(), 10, long(&t))
        .await
        .is_empty());
}

/// `fail` below the attempt limit gives the message back to the queue (the
/// next lease sees the error and counts the next attempt); `fail` at the
/// limit moves it to the dead letters with its error and attempts, after
/// which its id answers `DeadLettered`.
pub async fn failing_at_the_attempt_limit_dead_letters_the_message_with_its_error(
    backend: &dyn QueueFactory,
) {
    let t = backend.queue().await;
    let max = t.queue.options().max_attempts;
    let a = InstanceId::new();
    let m = message(4);
    leased(&t, &m, a, long(&t)).await;
    for attempt in 1..max {
        let outcome = ok(
            "fail",
            bounded("fail", t.queue.fail(m.id, a, &format!("boom {attempt}"))).await,
        );
        assert_eq!(
            outcome,
            FailOutcome::Retry { attempts: attempt },
            "a fail below the limit gives the message back for another attempt"
        );
        t.pass_backoff(attempt).await;
        let next = orphans(&t, a, 10, long(&t)).await;
        assert_eq!(
            ids(&next),
            BTreeSet::from([m.id]),
            "a failed message is leased again"
        );
        assert_eq!(next[0].attempt, attempt + 1, "each lease counts an attempt");
        assert_eq!(
            next[0].last_error.as_deref(),
            Some(format!("boom {attempt}").as_str()),
            "the next lease sees the last error"
        );
    }
    let outcome = ok(
        "fail",
        bounded("fail", t.queue.fail(m.id, a, &format!("boom {max}"))).await,
    );
    assert_eq!(outcome, FailOutcome::DeadLettered { attempts: max });
    let letters = dead(&t).await;
    assert_eq!(letters.len(), 1, "the message is in the dead letters");
    assert_eq!(letters[0].message.id, m.id);
    assert_eq!(letters[0].attempts, max);
    assert_eq!(
        letters[0].error,
        format!("boom {max}"),
        "with its last error"
    );
    assert!(
        orphans(&t, a, 10, long(&t)).await.is_empty(),
        "and no longer queued"
    );
    assert_eq!(
        enqueue(&t, &m, a, long(&t)).await,
        EnqueueOutcome::DeadLettered,
        "a dead-lettered id is not leased again on redelivery"
    );
    assert!(!processed(&t, m.id).await);
}

/// Leases that expire count as attempts: at the limit, `lease_orphaned`
/// moves the message to the dead letters (saying its lease expired) instead
/// of leasing it again.
pub async fn expired_leases_count_as_attempts_and_dead_letter_at_the_limit(
    backend: &dyn QueueFactory,
) {
    let t = backend.queue().await;
    let max = t.queue.options().max_attempts;
    let m = message(5);
    leased(&t, &m, InstanceId::new(), t.ticks(1)).await;
    for attempt in 2..=max {
        t.pass(2).await;
        let taken = orphans(&t, InstanceId::new(), 10, t.ticks(1)).await;
        assert_eq!(ids(&taken), BTreeSet::from([m.id]));
        assert_eq!(taken[0].attempt, attempt, "a take-over counts an attempt");
    }
    t.pass(2).await;
    assert!(
        orphans(&t, InstanceId::new(), 10, long(&t))
            .await
            .is_empty(),
        "a message whose lease expired at the attempt limit is not leased again"
    );
    let letters = dead(&t).await;
    assert_eq!(letters.len(), 1, "it is in the dead letters");
    assert_eq!(letters[0].attempts, max);
    assert!(
        letters[0].error.contains("expired"),
        "the dead letter says its lease expired: {}",
        letters[0].error
    );
}

/// Dead letters are listed oldest first, and a replay moves them back to the
/// queue with their attempts at zero; ids not in the dead letters are left
/// out of the answer.
pub async fn dead_letters_are_listed_and_replayed_into_the_queue(backend: &dyn QueueFactory) {
    let t = backend.queue().await;
    let max = t.queue.options().max_attempts;
    let a = InstanceId::new();
    let (m1, m2) = (message(61), message(62));
    for m in [&m1, &m2] {
        leased(&t, m, a, long(&t)).await;
        for attempt in 1..max {
            ok(
                "fail",
                bounded("fail", t.queue.fail(m.id, a, "poison")).await,
            );
            t.pass_backoff(attempt).await;
            assert_eq!(orphans(&t, a, 10, long(&t)).await.len(), 1);
        }
        ok(
            "fail",
            bounded("fail", t.queue.fail(m.id, a, "poison")).await,
        );
        t.pass(1).await;
    }
    let letters = dead(&t).await;
    let order: Vec<MessageId> = letters.iter().map(|d| d.message.id).collect();
    assert_eq!(
        order,
        [m1.id, m2.id],
        "dead letters are listed oldest first"
    );
    assert!(letters[0].dead_at < letters[1].dead_at);
    let one = ok(
        "dead_letters",
        bounded("dead_letters", t.queue.dead_letters(1)).await,
    );
    assert_eq!(one.len(), 1, "dead_letters returns at most max");

    let unknown = MessageId::new();
    let replayed = ok(
        "replay_dead_letters",
        bounded(
            "replay_dead_letters",
            t.queue.replay_dead_letters(&[m1.id, unknown, m1.id]),
        )
        .await,
    );
    assert_eq!(
        replayed,
        [m1.id],
        "only dead letters are replayed, once each"
    );
    let left: Vec<MessageId> = dead(&t).await.iter().map(|d| d.message.id).collect();
    assert_eq!(left, [m2.id]);
    let again = orphans(&t, a, 10, long(&t)).await;
    assert_eq!(
        ids(&again),
        BTreeSet::from([m1.id]),
        "a replayed message waits in the queue"
    );
    assert_eq!(
        again[0].attempt, 1,
        "a replayed message starts its attempts again"
    );
    assert_eq!(again[0].last_error.as_deref(), Some("poison"));
    ok(
        "complete",
        bounded("complete", t.queue.complete(m1.id, a, "fixed")).await,
    );
}

/// `lease_orphaned` takes messages that wait in the queue (failed, released)
/// and messages whose lease expired, never one whose lease runs, and never
/// more than `max` per call.
pub async fn lease_orphaned_takes_waiting_and_expired_messages_up_to_max(
    backend: &dyn QueueFactory,
) {
    let t = fresh(backend).await;
    let (a, b) = (InstanceId::new(), InstanceId::new());
    let short: Vec<QueuedMessage> = (0..5).map(|i| message(100 + i)).collect();
    let held: Vec<QueuedMessage> = (0..3).map(|i| message(200 + i)).collect();
    for m in &short {
        leased(&t, m, a, t.ticks(1)).await;
    }
    for m in &held {
        leased(&t, m, a, long(&t)).await;
    }
    ok(
        "fail",
        bounded("fail", t.queue.fail(held[0].id, a, "retry me")).await,
    );
    t.pass_backoff(1).await;
    assert_eq!(
        ids(&orphans(&t, b, 10, long(&t)).await),
        BTreeSet::from([held[0].id]),
        "before expiry only the failed message is free"
    );
    t.pass(2).await;
    let first = orphans(&t, b, 3, long(&t)).await;
    assert_eq!(first.len(), 3, "lease_orphaned takes at most max");
    let rest = orphans(&t, b, 10, long(&t)).await;
    assert_eq!(rest.len(), 2, "the next call takes the rest");
    let all: BTreeSet<MessageId> = ids(&first).union(&ids(&rest)).copied().collect();
    let expected: BTreeSet<MessageId> = short.iter().map(|m| m.id).collect();
    assert_eq!(
        all, expected,
        "exactly the expired leases were taken, once each"
    );
    assert!(
        orphans(&t, b, 10, long(&t)).await.is_empty(),
        "running leases are not taken"
    );
    for m in &held[1..] {
        ok(
            "the holder's complete",
            bounded("complete", t.queue.complete(m.id, a, "held")).await,
        );
    }
}

/// Four instances leasing orphans at once never get the same message: every
/// message is leased by exactly one.
pub async fn concurrent_lease_orphaned_never_hands_a_message_to_two_instances(
    backend: &dyn QueueFactory,
) {
    let t = fresh(backend).await;
    let a = InstanceId::new();
    let all: BTreeSet<MessageId> = {
        let mut all = BTreeSet::new();
        for i in 0..40 {
            let m = message(300 + i);
            leased(&t, &m, a, long(&t)).await;
            ok(
                "release",
                bounded("release", t.queue.release(&[m.id], a)).await,
            );
            all.insert(m.id);
        }
        all
    };
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let q = Arc::clone(&t.queue);
        let lease = long(&t);
        tasks.push(tokio::spawn(async move {
            let me = InstanceId::new();
            let mut mine = Vec::new();
            loop {
                let got = q
                    .lease_orphaned(me, 3, lease)
                    .await
                    .expect("lease_orphaned");
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|l| l.message.id));
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        let mine = bounded("a leasing task", task).await.expect("the task ran");
        for id in mine {
            assert!(
                seen.insert(id),
                "message {id} was leased by two instances at once"
            );
        }
    }
    let seen: BTreeSet<MessageId> = seen.into_iter().collect();
    assert_eq!(seen, all, "every waiting message was leased");
}

/// `renew` moves a lease's expiry to `lease` from now, for every id or for
/// none: an id the instance does not hold fails the call with
/// `Error::LeaseLost` naming it.
pub async fn renew_extends_leases_all_or_none(backend: &dyn QueueFactory) {
    let t = fresh(backend).await;
    let (a, b) = (InstanceId::new(), InstanceId::new());
    let (m, other) = (message(8), message(9));
    leased(&t, &m, a, t.ticks(2)).await;
    leased(&t, &other, b, long(&t)).await;
    t.pass(1).await;
    let renewed = ok(
        "renew",
        bounded("renew", t.queue.renew(&[m.id, m.id], a, t.ticks(4))).await,
    );
    t.pass(2).await; // past the first expiry (2 ticks), within the renewed one
    assert!(
        orphans(&t, b, 10, long(&t)).await.is_empty(),
        "a renewed lease is not taken over at its old expiry"
    );
    assert_lease_lost(
        "renewing a held and a foreign lease",
        bounded("renew", t.queue.renew(&[m.id, other.id], a, long(&t))).await,
        &[other.id],
        a,
    );
    t.pass(4).await; // past the renewed expiry (5 ticks)
    let taken = orphans(&t, b, 10, long(&t)).await;
    assert_eq!(
        ids(&taken),
        BTreeSet::from([m.id]),
        "a failed renew renews nothing, and a renewed lease expires when renewed to"
    );
    assert!(taken[0].lease_expires_at > renewed);
}

/// `release` gives leases back: the messages wait in the queue again and the
/// released attempt does not count; a release of a lease not held fails
/// with `Error::LeaseLost` and releases nothing.
pub async fn release_gives_the_lease_and_its_attempt_back(backend: &dyn QueueFactory) {
    let t = fresh(backend).await;
    let (a, b) = (InstanceId::new(), InstanceId::new());
    let (m, n) = (message(10), message(11));
    leased(&t, &m, a, long(&t)).await;
    leased(&t, &n, b, long(&t)).await;
    assert_lease_lost(
        "releasing a held and a foreign lease",
        bounded("release", t.queue.release(&[m.id, n.id], a)).await,
        &[n.id],
        a,
    );
    assert!(
        orphans(&t, b, 10, long(&t)).await.is_empty(),
        "a failed release releases nothing"
    );
    ok(
        "release",
        bounded("release", t.queue.release(&[m.id], a)).await,
    );
    let again = orphans(&t, b, 10, long(&t)).await;
    assert_eq!(
        ids(&again),
        BTreeSet::from([m.id]),
        "a released message is free at once"
    );
    assert_eq!(
        again[0].attempt, 1,
        "a released lease gives its attempt back"
    );
}

/// `prune_processed` deletes processed records older than the window, in
/// batches of at most `batch`, and keeps younger ones: a pruned id can be
/// leased again, a kept one still answers `AlreadyProcessed`.
pub async fn prune_removes_only_processed_records_older_than_the_window(
    backend: &dyn QueueFactory,
) {
    let t = fresh(backend).await;
    let a = InstanceId::new();
    let old: Vec<QueuedMessage> = (0..3).map(|i| message(400 + i)).collect();
    for m in &old {
        leased(&t, m, a, long(&t)).await;
        ok(
            "complete",
            bounded("complete", t.queue.complete(m.id, a, "h")).await,
        );
    }
    t.pass(4).await;
    let young = message(500);
    leased(&t, &young, a, long(&t)).await;
    ok(
        "complete",
        bounded("complete", t.queue.complete(young.id, a, "h")).await,
    );

    let window = t.ticks(2);
    let first = ok(
        "prune_processed",
        bounded("prune_processed", t.queue.prune_processed(window, 2)).await,
    );
    assert_eq!(first, 2, "a prune deletes at most batch records");
    let second = ok(
        "prune_processed",
        bounded("prune_processed", t.queue.prune_processed(window, 2)).await,
    );
    assert_eq!(
        second, 1,
        "the next batch deletes the rest of the old records"
    );
    let third = ok(
        "prune_processed",
        bounded("prune_processed", t.queue.prune_processed(window, 2)).await,
    );
    assert_eq!(third, 0, "records younger than the window are kept");
    assert!(processed(&t, young.id).await);
    assert_eq!(
        enqueue(&t, &young, a, long(&t)).await,
        EnqueueOutcome::AlreadyProcessed
    );
    for m in &old {
        assert!(!processed(&t, m.id).await, "an old record is pruned");
    }
    assert!(
        matches!(
            enqueue(&t, &old[0], a, long(&t)).await,
            EnqueueOutcome::Leased(_)
        ),
        "an id whose record was pruned is leased again (keep the window longer than \
         redeliveries)"
    );
}

/// Eight tasks enqueueing one id at once: exactly one leases it, the others
/// answer `AlreadyQueued`.
pub async fn concurrent_enqueues_of_one_id_lease_it_once(backend: &dyn QueueFactory) {
    let t = fresh(backend).await;
    for round in 0..3 {
        let m = message(600 + round);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (q, m, lease) = (Arc::clone(&t.queue), m.clone(), long(&t));
            tasks.push(tokio::spawn(async move {
                q.enqueue_and_lease(m, InstanceId::new(), lease).await
            }));
        }
        let mut leases = 0;
        for task in tasks {
            match bounded("an enqueuing task", task)
                .await
                .expect("the task ran")
            {
                Ok(EnqueueOutcome::Leased(_)) => leases += 1,
                Ok(EnqueueOutcome::AlreadyQueued) => {}
                other => panic!("a concurrent enqueue answered {other:?}"),
            }
        }
        assert_eq!(
            leases, 1,
            "exactly one of 8 concurrent enqueues leases the id"
        );
    }
    // And racing a complete: a redelivery never leases a processed id.
    let a = InstanceId::new();
    for round in 0..5 {
        let m = message(700 + round);
        leased(&t, &m, a, long(&t)).await;
        let (q, again) = (Arc::clone(&t.queue), m.clone());
        let redeliver = tokio::spawn(async move {
            q.enqueue_and_lease(again, InstanceId::new(), Duration::from_secs(60))
                .await
        });
        ok(
            "complete",
            bounded("complete", t.queue.complete(m.id, a, "h")).await,
        );
        match bounded("a redelivery", redeliver)
            .await
            .expect("the task ran")
        {
            Ok(EnqueueOutcome::AlreadyQueued | EnqueueOutcome::AlreadyProcessed) => {}
            other => panic!(
                "a redelivery racing the complete of its id must not lease it again, got \
                 {other:?}"
            ),
        }
    }
}

/// An `enqueue_and_lease` future dropped at any point (never polled, or
/// after some polls) leaves the message either not stored (the next enqueue
/// leases it) or leased to nobody who knows (its lease expires and
/// `lease_orphaned` takes it over): never lost, never stuck.
pub async fn a_dropped_enqueue_leaves_the_message_new_or_leased_until_its_lease_expires(
    backend: &dyn QueueFactory,
) {
    let t = fresh(backend).await;
    let a = InstanceId::new();
    for polls in 0..4_u32 {
        let m = message(900 + u64::from(polls));
        {
            let mut fut = t.queue.enqueue_and_lease(m.clone(), a, t.ticks(1));
            for _ in 0..polls {
                // One poll, as a timeout or a select! that lost would give
                // it; a future that finished is not polled again.
                if tokio::time::timeout(Duration::ZERO, &mut fut).await.is_ok() {
                    break;
                }
            }
        } // dropped here
        match enqueue(&t, &m, InstanceId::new(), long(&t)).await {
            EnqueueOutcome::Leased(_) => continue, // nothing was stored
            EnqueueOutcome::AlreadyQueued => {}
            other => panic!("after a dropped enqueue the id answered {other:?}"),
        }
        t.pass(2).await;
        let taken = orphans(&t, InstanceId::new(), 10, long(&t)).await;
        assert!(
            ids(&taken).contains(&m.id),
            "a message whose enqueue was dropped after it leased must be taken over once the \
             lease expires ({polls} polls)"
        );
    }
}

/// Bad input gets `Error::InvalidInput` saying nothing was changed, and
/// changes nothing: an empty, control-character or oversized type name, a
/// payload holding `\u0000`, text that is not JSON, a zero or too long
/// lease, a batch of zero or too many, an empty handler name.
pub async fn bad_input_is_refused_with_a_typed_error_and_changes_nothing(
    backend: &dyn QueueFactory,
) {
    let t = fresh(backend).await;
    let a = InstanceId::new();
    let q = &t.queue;
    let lease = long(&t);
    let json = |s: &str| RawValue::from_string(s.to_owned()).expect("valid JSON");
    let mut refused = Vec::new();
    for (what, m) in [
        ("an empty type name", QueuedMessage::new("", json("{}"))),
        (
            "a type name with a newline",
            QueuedMessage::new("a\nb", json("{}")),
        ),
        (
            "a type name too long",
            QueuedMessage::new("x".repeat(limits::MAX_TYPE_NAME_BYTES + 1), json("{}")),
        ),
        (
            "a payload holding \\u0000",
            QueuedMessage::new("conformance.nul", json(r#"{"a":"x\u0000y"}"#)),
        ),
        (
            "a header holding \\u0000",
            QueuedMessage::new("conformance.nul", json("[]")).with_header("h", "x\0y"),
        ),
    ] {
        refused.push(m.id);
        assert_invalid(what, bounded(what, q.enqueue_and_lease(m, a, lease)).await);
    }
    assert_invalid(
        "text that is not JSON",
        QueuedMessage::from_json("conformance.bad", "{\"a\": 1"),
    );
    let m = message(800);
    refused.push(m.id);
    assert_invalid(
        "a zero lease",
        bounded("zero", q.enqueue_and_lease(m.clone(), a, Duration::ZERO)).await,
    );
    assert_invalid(
        "a lease longer than MAX_LEASE",
        bounded(
            "huge",
            q.enqueue_and_lease(m.clone(), a, limits::MAX_LEASE + Duration::from_secs(1)),
        )
        .await,
    );
    assert_invalid(
        "lease_orphaned with a zero lease",
        bounded("zero", q.lease_orphaned(a, 10, Duration::ZERO)).await,
    );
    assert_invalid(
        "lease_orphaned of zero messages",
        bounded("zero", q.lease_orphaned(a, 0, lease)).await,
    );
    assert_invalid(
        "lease_orphaned of more than MAX_BATCH",
        bounded("many", q.lease_orphaned(a, limits::MAX_BATCH + 1, lease)).await,
    );
    assert_invalid(
        "prune_processed of zero records",
        bounded("zero", q.prune_processed(Duration::ZERO, 0)).await,
    );
    assert!(
        orphans(&t, InstanceId::new(), 10, lease).await.is_empty() && dead(&t).await.is_empty(),
        "refused calls stored nothing"
    );
    for id in &refused {
        assert!(
            matches!(
                enqueue(&t, &message(0).with_id(*id), a, lease).await,
                EnqueueOutcome::Leased(_)
            ),
            "a refused message stored nothing: its id is still new"
        );
    }
    let good = message(801);
    leased(&t, &good, a, lease).await;
    assert_invalid(
        "complete with an empty handler name",
        bounded("complete", q.complete(good.id, a, "")).await,
    );
    assert_invalid(
        "complete with a NUL in the handler name",
        bounded("complete", q.complete(good.id, a, "a\0b")).await,
    );
    assert_invalid(
        "renew with a zero lease",
        bounded("renew", q.renew(&[good.id], a, Duration::ZERO)).await,
    );
    assert!(
        !processed(&t, good.id).await,
        "a refused complete recorded nothing"
    );
    ok(
        "complete",
        bounded("complete", q.complete(good.id, a, "h")).await,
    );
}

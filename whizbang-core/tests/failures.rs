//! Failures in user code during a catch-up, and recovering a failed cursor:
//! a panic anywhere in a perspective's code (model construction included)
//! marks its cursor failed and wakes its waiters without taking down the
//! runner; `retry_perspective` and `skip_failed_event` bring it back.

mod common;
use common::{bounded, failed, scope_wait};

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::store::memory::MemoryPerspectiveStore;
use whizbang_core::store::{
    BoxFuture, Checkpoint, ModelRow, PerspectiveStore, PerspectiveUnit, SkippedEvent,
};
use whizbang_core::{
    perspective, Error, Event, EventId, LensQuery, Runtime, StreamId, SyncFilter, SyncOutcome,
};

// ---- A model whose `Default` panics ------------------------------------------------

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "failures.poked")]
struct Poked {
    #[stream_key]
    target: Uuid,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "failures.nudged")]
struct Nudged {
    #[stream_key]
    target: Uuid,
}

#[derive(Clone, Serialize, Deserialize, Debug)]
struct Fragile {
    pokes: u64,
}

impl Default for Fragile {
    fn default() -> Self {
        panic!("Fragile cannot be defaulted")
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug)]
struct Tally {
    pokes: u64,
}

/// Async, and its model cannot be constructed.
struct FragileView;

#[perspective(model = Fragile, name = "failures.fragile")]
impl FragileView {
    fn poked(m: &mut Fragile, _e: &Poked) {
        m.pokes += 1;
    }
}

/// Inline, and its model cannot be constructed.
struct FragileInline;

#[perspective(model = Fragile, name = "failures.fragile_inline", mode = inline)]
impl FragileInline {
    fn nudged(m: &mut Fragile, _e: &Nudged) {
        m.pokes += 1;
    }
}

/// Healthy, over the same events as `FragileView`.
struct TallyView;

#[perspective(model = Tally, name = "failures.tally")]
impl TallyView {
    fn poked(m: &mut Tally, _e: &Poked) {
        m.pokes += 1;
    }
}

// ---- A perspective that fails on demand ---------------------------------------------

/// Charges of this amount always fail to apply.
const POISON: i64 = -666;

/// While set, negative charges fail to apply (the "cause" an operator fixes).
static REFUSE_NEGATIVE: AtomicBool = AtomicBool::new(false);

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "failures.charged")]
struct Charged {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Ledger {
    total: i64,
    seen: Vec<i64>,
}

struct Ledgers;

#[perspective(model = Ledger, name = "failures.ledgers")]
impl Ledgers {
    fn charged(l: &mut Ledger, e: &Charged) -> Result<(), String> {
        // Mutate first: a failure leaves a half-applied model the engine must discard.
        l.seen.push(e.cents);
        if e.cents == POISON {
            return Err("poison charge".into());
        }
        if e.cents < 0 && REFUSE_NEGATIVE.load(Ordering::SeqCst) {
            return Err(format!("negative charge of {} refused", e.cents));
        }
        l.total += e.cents;
        Ok(())
    }
}

fn charge(account: Uuid, cents: i64) -> Charged {
    Charged { account, cents }
}

async fn checkpoint(rt: &Runtime, perspective: &str, s: Uuid) -> Checkpoint {
    rt.services()
        .perspective_store()
        .checkpoint(perspective, s.into())
        .await
        .unwrap()
}

// ---- Item 3: panics outside apply ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_model_whose_default_panics_fails_its_cursor_and_the_runner_goes_on() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Poked { target: a }).await.unwrap();

    let result = scope_wait::<FragileView>(
        &scope,
        SyncFilter::current_scope().with_timeout(Duration::from_secs(5)),
    )
    .await;
    let (stream, version, message) = failed(&result.outcome);
    assert_eq!((stream, version), (StreamId::from(a), 1));
    assert!(message.contains("Fragile cannot be defaulted"), "{message}");
    // The runner task survived and counted its work down.
    bounded(rt.wait_idle()).await;
    let cp = checkpoint(&rt, "failures.fragile", a).await;
    assert_eq!(cp.version, 0);
    let failure = cp.failure.expect("the cursor is marked failed");
    assert_eq!(failure.version, 1);
    assert!(failure.message.contains("panicked"), "{}", failure.message);

    // Another perspective over the same event applied.
    assert_eq!(
        rt.lens::<TallyView>()
            .get(a.into())
            .await
            .unwrap()
            .unwrap()
            .pokes,
        1
    );
    // The runner still runs: later work on another stream applies.
    let b = Uuid::now_v7();
    let later = rt.scope();
    later.publish(Poked { target: b }).await.unwrap();
    let synced = scope_wait::<TallyView>(
        &later,
        SyncFilter::current_scope().with_timeout(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(synced.outcome, SyncOutcome::Synced);
    bounded(later.complete()).await.unwrap();
    bounded(scope.complete()).await.unwrap();
    bounded(rt.wait_idle()).await;
}

#[tokio::test(start_paused = true)]
async fn a_model_whose_default_panics_in_an_inline_perspective_is_an_error_not_a_panic() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Nudged { target: a }).await.unwrap();
    let err = bounded(scope.complete()).await.unwrap_err();
    match &err {
        Error::PerspectiveFailed {
            perspective,
            version,
            message,
            ..
        } => {
            assert_eq!((*perspective, *version), ("failures.fragile_inline", 1));
            assert!(message.contains("Fragile cannot be defaulted"), "{message}");
        }
        other => panic!("expected PerspectiveFailed, got {other:?}"),
    }
    bounded(rt.wait_idle()).await;
}

/// A perspective store with a bug: claiming for `failures.tally` panics.
#[derive(Clone, Default)]
struct PanickyStore {
    inner: MemoryPerspectiveStore,
}

impl PerspectiveStore for PanickyStore {
    fn claim<'a>(
        &'a self,
        perspective: &'static str,
        stream: StreamId,
    ) -> BoxFuture<'a, whizbang_core::Result<Box<dyn PerspectiveUnit>>> {
        if perspective == "failures.tally" {
            return Box::pin(async { panic!("a bug in the backend") });
        }
        self.inner.claim(perspective, stream)
    }
    fn checkpoint<'a>(
        &'a self,
        perspective: &'a str,
        stream: StreamId,
    ) -> BoxFuture<'a, whizbang_core::Result<Checkpoint>> {
        self.inner.checkpoint(perspective, stream)
    }
    fn load_model<'a>(
        &'a self,
        perspective: &'a str,
        id: StreamId,
    ) -> BoxFuture<'a, whizbang_core::Result<Option<ModelRow>>> {
        self.inner.load_model(perspective, id)
    }
    fn list_models<'a>(
        &'a self,
        perspective: &'a str,
    ) -> BoxFuture<'a, whizbang_core::Result<Vec<ModelRow>>> {
        self.inner.list_models(perspective)
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_runner_task_cannot_leave_wait_idle_hanging() {
    let rt = Runtime::builder()
        .perspective_store(PanickyStore::default())
        .build()
        .unwrap();
    let scope = rt.scope();
    scope
        .publish(Poked {
            target: Uuid::now_v7(),
        })
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
    // The task catching up `failures.tally` panics outside any user code.
    bounded(rt.wait_idle()).await;
}

// ---- Recovering a failed cursor -----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_after_fixing_the_cause_applies_the_rest_and_waiters_sync() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    REFUSE_NEGATIVE.store(true, Ordering::SeqCst);
    let scope = rt.scope();
    for cents in [5, -3, 7] {
        scope.publish(charge(a, cents)).await.unwrap();
    }
    let failed = scope_wait::<Ledgers>(
        &scope,
        SyncFilter::current_scope().with_timeout(Duration::from_secs(5)),
    )
    .await;
    assert_matches!(failed.outcome, SyncOutcome::Failed { version: 2, .. });
    bounded(rt.wait_idle()).await;
    assert_eq!(
        rt.sync_tracker().tracked_count(),
        2,
        "versions 2 and 3 are pending"
    );

    // Retrying before the cause is fixed fails again, at the same event.
    let again = bounded(rt.retry_perspective::<Ledgers>(a))
        .await
        .unwrap_err();
    assert_matches!(again, Error::PerspectiveFailed { version: 2, .. });

    REFUSE_NEGATIVE.store(false, Ordering::SeqCst);
    let report = bounded(rt.retry_perspective::<Ledgers>(a)).await.unwrap();
    assert_eq!(report.version, 3);
    assert_eq!(report.applied.len(), 2);
    assert!(report.failure.is_none());
    // The listeners (the sync tracker) heard of it: nothing is pending any more.
    assert_eq!(rt.sync_tracker().tracked_count(), 0);

    let cp = checkpoint(&rt, "failures.ledgers", a).await;
    assert_eq!((cp.version, cp.failure, cp.skipped), (3, None, vec![]));
    let ledger = rt.lens::<Ledgers>().get(a.into()).await.unwrap().unwrap();
    assert_eq!(ledger.total, 9);
    assert_eq!(
        ledger.seen,
        vec![5, -3, 7],
        "the half-applied model of the failure was discarded"
    );

    let synced = scope_wait::<Ledgers>(
        &scope,
        SyncFilter::current_scope().with_timeout(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(synced.outcome, SyncOutcome::Synced);

    // Once recovered, there is nothing to retry or skip.
    let err = rt.retry_perspective::<Ledgers>(a).await.unwrap_err();
    assert_matches!(
        err,
        Error::PerspectiveNotFailed {
            perspective: "failures.ledgers",
            ..
        }
    );
    let err = rt.skip_failed_event::<Ledgers>(a, "why").await.unwrap_err();
    assert_matches!(err, Error::PerspectiveNotFailed { .. });
    bounded(scope.complete()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn skip_moves_past_the_poison_event_records_it_and_later_events_apply() {
    let rt = Runtime::in_memory().unwrap();
    let b = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(charge(b, 5)).await.unwrap();
    let poison: EventId = scope.publish(charge(b, POISON)).await.unwrap();
    scope.publish(charge(b, 7)).await.unwrap();
    let failed = scope_wait::<Ledgers>(
        &scope,
        SyncFilter::current_scope().with_timeout(Duration::from_secs(5)),
    )
    .await;
    assert_matches!(failed.outcome, SyncOutcome::Failed { version: 2, .. });
    bounded(rt.wait_idle()).await;

    let report = bounded(rt.skip_failed_event::<Ledgers>(b, "bad import, refunded by hand"))
        .await
        .unwrap();
    assert_eq!(report.version, 3);
    assert!(report.applied.contains(&poison));
    assert_eq!(
        rt.sync_tracker().tracked_count(),
        0,
        "waiters' entries cleared"
    );

    let cp = checkpoint(&rt, "failures.ledgers", b).await;
    assert_eq!((cp.version, cp.failure.is_none()), (3, true));
    match cp.skipped.as_slice() {
        [SkippedEvent {
            version: 2,
            event_id,
            reason,
            failure,
        }] => {
            assert_eq!(*event_id, poison);
            assert_eq!(reason, "bad import, refunded by hand");
            assert!(failure.contains("poison charge"), "{failure}");
        }
        other => panic!("expected one skipped event, got {other:?}"),
    }
    let ledger = rt.lens::<Ledgers>().get(b.into()).await.unwrap().unwrap();
    assert_eq!((ledger.total, ledger.seen.clone()), (12, vec![5, 7]));
    let synced = scope_wait::<Ledgers>(
        &scope,
        SyncFilter::current_scope().with_timeout(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(synced.outcome, SyncOutcome::Synced);
    bounded(scope.complete()).await.unwrap();

    // Later events apply; a later failure rebuilds the model without the skipped event.
    let later = rt.scope();
    later.publish(charge(b, 1)).await.unwrap();
    later.publish(charge(b, POISON)).await.unwrap();
    let failed = scope_wait::<Ledgers>(
        &later,
        SyncFilter::current_scope().with_timeout(Duration::from_secs(5)),
    )
    .await;
    assert_matches!(failed.outcome, SyncOutcome::Failed { version: 5, .. });
    bounded(rt.wait_idle()).await;
    let cp = checkpoint(&rt, "failures.ledgers", b).await;
    assert_eq!(cp.version, 4, "version 4 applied before the failure at 5");
    let ledger = rt.lens::<Ledgers>().get(b.into()).await.unwrap().unwrap();
    assert_eq!((ledger.total, ledger.seen.clone()), (13, vec![5, 7, 1]));
    bounded(later.complete()).await.unwrap();
}

/// While set, `InlineBills` refuses every bill.
static REFUSE_BILLS: AtomicBool = AtomicBool::new(false);

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "failures.billed")]
struct Billed {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

struct InlineBills;

#[perspective(model = Ledger, name = "failures.inline_bills", mode = inline)]
impl InlineBills {
    fn billed(l: &mut Ledger, e: &Billed) -> Result<(), String> {
        if REFUSE_BILLS.load(Ordering::SeqCst) {
            return Err("billing is down".into());
        }
        l.total += e.cents;
        l.seen.push(e.cents);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn retry_recovers_an_inline_perspective_at_once() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    REFUSE_BILLS.store(true, Ordering::SeqCst);
    let scope = rt.scope();
    scope
        .publish(Billed {
            account: a,
            cents: 4,
        })
        .await
        .unwrap();
    scope
        .publish(Billed {
            account: a,
            cents: 6,
        })
        .await
        .unwrap();
    let err = bounded(scope.complete()).await.unwrap_err();
    assert_matches!(err, Error::PerspectiveFailed { version: 1, .. });
    assert!(
        err.to_string().contains("retry_perspective"),
        "the error names the recovery: {err}"
    );
    assert!(rt
        .lens::<InlineBills>()
        .get(a.into())
        .await
        .unwrap()
        .is_none());

    REFUSE_BILLS.store(false, Ordering::SeqCst);
    let report = bounded(rt.retry_perspective::<InlineBills>(a))
        .await
        .unwrap();
    assert_eq!((report.version, report.applied.len()), (2, 2));
    // Applied when the call returns: no runner involved.
    let ledger = rt
        .lens::<InlineBills>()
        .get(a.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ledger.total, ledger.seen), (10, vec![4, 6]));
    // Later scopes apply again.
    let later = rt.scope();
    later
        .publish(Billed {
            account: a,
            cents: 1,
        })
        .await
        .unwrap();
    bounded(later.complete()).await.unwrap();
    assert_eq!(
        rt.lens::<InlineBills>()
            .get(a.into())
            .await
            .unwrap()
            .unwrap()
            .total,
        11
    );
}

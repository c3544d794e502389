//! Perspective sync (read-your-writes on async perspectives): outcomes, exact
//! ids, per-perspective wake-ups, failures, cancellation, bounded memory,
//! filter algebra, the debugger-aware clock, lost wake-ups, concurrency, and
//! the bad-input cases.

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;
use whizbang_core::sync::ManualClock;
use whizbang_core::{
    perspective, receptor, Command, Context, Error, Event, EventId, LensQuery,
    PerspectiveSyncOptions, Receptor, Registry, Result, Runtime, StreamId, SyncFilter, SyncLensExt,
    SyncOutcome,
};

// ---------------------------------------------------------------- messages

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync.deposited")]
struct Deposited {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync.withdrawn")]
struct Withdrawn {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

/// Handled only by the inline `Labels` perspective, never by `Balances`.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync.renamed")]
struct Renamed {
    #[stream_key]
    account: Uuid,
    label: String,
}

/// Handled by `Charges`, which fails on negative amounts and panics on zero.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync.charged")]
struct Charged {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

/// Handled only by `Pings`: used where tracker counts must be exact.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync.pinged")]
struct Pinged {
    #[stream_key]
    stream: Uuid,
}

#[derive(Command, Serialize, Deserialize)]
#[command(output = i64)]
struct Deposit {
    account: Uuid,
    cents: i64,
}

#[derive(Default)]
struct Teller;

#[receptor]
impl Receptor<Deposit> for Teller {
    async fn handle(&self, cmd: Deposit, cx: &mut Context) -> Result<i64> {
        cx.emit(Deposited {
            account: cmd.account,
            cents: cmd.cents,
        })?;
        Ok(cmd.cents)
    }
}

// ------------------------------------------------------------ perspectives

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Balance {
    cents: i64,
    events: u64,
}

/// Async; handles deposits and withdrawals.
struct Balances;

#[perspective(model = Balance, name = "sync.balances")]
impl Balances {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.events += 1;
    }
    fn withdrawn(b: &mut Balance, e: &Withdrawn) {
        b.cents -= e.cents;
        b.events += 1;
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Label {
    label: String,
}

/// Inline; applies when the scope flushes.
struct Labels;

#[perspective(model = Label, name = "sync.labels", mode = inline)]
impl Labels {
    fn renamed(l: &mut Label, e: &Renamed) {
        l.label = e.label.clone();
    }
}

/// Async; fails on a negative charge, panics on a zero one.
struct Charges;

#[perspective(model = Balance, name = "sync.charges")]
impl Charges {
    fn charged(b: &mut Balance, e: &Charged) -> std::result::Result<(), String> {
        if e.cents < 0 {
            return Err(format!("negative charge of {} cents refused", e.cents));
        }
        if e.cents == 0 {
            panic!("zero charge blew up");
        }
        b.cents += e.cents;
        Ok(())
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct PingCount {
    n: u64,
}

/// Async; the only perspective of `Pinged`.
struct Pings;

#[perspective(model = PingCount, name = "sync.pings")]
impl Pings {
    fn pinged(c: &mut PingCount, _: &Pinged) {
        c.n += 1;
    }
}

// ----------------------------------------------------------------- helpers

const BOUND: Duration = Duration::from_secs(30);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("a bounded wait elapsed: something never woke up")
}

/// Yields until `cond` holds (there is no signal for "a waiter registered").
async fn until(mut cond: impl FnMut() -> bool) {
    bounded(async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

fn dep(account: Uuid, cents: i64) -> Deposited {
    Deposited { account, cents }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------- 1. nothing to wait for

#[tokio::test]
async fn a_scope_that_emitted_nothing_has_no_pending_events_at_once() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    let started = Instant::now();
    let r = bounded(
        scope
            .sync_awaiter()
            .wait::<Balances>(SyncFilter::current_scope()),
    )
    .await
    .unwrap();
    assert_eq!(r.outcome, SyncOutcome::NoPendingEvents);
    assert_eq!(r.events_awaited, 0);
    assert_eq!(r.events_emitted, 0);
    // Only the scope flush before the filter counts: nothing was waited for.
    assert!(r.elapsed < ms(100), "{:?}", r.elapsed);
    assert!(started.elapsed() < ms(100), "{:?}", started.elapsed());
    assert!(r.is_synced());
}

#[tokio::test]
async fn a_filter_that_matches_nothing_has_no_pending_events_at_once() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    scope.publish(dep(Uuid::now_v7(), 1)).await.unwrap();
    let started = Instant::now();
    let other_stream = SyncFilter::for_stream(Uuid::now_v7());
    let r = bounded(
        scope
            .sync_awaiter()
            .wait::<Balances>(other_stream.with_timeout(Duration::from_secs(5))),
    )
    .await
    .unwrap();
    assert_eq!(r.outcome, SyncOutcome::NoPendingEvents);
    assert_eq!(r.events_awaited, 0);
    assert_eq!(r.events_emitted, 1);
    assert!(started.elapsed() < ms(100), "{:?}", started.elapsed());
}

// ----------------------------------------- 2. synced, or timed out

#[tokio::test]
async fn tracked_and_applied_events_are_synced() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(dep(a, 5)).await.unwrap();
    scope.publish(dep(a, 7)).await.unwrap();
    let r = bounded(
        scope
            .sync_awaiter()
            .wait::<Balances>(SyncFilter::current_scope()),
    )
    .await
    .unwrap();
    assert_eq!(r.outcome, SyncOutcome::Synced);
    assert_eq!(r.events_awaited, 2);
    assert_eq!(r.perspective, "sync.balances");
    let b = rt.lens::<Balances>().get(a.into()).await.unwrap().unwrap();
    assert_eq!(b.cents, 12, "synced means the model is readable");
}

#[tokio::test(start_paused = true)]
async fn tracked_events_never_applied_time_out_after_the_timeout() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    scope.publish(dep(Uuid::now_v7(), 5)).await.unwrap();
    let started = tokio::time::Instant::now();
    let r = bounded(
        scope
            .sync_awaiter()
            .wait::<Balances>(SyncFilter::current_scope().with_timeout(ms(150))),
    )
    .await
    .unwrap();
    let wall = started.elapsed();
    assert_eq!(r.outcome, SyncOutcome::TimedOut);
    assert_eq!(r.events_awaited, 1);
    assert!(r.elapsed >= ms(150), "{:?}", r.elapsed);
    assert!(r.elapsed < Duration::from_secs(1), "{:?}", r.elapsed);
    assert!(wall >= ms(150) && wall < Duration::from_secs(1), "{wall:?}");
    assert!(!r.is_synced());
    let err = r.into_result().unwrap_err();
    assert!(
        matches!(
            err,
            Error::PerspectiveSyncTimeout {
                perspective: "sync.balances",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn is_caught_up_answers_once_without_waiting() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    scope.publish(dep(Uuid::now_v7(), 5)).await.unwrap();
    let aw = scope.sync_awaiter();
    let started = Instant::now();
    assert!(!aw
        .is_caught_up::<Balances>(SyncFilter::current_scope())
        .await
        .unwrap());
    assert!(started.elapsed() < ms(100), "{:?}", started.elapsed());
    rt.runner().resume();
    bounded(rt.wait_idle()).await;
    assert!(aw
        .is_caught_up::<Balances>(SyncFilter::current_scope())
        .await
        .unwrap());
}

// ---------------------------------------------- 3. exact event ids

#[tokio::test(start_paused = true)]
async fn an_event_id_never_seen_is_not_synced_and_times_out() {
    let rt = Runtime::in_memory().unwrap();
    let aw = rt.sync_awaiter();
    let unknown = EventId::new();
    let r = bounded(aw.wait::<Balances>(SyncFilter::event_ids([unknown]).with_timeout(ms(150))))
        .await
        .unwrap();
    assert_eq!(r.outcome, SyncOutcome::TimedOut);
    assert_eq!(r.events_awaited, 1, "a not-arrived id is awaited");
    assert!(r.elapsed >= ms(150), "{:?}", r.elapsed);
}

#[tokio::test]
async fn an_event_id_never_seen_with_zero_timeout_is_timed_out_never_synced() {
    let rt = Runtime::in_memory().unwrap();
    let r = bounded(
        rt.sync_awaiter()
            .wait::<Balances>(SyncFilter::event_ids([EventId::new()]).with_timeout(Duration::ZERO)),
    )
    .await
    .unwrap();
    assert_eq!(r.outcome, SyncOutcome::TimedOut);
    assert!(!r.is_synced());
}

#[tokio::test]
async fn an_explicit_event_id_from_another_scope_is_synced_once_applied() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let a = Uuid::now_v7();
    let writer = rt.scope();
    writer.publish(dep(a, 3)).await.unwrap();
    let emitted = writer.emitted();
    assert_eq!(emitted.len(), 1);
    let id = emitted[0].event_id;
    writer.complete().await.unwrap(); // signals the (paused) runner

    let runtime = rt.clone();
    let resumer = tokio::spawn(async move {
        // Resume only once the waiter is registered, so the apply lands while it waits.
        until(|| runtime.sync_tracker().waiter_count() > 0).await;
        runtime.runner().resume();
    });
    let r = bounded(
        rt.sync_awaiter()
            .wait::<Balances>(SyncFilter::event_ids([id]).with_timeout(Duration::from_secs(5))),
    )
    .await
    .unwrap();
    resumer.await.unwrap();
    assert_eq!(r.outcome, SyncOutcome::Synced);
    assert_eq!(r.events_awaited, 1);
    assert!(r.elapsed < Duration::from_secs(1), "{:?}", r.elapsed);
}

// ------------------------------------- 4. unhandled types are not awaited

#[tokio::test]
async fn event_types_the_perspective_does_not_handle_are_not_awaited() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    let id = scope
        .publish(Renamed {
            account: a,
            label: "x".into(),
        })
        .await
        .unwrap();
    let aw = scope.sync_awaiter();
    let r = bounded(aw.wait::<Balances>(SyncFilter::current_scope().with_timeout(ms(2_000))))
        .await
        .unwrap();
    assert_eq!(r.outcome, SyncOutcome::NoPendingEvents);
    assert_eq!(r.events_awaited, 0);
    assert_eq!(r.events_emitted, 1);
    // The same through an explicit id: stored, but not applicable.
    let r = bounded(aw.wait::<Balances>(SyncFilter::event_ids([id]).with_timeout(ms(2_000))))
        .await
        .unwrap();
    assert_eq!(r.outcome, SyncOutcome::NoPendingEvents);
    assert_eq!(r.events_awaited, 0);
}

// ------------------------------- 5. per-perspective wake-ups, wait_all

#[tokio::test]
async fn a_waiter_on_one_perspective_is_not_synced_by_another_applying() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause(); // Balances (async) never applies; Labels (inline) does
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(dep(a, 1)).await.unwrap();
    let aw = scope.sync_awaiter();
    let waiting = {
        let aw = aw.clone();
        tokio::spawn(async move {
            aw.wait::<Balances>(SyncFilter::current_scope().with_timeout(ms(300)))
                .await
        })
    };
    until(|| rt.sync_tracker().waiter_count() > 0).await;
    scope
        .publish(Renamed {
            account: a,
            label: "applied inline".into(),
        })
        .await
        .unwrap();
    let labels = bounded(aw.wait::<Labels>(SyncFilter::current_scope()))
        .await
        .unwrap();
    assert_eq!(labels.outcome, SyncOutcome::Synced);
    let r = bounded(waiting).await.unwrap().unwrap();
    assert_eq!(r.outcome, SyncOutcome::TimedOut);
    assert!(r.elapsed >= ms(300), "{:?}", r.elapsed);
}

#[tokio::test]
async fn wait_all_needs_every_perspective_to_sync() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(dep(a, 1)).await.unwrap();
    scope
        .publish(Renamed {
            account: a,
            label: "l".into(),
        })
        .await
        .unwrap();
    let aw = scope.sync_awaiter();
    let results = bounded(
        aw.wait_all::<(Balances, Labels)>(SyncFilter::current_scope().with_timeout(ms(150))),
    )
    .await
    .unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].perspective, "sync.balances");
    assert_eq!(results[0].outcome, SyncOutcome::TimedOut);
    assert_eq!(results[1].perspective, "sync.labels");
    assert_eq!(results[1].outcome, SyncOutcome::Synced);

    rt.runner().resume();
    let results = bounded(aw.wait_all::<(Balances, Labels)>(SyncFilter::current_scope()))
        .await
        .unwrap();
    assert!(
        results.iter().all(|r| r.outcome == SyncOutcome::Synced),
        "{results:?}"
    );
}

// ------------------------------------------- 6. failures wake at once

#[tokio::test]
async fn a_failing_apply_wakes_its_waiters_at_once_with_the_failure() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(Charged {
            account: a,
            cents: -5,
        })
        .await
        .unwrap();
    let started = Instant::now();
    let r = bounded(
        scope
            .sync_awaiter()
            .wait::<Charges>(SyncFilter::current_scope().with_timeout(Duration::from_secs(5))),
    )
    .await
    .unwrap();
    let wall = started.elapsed();
    match &r.outcome {
        SyncOutcome::Failed {
            stream,
            version,
            message,
        } => {
            assert_eq!(*stream, StreamId::from(a));
            assert_eq!(*version, 1);
            assert!(message.contains("negative charge of -5"), "{message}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(
        wall < Duration::from_secs(1),
        "woke at {wall:?}, not at once"
    );
    let err = r.into_result().unwrap_err();
    assert!(
        matches!(
            err,
            Error::PerspectiveFailed {
                perspective: "sync.charges",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_panicking_apply_wakes_its_waiters_at_once_with_the_panic_message() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(Charged {
            account: a,
            cents: 0,
        })
        .await
        .unwrap();
    let aw = scope.sync_awaiter();
    let waiting = tokio::spawn(async move {
        aw.wait::<Charges>(SyncFilter::current_scope().with_timeout(Duration::from_secs(5)))
            .await
    });
    until(|| rt.sync_tracker().waiter_count() > 0).await;
    let started = Instant::now();
    rt.runner().resume();
    let r = bounded(waiting).await.unwrap().unwrap();
    assert!(
        matches!(&r.outcome, SyncOutcome::Failed { message, .. } if message.contains("zero charge blew up")),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

// -------------------------------------------------- 7. cancellation

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_ends_at_once_and_frees_its_registration() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    scope.publish(dep(Uuid::now_v7(), 1)).await.unwrap();
    let aw = scope.sync_awaiter();

    // The caller's own timeout fires long before the wait's 10 s.
    let started = tokio::time::Instant::now();
    let cut = tokio::time::timeout(
        ms(50),
        aw.wait::<Balances>(SyncFilter::current_scope().with_timeout(Duration::from_secs(10))),
    )
    .await;
    assert!(cut.is_err(), "the caller's timeout ends the wait");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(rt.sync_tracker().waiter_count(), 0);

    // An aborted task frees it too.
    let task = {
        let aw = aw.clone();
        tokio::spawn(async move {
            aw.wait::<Balances>(SyncFilter::current_scope().with_timeout(Duration::from_secs(10)))
                .await
        })
    };
    until(|| rt.sync_tracker().waiter_count() > 0).await;
    task.abort();
    assert!(bounded(task).await.unwrap_err().is_cancelled());
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
}

// ------------------------------------------------- 8. bounded memory

#[tokio::test]
async fn the_tracker_holds_nothing_once_twenty_thousand_events_are_applied() {
    let rt = Runtime::in_memory().unwrap();
    let streams: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
    for batch in 0..20 {
        let scope = rt.scope();
        for i in 0..1_000 {
            scope
                .publish(Pinged {
                    stream: streams[(batch * 1_000 + i) % streams.len()],
                })
                .await
                .unwrap();
        }
        let r = bounded(
            scope
                .sync_awaiter()
                .wait::<Pings>(SyncFilter::current_scope().with_timeout(Duration::from_secs(20))),
        )
        .await
        .unwrap();
        assert_eq!(r.outcome, SyncOutcome::Synced);
        assert_eq!(r.events_awaited, 1_000);
        scope.complete().await.unwrap();
    }
    bounded(rt.wait_idle()).await;
    assert_eq!(rt.sync_tracker().tracked_count(), 0);
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
    let total: u64 = rt
        .lens::<Pings>()
        .list(whizbang_core::ListQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|c| c.n)
        .sum();
    assert_eq!(total, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_holds_nothing_once_concurrent_writers_on_shared_streams_are_applied() {
    let rt = Runtime::in_memory().unwrap();
    let streams: Arc<Vec<Uuid>> = Arc::new((0..2).map(|_| Uuid::now_v7()).collect());
    let mut writers = Vec::new();
    for w in 0..4 {
        let (rt, streams) = (rt.clone(), Arc::clone(&streams));
        writers.push(tokio::spawn(async move {
            for i in 0..12_500 {
                let scope = rt.scope();
                scope
                    .publish(Pinged {
                        stream: streams[(w + i) % streams.len()],
                    })
                    .await
                    .unwrap();
                scope.complete().await.unwrap(); // signals the runner
            }
        }));
    }
    for w in writers {
        bounded(w).await.unwrap();
    }
    bounded(rt.wait_idle()).await;
    let total: u64 = rt
        .lens::<Pings>()
        .list(whizbang_core::ListQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|c| c.n)
        .sum();
    assert_eq!(total, 50_000, "every event applied exactly once");
    assert_eq!(
        rt.sync_tracker().tracked_count(),
        0,
        "every event is applied, so the tracker must hold none of them"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_tracker_entries_expire_and_their_waiters_are_not_told_synced() {
    let rt = Runtime::builder().sync_ttl(ms(100)).build().unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    scope
        .publish(Pinged {
            stream: Uuid::now_v7(),
        })
        .await
        .unwrap();
    scope.complete().await.unwrap();
    assert_eq!(rt.sync_tracker().tracked_count(), 1);

    let aw = rt.sync_awaiter();
    let waiting = tokio::spawn(async move {
        aw.wait::<Pings>(SyncFilter::all().with_timeout(ms(1_000)))
            .await
    });
    until(|| rt.sync_tracker().waiter_count() > 0).await;
    // The entry must age past the time-to-live (paused time: no real wait).
    tokio::time::sleep(ms(150)).await;
    rt.sync_tracker().sweep(); // the background sweeper may have got there first
    assert_eq!(rt.sync_tracker().tracked_count(), 0);

    let r = bounded(waiting).await.unwrap().unwrap();
    assert_eq!(
        r.outcome,
        SyncOutcome::TimedOut,
        "expiry wakes the waiter, the backend still says pending"
    );
    assert_eq!(r.events_awaited, 1);
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn after_expiry_a_for_stream_wait_still_finds_the_unapplied_event_in_the_store() {
    let rt = Runtime::builder().sync_ttl(ms(50)).build().unwrap();
    rt.runner().pause();
    let stream = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Pinged { stream }).await.unwrap();
    scope.complete().await.unwrap();
    // The entry must age past the time-to-live (paused time: no real wait).
    tokio::time::sleep(ms(80)).await;
    rt.sync_tracker().sweep();
    assert_eq!(
        rt.sync_tracker().tracked_count(),
        0,
        "the process forgot the event"
    );
    let aw = rt.sync_awaiter();
    let r = bounded(aw.wait::<Pings>(SyncFilter::for_stream(stream).with_timeout(ms(100))))
        .await
        .unwrap();
    assert_eq!(
        r.outcome,
        SyncOutcome::TimedOut,
        "the store still says it is unapplied"
    );
    assert_eq!(r.events_awaited, 1);
    assert!(
        !bounded(aw.is_caught_up::<Pings>(SyncFilter::for_stream(stream)))
            .await
            .unwrap()
    );
    rt.runner().resume();
    let r = bounded(aw.wait::<Pings>(SyncFilter::for_stream(stream).with_timeout(ms(5_000))))
        .await
        .unwrap();
    assert_eq!(r.outcome, SyncOutcome::Synced);
}

// --------------------------------------------------- 9. filter algebra

/// Events: s1: D, W, D; s2: D, W. Returns how many the filter awaits.
async fn awaited(filter: SyncFilter, s1: Uuid, s2: Uuid) -> usize {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    scope.publish(dep(s1, 1)).await.unwrap();
    scope
        .publish(Withdrawn {
            account: s1,
            cents: 1,
        })
        .await
        .unwrap();
    scope.publish(dep(s1, 1)).await.unwrap();
    scope.publish(dep(s2, 1)).await.unwrap();
    scope
        .publish(Withdrawn {
            account: s2,
            cents: 1,
        })
        .await
        .unwrap();
    let r = bounded(
        scope
            .sync_awaiter()
            .wait::<Balances>(filter.with_timeout(Duration::ZERO)),
    )
    .await
    .unwrap();
    let expect = if r.events_awaited == 0 {
        SyncOutcome::NoPendingEvents
    } else {
        SyncOutcome::TimedOut
    };
    assert_eq!(r.outcome, expect);
    r.events_awaited
}

#[tokio::test]
async fn and_is_intersection_or_is_union_and_chains_fold_left() {
    let (s1, s2) = (Uuid::now_v7(), Uuid::now_v7());
    let st1 = || SyncFilter::for_stream(s1);
    let st2 = || SyncFilter::for_stream(s2);
    let dep_t = SyncFilter::for_event_types::<Deposited>;
    let wd_t = SyncFilter::for_event_types::<Withdrawn>;

    assert_eq!(awaited(SyncFilter::all(), s1, s2).await, 5);
    assert_eq!(awaited(SyncFilter::current_scope(), s1, s2).await, 5);
    assert_eq!(awaited(st1(), s1, s2).await, 3);
    assert_eq!(awaited(dep_t(), s1, s2).await, 3);
    assert_eq!(
        awaited(
            SyncFilter::for_event_types::<(Deposited, Withdrawn)>(),
            s1,
            s2
        )
        .await,
        5
    );
    assert_eq!(awaited(st1().and(dep_t()), s1, s2).await, 2, "∩");
    assert_eq!(awaited(st1().and(st2()), s1, s2).await, 0, "disjoint ∩");
    assert_eq!(awaited(st1().or(dep_t()), s1, s2).await, 4, "∪");
    assert_eq!(awaited(st1().or(st2()), s1, s2).await, 5);
    // (s1 ∧ W) ∨ s2 = {s1:W} ∪ {s2:D, s2:W} = 3
    assert_eq!(awaited(st1().and(wd_t()).or(st2()), s1, s2).await, 3);
    // s1 ∧ (W ∨ s2) = {s1:W} = 1: not the same, so the chain folds left
    assert_eq!(awaited(st1().and(wd_t().or(st2())), s1, s2).await, 1);
    // (s1 ∨ s2) ∧ W = 2
    assert_eq!(awaited(st1().or(st2()).and(wd_t()), s1, s2).await, 2);
    // s1 ∨ (s2 ∧ W) = 4
    assert_eq!(awaited(st1().or(st2().and(wd_t())), s1, s2).await, 4);
}

// ------------------------------------------ 10 (in process). debugger-aware

#[tokio::test(start_paused = true)]
async fn a_frozen_period_does_not_count_towards_a_debugger_aware_timeout() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    scope.publish(dep(Uuid::now_v7(), 1)).await.unwrap();
    let clock = ManualClock::new();
    let options = PerspectiveSyncOptions::new(SyncFilter::current_scope())
        .timeout(Duration::from_secs(1))
        .debugger_aware(true)
        .clock(Arc::new(clock.clone()));
    let aw = scope.sync_awaiter();
    let waiting = tokio::spawn(async move { aw.wait::<Balances>(options).await });
    until(|| rt.sync_tracker().waiter_count() > 0).await;
    clock.advance(Duration::from_secs(10)); // a 10 s "breakpoint"
                                            // Paused time: every sleep slice the waiter has planned for the next 2 s
                                            // ends, so it observes the 10 s gap while the event is still unapplied.
                                            // Were the freeze counted, it would time out here.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rt.runner().resume();
    let r = bounded(waiting).await.unwrap().unwrap();
    assert_eq!(
        r.outcome,
        SyncOutcome::Synced,
        "the freeze must not time the wait out"
    );
    assert!(
        r.elapsed < Duration::from_secs(1),
        "the freeze must not count: {:?}",
        r.elapsed
    );
}

#[tokio::test]
async fn a_frozen_period_counts_when_debugger_awareness_is_off() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    scope.publish(dep(Uuid::now_v7(), 1)).await.unwrap();
    let clock = ManualClock::new();
    let options = PerspectiveSyncOptions::new(SyncFilter::current_scope())
        .timeout(ms(300))
        .debugger_aware(false)
        .clock(Arc::new(clock.clone()));
    let aw = scope.sync_awaiter();
    let waiting = tokio::spawn(async move { aw.wait::<Balances>(options).await });
    until(|| rt.sync_tracker().waiter_count() > 0).await;
    clock.advance(Duration::from_secs(10));
    let r = bounded(waiting).await.unwrap().unwrap();
    assert_eq!(r.outcome, SyncOutcome::TimedOut);
    assert!(r.elapsed >= Duration::from_secs(10), "{:?}", r.elapsed);
}

// ------------------------------------------------ 11. no lost wake-up

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_racing_the_waiter_registration_is_never_lost() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    // Awareness off and no re-ask before a minute: the waiter sleeps the whole
    // timeout in one go, so a lost wake-up would show as a 10 s wait (not
    // hidden by the backoff's re-asks).
    let options = PerspectiveSyncOptions::new(SyncFilter::current_scope())
        .timeout(Duration::from_secs(10))
        .debugger_aware(false)
        .reask_backoff(Duration::from_secs(60), Duration::from_secs(60));
    bounded(async {
        for i in 0..2_000u32 {
            let scope = rt.scope();
            scope.publish(dep(a, 1)).await.unwrap();
            if i % 3 == 0 {
                tokio::task::yield_now().await; // vary who wins the race
            }
            let r = scope
                .sync_awaiter()
                .wait::<Balances>(options.clone())
                .await
                .unwrap();
            assert_eq!(r.outcome, SyncOutcome::Synced, "iteration {i}");
            assert!(
                r.elapsed < Duration::from_secs(2),
                "iteration {i}: {:?}",
                r.elapsed
            );
            scope.complete().await.unwrap();
        }
    })
    .await;
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
    let b = rt.lens::<Balances>().get(a.into()).await.unwrap().unwrap();
    assert_eq!(b.cents, 2_000);
}

// -------------------------------------- 12. concurrent send_and_sync

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_scopes_each_see_their_own_writes() {
    let rt = Runtime::in_memory().unwrap();
    let accounts: Arc<Vec<Uuid>> = Arc::new((0..50).map(|_| Uuid::now_v7()).collect());
    let mut tasks = Vec::new();
    for i in 0..1_000usize {
        let (rt, accounts) = (rt.clone(), Arc::clone(&accounts));
        tasks.push(tokio::spawn(async move {
            let account = accounts[i % accounts.len()];
            let scope = rt.scope();
            let out = scope
                .send_and_sync(Deposit { account, cents: 1 })
                .await?
                .into_synced()?;
            // This scope's own deposit: where it landed on the account's stream,
            // which 20 scopes share (so "some deposit is applied" proves nothing).
            let own = scope
                .emitted()
                .last()
                .map(|e| (e.stream_id, e.stream_version));
            // Read-your-writes: the model has applied at least that version.
            let model = rt.lens::<Balances>().get_versioned(account.into()).await?;
            scope.complete().await?;
            Ok::<_, Error>((out, account, own, model.map(|(b, v)| (b.events, v))))
        }));
    }
    let mut synced = 0;
    for t in tasks {
        let (out, account, own, model) = bounded(t).await.unwrap().unwrap();
        assert_eq!(out, 1);
        let (own_stream, own_version) = own.expect("the scope emitted its deposit");
        assert_eq!(own_stream, StreamId::from(account));
        let (events, applied) = model.expect("the model exists once the deposit is synced");
        assert!(
            applied >= own_version,
            "the model is at version {applied}, before this scope's own event at {own_version}"
        );
        assert_eq!(
            events, applied,
            "every event on the stream is a deposit: the model's content matches its version"
        );
        synced += 1;
    }
    assert_eq!(synced, 1_000);
    bounded(rt.wait_idle()).await;
    let total: i64 = rt
        .lens::<Balances>()
        .list(whizbang_core::ListQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|b| b.cents)
        .sum();
    assert_eq!(total, 1_000, "none lost, none applied twice");
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
}

// ------------------------------------- send_and_sync and the synced lens

#[tokio::test]
async fn send_and_sync_returns_the_output_and_the_async_model_is_readable_right_after() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    let out = bounded(scope.send_and_sync(Deposit {
        account: a,
        cents: 42,
    }))
    .await
    .unwrap()
    .into_synced()
    .unwrap();
    assert_eq!(out, 42);
    let b = rt.lens::<Balances>().get(a.into()).await.unwrap().unwrap();
    assert_eq!(b.cents, 42);
}

#[tokio::test]
async fn send_and_sync_with_reports_each_perspective_and_times_out_as_an_outcome() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    let sent = bounded(scope.send_and_sync_with(
        Deposit {
            account: Uuid::now_v7(),
            cents: 1,
        },
        PerspectiveSyncOptions::default().timeout(ms(100)),
    ))
    .await
    .unwrap();
    let (out, results) = (sent.output, sent.results);
    assert_eq!(out, 1);
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].perspective, "sync.balances");
    assert_eq!(results[0].outcome, SyncOutcome::TimedOut);
}

#[tokio::test]
async fn a_synced_lens_returns_the_fresh_model_after_a_send() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .send(Deposit {
            account: a,
            cents: 9,
        })
        .await
        .unwrap();
    let lens = rt
        .lens::<Balances>()
        .with_sync::<Balances>(&scope.sync_awaiter(), SyncFilter::current_scope());
    let b = bounded(lens.get(a.into())).await.unwrap().unwrap();
    assert_eq!(b.cents, 9);
    let all = bounded(lens.list(whizbang_core::ListQuery::all()))
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_synced_lens_errors_on_timeout_rather_than_returning_stale_data() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .send(Deposit {
            account: a,
            cents: 9,
        })
        .await
        .unwrap();
    let lens = rt.lens::<Balances>().with_sync::<Balances>(
        &scope.sync_awaiter(),
        SyncFilter::current_scope().with_timeout(ms(100)),
    );
    let err = bounded(lens.get(a.into())).await.unwrap_err();
    assert!(
        matches!(err, Error::PerspectiveSyncTimeout { .. }),
        "{err:?}"
    );
}

// --------------------------------------------------------- bad input

#[tokio::test]
async fn current_scope_on_an_awaiter_without_a_scope_is_invalid_input_saying_what_to_do() {
    let rt = Runtime::in_memory().unwrap();
    let err = rt
        .sync_awaiter()
        .wait::<Balances>(SyncFilter::current_scope())
        .await
        .unwrap_err();
    let Error::InvalidInput(message) = &err else {
        panic!("expected InvalidInput, got {err:?}");
    };
    assert!(message.contains("scope.sync_awaiter()"), "{message}");
    assert!(message.contains("sync.balances"), "{message}");
    // Nested inside a combinator too.
    let err = rt
        .sync_awaiter()
        .wait::<Balances>(SyncFilter::all().and(SyncFilter::current_scope()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
}

#[tokio::test]
async fn waiting_on_a_perspective_the_runtime_does_not_know_is_unknown_perspective() {
    let labels_only = Registry::global().unwrap().perspective::<Labels>().unwrap();
    let registry = Arc::new(Registry::from_parts([], [labels_only], []).unwrap());
    let rt = Runtime::builder().registry(registry).build().unwrap();
    let err = rt
        .sync_awaiter()
        .wait::<Balances>(SyncFilter::all())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownPerspective { name } if name == "sync.balances"),
        "{err:?}"
    );
    let err = rt
        .sync_awaiter()
        .wait::<Balances>(SyncFilter::for_stream(Uuid::now_v7()).with_timeout(ms(10)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownPerspective { .. }), "{err:?}");
}

#[test]
fn a_negative_timeout_is_invalid_input() {
    let err = PerspectiveSyncOptions::new(SyncFilter::all())
        .timeout_ms(-1)
        .unwrap_err();
    let Error::InvalidInput(message) = &err else {
        panic!("expected InvalidInput, got {err:?}");
    };
    assert!(message.contains("-1"), "{message}");
    let ok = PerspectiveSyncOptions::new(SyncFilter::all())
        .timeout_ms(0)
        .unwrap();
    assert_eq!(ok.timeout, Duration::ZERO);
}

#[test]
fn a_filter_converts_into_options_with_the_five_second_debugger_aware_default() {
    let options: PerspectiveSyncOptions = SyncFilter::current_scope().into();
    assert_eq!(options.timeout, Duration::from_secs(5));
    assert!(options.debugger_aware);
    assert_eq!(options.filter, SyncFilter::CurrentScope);
}

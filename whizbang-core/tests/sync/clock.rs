//! The debugger-aware clock, in process (the real-process cases are in
//! `tests/tests/sync_sigstop.rs`).

use super::{dep, Balances};
use crate::common::{bounded, ms, paused_runtime, until};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::sync::ManualClock;
use whizbang_core::{PerspectiveSyncOptions, SyncFilter, SyncOutcome};

#[tokio::test(start_paused = true)]
async fn a_frozen_period_does_not_count_towards_a_debugger_aware_timeout() {
    let rt = paused_runtime();
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
    let rt = paused_runtime();
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

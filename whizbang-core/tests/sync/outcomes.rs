//! Outcomes: nothing to wait for, synced or timed out, exact event ids, and
//! event types the perspective does not handle.

use super::{dep, Balances, Renamed};
use crate::assert_matches;
use crate::common::{bounded, ms, paused_runtime, scope_wait, until};
use std::time::{Duration, Instant};
use uuid::Uuid;
use whizbang_core::{Error, EventId, LensQuery, Runtime, SyncFilter, SyncOutcome};

// ---------------------------------------------- 1. nothing to wait for

#[tokio::test]
async fn a_scope_that_emitted_nothing_has_no_pending_events_at_once() {
    let rt = paused_runtime();
    let scope = rt.scope();
    let started = Instant::now();
    let r = scope_wait::<Balances>(&scope, SyncFilter::current_scope()).await;
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
    let rt = paused_runtime();
    let scope = rt.scope();
    scope.publish(dep(Uuid::now_v7(), 1)).await.unwrap();
    let started = Instant::now();
    let other_stream = SyncFilter::for_stream(Uuid::now_v7());
    let r = scope_wait::<Balances>(&scope, other_stream.with_timeout(Duration::from_secs(5))).await;
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
    let r = scope_wait::<Balances>(&scope, SyncFilter::current_scope()).await;
    assert_eq!(r.outcome, SyncOutcome::Synced);
    assert_eq!(r.events_awaited, 2);
    assert_eq!(r.perspective, "sync.balances");
    let b = rt.lens::<Balances>().get(a.into()).await.unwrap().unwrap();
    assert_eq!(b.cents, 12, "synced means the model is readable");
}

#[tokio::test(start_paused = true)]
async fn tracked_events_never_applied_time_out_after_the_timeout() {
    let rt = paused_runtime();
    let scope = rt.scope();
    scope.publish(dep(Uuid::now_v7(), 5)).await.unwrap();
    let started = tokio::time::Instant::now();
    let r = scope_wait::<Balances>(&scope, SyncFilter::current_scope().with_timeout(ms(150))).await;
    let wall = started.elapsed();
    assert_eq!(r.outcome, SyncOutcome::TimedOut);
    assert_eq!(r.events_awaited, 1);
    assert!(r.elapsed >= ms(150), "{:?}", r.elapsed);
    assert!(r.elapsed < Duration::from_secs(1), "{:?}", r.elapsed);
    assert!(wall >= ms(150) && wall < Duration::from_secs(1), "{wall:?}");
    assert!(!r.is_synced());
    let err = r.into_result().unwrap_err();
    assert_matches!(
        err,
        Error::PerspectiveSyncTimeout {
            perspective: "sync.balances",
            ..
        }
    );
}

#[tokio::test]
async fn is_caught_up_answers_once_without_waiting() {
    let rt = paused_runtime();
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
    let rt = paused_runtime();
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
    let rt = paused_runtime();
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

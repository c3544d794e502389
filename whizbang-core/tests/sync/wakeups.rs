//! Wake-ups: per perspective and `wait_all`, a cancelled wait frees its
//! registration, and an apply racing the registration is never lost.

use super::{dep, Balances, Labels, Renamed};
use crate::common::{bounded, ms, paused_runtime, until};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::{LensQuery, PerspectiveSyncOptions, Runtime, SyncFilter, SyncOutcome};

// ------------------------------- 5. per-perspective wake-ups, wait_all

#[tokio::test]
async fn a_waiter_on_one_perspective_is_not_synced_by_another_applying() {
    let rt = paused_runtime(); // Balances (async) never applies; Labels (inline) does
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
    let rt = paused_runtime();
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

// -------------------------------------------------- 7. cancellation

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_ends_at_once_and_frees_its_registration() {
    let rt = paused_runtime();
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

//! Bounded memory: the tracker holds nothing once events apply, and expired
//! entries are not reported as synced.

use super::{Pinged, Pings};
use crate::common::{bounded, ms, scope_wait, until};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::{LensQuery, Runtime, SyncFilter, SyncOutcome};

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
        let r = scope_wait::<Pings>(
            &scope,
            SyncFilter::current_scope().with_timeout(Duration::from_secs(20)),
        )
        .await;
        assert_eq!(r.outcome, SyncOutcome::Synced);
        assert_eq!(r.events_awaited, 1_000);
        scope.complete().await.unwrap();
    }
    bounded(rt.wait_idle()).await;
    assert_eq!(rt.sync_tracker().tracked_count(), 0);
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
    let total = total_pings(&rt).await;
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
    let total = total_pings(&rt).await;
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

/// Every ping applied, summed over all streams.
async fn total_pings(rt: &Runtime) -> u64 {
    rt.lens::<Pings>()
        .list(whizbang_core::ListQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|c| c.n)
        .sum()
}

#[tokio::test]
async fn a_decided_wait_dropped_before_it_reads_its_outcome_leaves_nothing_behind() {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    let stream = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Pinged { stream }).await.unwrap();
    scope.complete().await.unwrap();
    let aw = rt.sync_awaiter();
    let options = || SyncFilter::for_stream(stream).with_timeout(Duration::from_secs(20));
    let mut dropped = Box::pin(aw.wait::<Pings>(options()));
    let mut kept = Box::pin(aw.wait::<Pings>(options()));
    // Polled until asleep: the runner is paused, so neither can end.
    assert!(tokio::time::timeout(ms(50), dropped.as_mut())
        .await
        .is_err());
    assert!(tokio::time::timeout(ms(50), kept.as_mut()).await.is_err());
    assert_eq!(rt.sync_tracker().waiter_count(), 2);

    // The apply decides both; their outcomes wait in the table, unread.
    rt.runner().resume();
    bounded(rt.wait_idle()).await;
    assert_eq!(rt.sync_tracker().waiter_count(), 2);

    drop(dropped);
    assert_eq!(rt.sync_tracker().waiter_count(), 1);
    let r = bounded(kept).await.unwrap();
    assert_eq!(r.outcome, SyncOutcome::Synced);
    assert_eq!(r.events_awaited, 1);
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
    assert_eq!(rt.sync_tracker().alarm_count(), 0);
}

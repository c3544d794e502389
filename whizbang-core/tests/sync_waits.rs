//! Sync waits under hostile conditions: a backend that never answers, a held
//! claim, `Duration::MAX`, applies no wake-up reached (another runtime over the
//! same stores), the inquiry rate of an idle waiter, alarms of finished and
//! dropped waits, and a receptor awaiting an async perspective while the
//! publishing scope stays open.

mod common;
use common::{bounded, counting_runtime, ms, paused_runtime, scope_wait, until};

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;
use whizbang_core::store::memory::{MemoryEventStore, MemoryPerspectiveStore};
use whizbang_core::store::BoxFuture;
use whizbang_core::sync::{SyncBackend, SyncInquiry, SyncInquiryResult};
use whizbang_core::{
    await_perspective_sync, perspective, receptor, Context, Error, Event, LensQuery,
    PerspectiveSyncOptions, Receptor, Result, Runtime, StreamId, SyncFilter, SyncLensExt,
    SyncOutcome,
};

// ---------------------------------------------------------------- messages

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync_waits.noted")]
struct Noted {
    #[stream_key]
    stream: Uuid,
}

/// Handled by `Followers` and by the awaiting `Follower` receptor only.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync_waits.followed")]
struct Followed {
    #[stream_key]
    stream: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Count {
    n: u64,
}

/// Async; the only perspective of `Noted`.
struct Notes;

#[perspective(model = Count, name = "sync_waits.notes")]
impl Notes {
    fn noted(c: &mut Count, _: &Noted) {
        c.n += 1;
    }
}

/// Async; the only perspective of `Followed`.
struct Followers;

#[perspective(model = Count, name = "sync_waits.followers")]
impl Followers {
    fn followed(c: &mut Count, _: &Followed) {
        c.n += 1;
    }
}

/// How often `Follower` ran, and a signal for each run.
static FOLLOWER_RUNS: AtomicUsize = AtomicUsize::new(0);
static FOLLOWER_RAN: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Awaits `Followers` and has no `#[fire_at]`: it runs detached at append time.
#[derive(Default)]
struct Follower;

#[await_perspective_sync(Followers, timeout_ms = 1000)]
#[receptor]
impl Receptor<Followed> for Follower {
    async fn handle(&self, _: Followed, _: &mut Context) -> Result<()> {
        FOLLOWER_RUNS.fetch_add(1, Ordering::SeqCst);
        FOLLOWER_RAN.notify_waiters();
        Ok(())
    }
}

// ----------------------------------------------------------------- helpers

/// A backend whose inquiries never return.
struct Hanging;

impl SyncBackend for Hanging {
    fn inquire<'a>(
        &'a self,
        _: &'a [SyncInquiry],
    ) -> BoxFuture<'a, Result<Vec<SyncInquiryResult>>> {
        Box::pin(std::future::pending())
    }
}

/// The bound every wait keeps: its timeout plus the documented slack.
fn within(timeout: Duration) -> Duration {
    timeout + PerspectiveSyncOptions::SLACK
}

// ------------------------------- 6. the timeout bounds everything a wait awaits

#[tokio::test(start_paused = true)]
async fn a_backend_that_never_answers_times_every_wait_out_within_its_timeout_plus_slack() {
    let rt = Runtime::builder().sync_backend(Hanging).build().unwrap();
    rt.runner().pause();
    let stream = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Noted { stream }).await.unwrap();
    let aw = scope.sync_awaiter();
    let timeout = ms(100);

    let started = Instant::now();
    let r = bounded(aw.wait::<Notes>(SyncFilter::current_scope().with_timeout(timeout)))
        .await
        .unwrap();
    assert_eq!(r.outcome, SyncOutcome::TimedOut);
    assert!(
        started.elapsed() <= within(timeout),
        "{:?}",
        started.elapsed()
    );
    assert!(r.elapsed <= within(timeout), "{:?}", r.elapsed);

    let started = Instant::now();
    let r = bounded(aw.wait::<Notes>(SyncFilter::for_stream(stream).with_timeout(timeout)))
        .await
        .unwrap();
    assert_eq!(r.outcome, SyncOutcome::TimedOut);
    assert!(
        started.elapsed() <= within(timeout),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let caught_up = bounded(aw.is_caught_up::<Notes>(SyncFilter::current_scope()))
        .await
        .unwrap();
    assert!(!caught_up, "a backend that never answers never says synced");
    assert!(started.elapsed() <= within(Duration::ZERO));

    let started = Instant::now();
    let rs = bounded(aw.wait_all::<Notes>(SyncFilter::current_scope().with_timeout(timeout)))
        .await
        .unwrap();
    assert_eq!(rs[0].outcome, SyncOutcome::TimedOut);
    assert!(
        started.elapsed() <= within(timeout),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let lens = rt
        .lens::<Notes>()
        .with_sync::<Notes>(&aw, SyncFilter::current_scope().with_timeout(timeout));
    let err = bounded(lens.get(stream.into())).await.unwrap_err();
    assert_matches!(err, Error::PerspectiveSyncTimeout { .. });
    assert!(
        started.elapsed() <= within(timeout),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
    assert_eq!(rt.sync_tracker().alarm_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_held_claim_times_a_wait_out_within_its_timeout_plus_slack() {
    let rt = paused_runtime();
    let stream = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Noted { stream }).await.unwrap();
    let claim = bounded(
        rt.services()
            .perspective_store()
            .claim("sync_waits.notes", StreamId::from(stream)),
    )
    .await
    .unwrap();
    let aw = scope.sync_awaiter();
    let timeout = ms(100);
    for options in [
        SyncFilter::current_scope().with_timeout(timeout),
        SyncFilter::for_stream(stream).with_timeout(timeout),
        SyncFilter::current_scope()
            .with_timeout(timeout)
            .debugger_aware(false),
    ] {
        let started = Instant::now();
        let r = bounded(aw.wait::<Notes>(options)).await.unwrap();
        assert_eq!(r.outcome, SyncOutcome::TimedOut);
        assert!(
            started.elapsed() <= within(timeout),
            "{:?}",
            started.elapsed()
        );
    }
    drop(claim);
    rt.runner().resume();
    let r = bounded(aw.wait::<Notes>(SyncFilter::current_scope()))
        .await
        .unwrap();
    assert_eq!(r.outcome, SyncOutcome::Synced, "released, the wait syncs");
}

// ---------------------------------------- 7. Duration::MAX waits for ever

#[tokio::test(start_paused = true)]
async fn a_wait_with_duration_max_waits_for_ever_whatever_the_debugger_flag() {
    for aware in [false, true] {
        let rt = paused_runtime();
        let scope = rt.scope();
        scope
            .publish(Noted {
                stream: Uuid::now_v7(),
            })
            .await
            .unwrap();
        let options = SyncFilter::current_scope()
            .with_timeout(Duration::MAX)
            .debugger_aware(aware);
        // An hour of (paused) time later it is still waiting, and dropping it is clean.
        let cut = tokio::time::timeout(
            Duration::from_secs(3_600),
            scope.sync_awaiter().wait::<Notes>(options),
        )
        .await;
        assert!(cut.is_err(), "aware={aware}: it must still be waiting");
        assert_eq!(rt.sync_tracker().waiter_count(), 0);
        assert_eq!(rt.sync_tracker().alarm_count(), 0);
    }
}

// -------------------------------------------------- 8. re-ask on a backoff

#[tokio::test(start_paused = true)]
async fn an_apply_by_another_runtime_over_the_same_stores_is_seen_within_the_backoff() {
    let events = MemoryEventStore::new();
    let perspectives = MemoryPerspectiveStore::new();
    let build = || {
        Runtime::builder()
            .event_store(events.clone())
            .perspective_store(perspectives.clone())
            .build()
            .unwrap()
    };
    let (writer, reader) = (build(), build());
    reader.runner().pause(); // only the writer applies: no wake-up reaches the reader
    for aware in [false, true] {
        writer.runner().pause();
        let stream = Uuid::now_v7();
        let scope = writer.scope();
        scope.publish(Noted { stream }).await.unwrap();
        scope.complete().await.unwrap();
        let aw = reader.sync_awaiter();
        let options = SyncFilter::for_stream(stream)
            .with_timeout(Duration::from_secs(10))
            .debugger_aware(aware);
        let waiting = tokio::spawn(async move { aw.wait::<Notes>(options).await });
        until(|| reader.sync_tracker().waiter_count() > 0).await;
        writer.runner().resume();
        let r = bounded(waiting).await.unwrap().unwrap();
        assert_eq!(r.outcome, SyncOutcome::Synced, "aware={aware}");
        assert!(
            r.elapsed < Duration::from_secs(2),
            "aware={aware}: seen after {:?}, not within the ~1 s backoff",
            r.elapsed
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_waiter_asks_no_more_often_than_the_backoff() {
    let (rt, asked) = counting_runtime();
    rt.runner().pause();
    let scope = rt.scope();
    scope
        .publish(Noted {
            stream: Uuid::now_v7(),
        })
        .await
        .unwrap();
    let r = scope_wait::<Notes>(
        &scope,
        SyncFilter::current_scope().with_timeout(Duration::from_secs(10)),
    )
    .await;
    assert_eq!(r.outcome, SyncOutcome::TimedOut);
    // 5 ms doubling to 1 s: 9 re-asks reach 2.3 s, then one a second; plus the
    // first inquiry and the last. Every 200 ms would be 51.
    let n = asked.load(Ordering::SeqCst);
    assert!(n <= 20, "{n} inquiries in a 10 s idle wait");
}

// ----------------------------------------------- 9. alarms leave with their wait

#[tokio::test(start_paused = true)]
async fn a_thousand_finished_or_dropped_waits_leave_no_alarm() {
    let rt = paused_runtime();
    let stream = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Noted { stream }).await.unwrap();
    scope.complete().await.unwrap();
    let hour = Duration::from_secs(3_600);

    let spawn_waits = || -> Vec<_> {
        (0..1_000)
            .map(|_| {
                let aw = rt.sync_awaiter();
                tokio::spawn(async move {
                    aw.wait::<Notes>(SyncFilter::for_stream(stream).with_timeout(hour))
                        .await
                })
            })
            .collect()
    };

    // Dropped (aborted) while sleeping.
    let waits = spawn_waits();
    until(|| rt.sync_tracker().alarm_count() == 1_000).await;
    for w in &waits {
        w.abort();
    }
    for w in waits {
        assert!(bounded(w).await.unwrap_err().is_cancelled());
    }
    assert_eq!(rt.sync_tracker().alarm_count(), 0, "dropped waits");

    // Finished.
    let waits = spawn_waits();
    until(|| rt.sync_tracker().alarm_count() == 1_000).await;
    rt.runner().resume();
    for w in waits {
        assert_eq!(
            bounded(w).await.unwrap().unwrap().outcome,
            SyncOutcome::Synced
        );
    }
    assert_eq!(rt.sync_tracker().alarm_count(), 0, "finished waits");
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
}

// ------------------- the runner learns of work from a wait, not only the flush

#[tokio::test(start_paused = true)]
async fn an_awaiting_receptor_without_fire_at_runs_while_the_publishing_scope_stays_open() {
    let rt = Runtime::in_memory().unwrap();
    let stream = Uuid::now_v7();
    let scope = rt.scope();
    let ran = FOLLOWER_RAN.notified();
    tokio::pin!(ran);
    ran.as_mut().enable();
    scope.publish(Followed { stream }).await.unwrap();
    // The scope stays open (no flush, no complete) far past the receptor's 1 s timeout.
    bounded(ran).await;
    assert_eq!(FOLLOWER_RUNS.load(Ordering::SeqCst), 1);
    let count = rt
        .lens::<Followers>()
        .get(stream.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count.n, 1, "the receptor ran once its event was applied");
    scope.complete().await.unwrap();
}

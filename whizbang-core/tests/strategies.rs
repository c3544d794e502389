//! Sync strategies on the in-memory backend: a batch perspective applies at
//! n pending, a scheduled one at its next run; waits wait for that run, or
//! trigger one when asked and say which; `send_and_sync` does not turn a
//! held-back perspective into a realtime one; a dropped triggered wait
//! loses nothing; `#[await_perspective_sync(.., trigger = true)]` triggers
//! the run for a receptor; and the status reports strategy, lag and last sync.

mod common;
use common::bounded;

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;
use whizbang_core::strategy::{Decision, PendingState, SyncStrategy};
use whizbang_core::{
    await_perspective_sync, perspective, receptor, Command, Context, Event, PerspectiveSyncOptions,
    Receptor, Result, Runtime, StrategyRun, SyncFilter, SyncOutcome, SyncResult,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "strategies.counted")]
struct Counted {
    #[stream_key]
    id: Uuid,
}

#[derive(Command, Serialize, Deserialize)]
#[command(output = Uuid)]
struct Count;

#[derive(Default)]
struct Counter;

#[receptor]
impl Receptor<Count> for Counter {
    async fn handle(&self, _: Count, cx: &mut Context) -> Result<Uuid> {
        let id = Uuid::now_v7();
        cx.emit(Counted { id })?;
        Ok(id)
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Tally {
    n: u64,
}

/// Applies at 5 pending; the wait bound is an hour, so only the count can
/// make it run in a test.
struct Batched;
#[perspective(model = Tally, name = "strategies.batched", strategy = batch(5, "1h"))]
impl Batched {
    fn counted(t: &mut Tally, _: &Counted) {
        t.n += 1;
    }
}

/// Runs hourly: never by itself within a test.
struct Hourly;
#[perspective(model = Tally, name = "strategies.hourly", strategy = scheduled("1h"))]
impl Hourly {
    fn counted(t: &mut Tally, _: &Counted) {
        t.n += 1;
    }
}

struct Live;
#[perspective(model = Tally, name = "strategies.live")]
impl Live {
    fn counted(t: &mut Tally, _: &Counted) {
        t.n += 1;
    }
}

/// A user's strategy: runs at 2 pending, else waits an hour.
struct Pairs;
impl SyncStrategy for Pairs {
    fn decide(&self, state: &PendingState) -> Decision {
        if state.pending >= 2 {
            Decision::Run { max_events: 2 }
        } else {
            Decision::Wait(Duration::from_secs(3600))
        }
    }
    fn describe(&self) -> String {
        "pairs".into()
    }
}

struct Paired;
#[perspective(model = Tally, name = "strategies.paired", strategy = Pairs)]
impl Paired {
    fn counted(t: &mut Tally, _: &Counted) {
        t.n += 1;
    }
}

/// A strategy that panics: the runner contains it and runs the work.
struct Broken;
impl SyncStrategy for Broken {
    fn decide(&self, _: &PendingState) -> Decision {
        panic!("this strategy is broken")
    }
    fn describe(&self) -> String {
        "broken".into()
    }
}

struct OnBroken;
#[perspective(model = Tally, name = "strategies.broken", strategy = Broken)]
impl OnBroken {
    fn counted(t: &mut Tally, _: &Counted) {
        t.n += 1;
    }
}

/// Rung on a bell: the `Ringer` receptor awaits `Belfry` and triggers it.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "strategies.rung")]
struct Rung {
    #[stream_key]
    id: Uuid,
}

/// Knocked on a door: the `Knocker` receptor awaits `Belfry` without a trigger.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "strategies.knocked")]
struct Knocked {
    #[stream_key]
    id: Uuid,
}

/// Runs hourly, like `Hourly`, over its own events (so no other test's
/// receptor triggers it).
struct Belfry;
#[perspective(model = Tally, name = "strategies.belfry", strategy = scheduled("1h"))]
impl Belfry {
    fn rung(t: &mut Tally, _: &Rung) {
        t.n += 1;
    }
    fn knocked(t: &mut Tally, _: &Knocked) {
        t.n += 1;
    }
}

/// Where the awaiting receptors report the wait they saw: (receptor, stream, result).
static AWAITED: OnceLock<mpsc::UnboundedSender<(&'static str, Uuid, SyncResult)>> = OnceLock::new();

fn report_awaited(receptor: &'static str, id: Uuid, cx: &Context) {
    let result = cx.sync_result::<Belfry>().cloned();
    if let (Some(tx), Some(result)) = (AWAITED.get(), result) {
        let _ = tx.send((receptor, id, result));
    }
}

/// Awaits the hourly `Belfry` with a minute's timeout, triggering its run.
#[derive(Default)]
struct Ringer;

#[await_perspective_sync(Belfry, timeout_ms = 60_000, trigger = true, fire = always)]
#[receptor]
impl Receptor<Rung> for Ringer {
    async fn handle(&self, e: Rung, cx: &mut Context) -> Result<()> {
        report_awaited("Ringer", e.id, cx);
        Ok(())
    }
}

/// Awaits the hourly `Belfry` briefly, leaving it to its schedule.
#[derive(Default)]
struct Knocker;

#[await_perspective_sync(Belfry, timeout_ms = 30, fire = always)]
#[receptor]
impl Receptor<Knocked> for Knocker {
    async fn handle(&self, e: Knocked, cx: &mut Context) -> Result<()> {
        report_awaited("Knocker", e.id, cx);
        Ok(())
    }
}

async fn publish(rt: &Runtime, id: Uuid) {
    let scope = rt.scope();
    scope.publish(Counted { id }).await.unwrap();
    scope.complete().await.unwrap();
}

fn short() -> PerspectiveSyncOptions {
    PerspectiveSyncOptions::new(SyncFilter::all()).timeout(Duration::from_millis(30))
}

#[tokio::test]
async fn batch_holds_work_until_n_are_pending_then_applies_them_all() {
    let rt = Runtime::in_memory().unwrap();
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for id in &ids[..4] {
        publish(&rt, *id).await;
    }
    // Four pending of five: held, not applied.
    let status = rt.perspective_status::<Batched>().await.unwrap();
    assert_eq!(status.strategy, "batch(5, 1h)");
    assert_eq!(status.lag_events, 4);
    assert_eq!(status.last_sync, None);
    let lens = rt.lens::<Batched>();
    assert_eq!(lens.get_versioned(ids[0].into()).await.unwrap(), None);
    let held = bounded(rt.sync_awaiter().wait::<Batched>(short()))
        .await
        .unwrap();
    assert_eq!(held.outcome, SyncOutcome::TimedOut);
    assert_eq!(held.run, StrategyRun::NextRun);

    // The fifth fills the batch: every stream is applied in that run.
    publish(&rt, ids[4]).await;
    let synced = bounded(
        rt.sync_awaiter()
            .wait::<Batched>(PerspectiveSyncOptions::new(SyncFilter::all())),
    )
    .await
    .unwrap();
    assert_eq!(synced.outcome, SyncOutcome::Synced);
    assert_eq!(synced.run, StrategyRun::NextRun);
    for id in &ids {
        let (tally, version) = lens.get_versioned((*id).into()).await.unwrap().unwrap();
        assert_eq!((tally.n, version), (1, 1));
    }
    let status = rt.perspective_status::<Batched>().await.unwrap();
    assert_eq!((status.lag_events, status.failed_cursors), (0, 0));
    assert!(status.last_sync.is_some());
}

#[tokio::test]
async fn a_wait_on_a_schedule_waits_for_its_run_or_triggers_it_and_says_which() {
    let rt = Runtime::in_memory().unwrap();
    let id = Uuid::now_v7();
    publish(&rt, id).await;
    let waited = bounded(rt.sync_awaiter().wait::<Hourly>(short()))
        .await
        .unwrap();
    assert_eq!(waited.outcome, SyncOutcome::TimedOut);
    assert_eq!(waited.run, StrategyRun::NextRun);
    let status = rt.perspective_status::<Hourly>().await.unwrap();
    assert_eq!(
        (status.strategy.as_str(), status.lag_events),
        ("scheduled(1h)", 1)
    );

    let triggered = bounded(rt.sync_awaiter().wait::<Hourly>(short().trigger(true)))
        .await
        .unwrap();
    assert_eq!(triggered.outcome, SyncOutcome::Synced);
    assert_eq!(triggered.run, StrategyRun::Triggered);
    let (tally, _) = rt
        .lens::<Hourly>()
        .get_versioned(id.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tally.n, 1);
    let status = rt.perspective_status::<Hourly>().await.unwrap();
    assert_eq!(status.lag_events, 0);
    assert_eq!(status.lag, Duration::ZERO);
    assert!(status.last_sync.is_some());
}

#[tokio::test]
async fn send_and_sync_leaves_a_scheduled_perspective_to_its_schedule_unless_triggered() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let options = PerspectiveSyncOptions::default().timeout(Duration::from_millis(30));
    let sent = bounded(scope.send_and_sync_with(Count, options.clone()))
        .await
        .unwrap();
    let of = |name: &str| sent.results.iter().find(|r| r.perspective == name).unwrap();
    // The realtime perspective is helped along; the hourly one is not.
    assert_eq!(of("strategies.live").outcome, SyncOutcome::Synced);
    assert_eq!(of("strategies.live").run, StrategyRun::Immediate);
    assert_eq!(of("strategies.hourly").outcome, SyncOutcome::TimedOut);
    assert_eq!(of("strategies.hourly").run, StrategyRun::NextRun);
    let (tally, _) = rt
        .lens::<Hourly>()
        .get_versioned(sent.output.into())
        .await
        .unwrap()
        .map_or((Tally::default(), 0), |v| v);
    assert_eq!(tally.n, 0, "the hourly perspective ran early");

    let sent = bounded(scope.send_and_sync_with(Count, options.trigger(true)))
        .await
        .unwrap();
    let of = |name: &str| sent.results.iter().find(|r| r.perspective == name).unwrap();
    assert_eq!(of("strategies.hourly").outcome, SyncOutcome::Synced);
    assert_eq!(of("strategies.hourly").run, StrategyRun::Triggered);
    let (tally, _) = rt
        .lens::<Hourly>()
        .get_versioned(sent.output.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tally.n, 1);
    scope.complete().await.unwrap();
}

#[tokio::test]
async fn an_attribute_wait_with_trigger_runs_a_scheduled_perspective_promptly() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    AWAITED.set(tx).unwrap();
    let rt = Runtime::in_memory().unwrap();
    let lens = rt.lens::<Belfry>();

    // Without `trigger`: the receptor's wait is left to the hourly schedule.
    let door = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Knocked { id: door }).await.unwrap();
    scope.complete().await.unwrap();
    let (receptor, id, knocked) = bounded(rx.recv()).await.unwrap();
    assert_eq!((receptor, id), ("Knocker", door));
    assert_eq!(knocked.outcome, SyncOutcome::TimedOut);
    assert_eq!(knocked.run, StrategyRun::NextRun);
    assert_eq!(lens.get_versioned(door.into()).await.unwrap(), None);

    // With `trigger = true`: synced long before the minute's timeout (the
    // bound below is half of it), by a run the wait triggered.
    let bell = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Rung { id: bell }).await.unwrap();
    scope.complete().await.unwrap();
    let (receptor, id, rung) = bounded(rx.recv()).await.unwrap();
    assert_eq!((receptor, id), ("Ringer", bell));
    assert_eq!(rung.outcome, SyncOutcome::Synced);
    assert_eq!(rung.run, StrategyRun::Triggered);
    assert!(rung.elapsed < Duration::from_secs(30), "{:?}", rung.elapsed);
    let (tally, version) = lens.get_versioned(bell.into()).await.unwrap().unwrap();
    assert_eq!((tally.n, version), (1, 1));
    // Only the awaited stream was run: the knocked one still waits its hour.
    assert_eq!(lens.get_versioned(door.into()).await.unwrap(), None);
}

#[tokio::test]
async fn a_triggered_wait_dropped_mid_way_applies_nothing_twice() {
    let rt = Runtime::in_memory().unwrap();
    let id = Uuid::now_v7();
    publish(&rt, id).await;
    publish(&rt, id).await;
    let options = PerspectiveSyncOptions::new(SyncFilter::for_stream(id)).trigger(true);
    // Dropped at its first await, then at successive ones.
    for _ in 0..20 {
        let awaiter = rt.sync_awaiter();
        let mut wait = Box::pin(awaiter.wait::<Hourly>(options.clone()));
        let _ = futures_poll_once(wait.as_mut()).await;
        drop(wait);
    }
    let done = bounded(rt.sync_awaiter().wait::<Hourly>(options))
        .await
        .unwrap();
    assert!(done.is_synced());
    let (tally, version) = rt
        .lens::<Hourly>()
        .get_versioned(id.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (tally.n, version),
        (2, 2),
        "each event applied exactly once"
    );
}

/// Polls `f` once (then the caller drops it).
async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn a_custom_strategy_decides_when_the_runner_applies() {
    let rt = Runtime::in_memory().unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    publish(&rt, a).await;
    let one = bounded(rt.sync_awaiter().wait::<Paired>(short()))
        .await
        .unwrap();
    assert_eq!(
        (one.outcome, one.run),
        (SyncOutcome::TimedOut, StrategyRun::NextRun)
    );
    publish(&rt, b).await;
    let two = bounded(
        rt.sync_awaiter()
            .wait::<Paired>(PerspectiveSyncOptions::new(SyncFilter::all())),
    )
    .await
    .unwrap();
    assert_eq!(two.outcome, SyncOutcome::Synced);
    assert_eq!(
        rt.perspective_status::<Paired>().await.unwrap().strategy,
        "pairs"
    );
}

#[tokio::test]
async fn a_strategy_that_panics_does_not_strand_the_work() {
    let rt = Runtime::in_memory().unwrap();
    let id = Uuid::now_v7();
    publish(&rt, id).await;
    let done = bounded(
        rt.sync_awaiter()
            .wait::<OnBroken>(PerspectiveSyncOptions::new(SyncFilter::for_stream(id))),
    )
    .await
    .unwrap();
    assert_eq!(done.outcome, SyncOutcome::Synced);
    let (tally, _) = rt
        .lens::<OnBroken>()
        .get_versioned(id.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tally.n, 1);
}

#[tokio::test]
async fn a_conditional_sync_runs_only_when_its_condition_holds() {
    use whizbang_core::SyncCondition;
    let rt = Runtime::in_memory().unwrap();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let tally = |id: Uuid| {
        let lens = rt.lens::<Hourly>();
        async move { lens.get_by_key(id).await.unwrap().map(|t| t.n) }
    };
    publish(&rt, a).await;
    // One event behind an hourly schedule: a sync that wants two does
    // nothing, and says why.
    let wants_two = SyncCondition::LagAtLeast(2);
    let report = rt.sync::<Hourly>().when(wants_two).run().await.unwrap();
    assert_eq!(report.not_needed, Some(wants_two));
    assert!(report.items.is_empty());
    assert_eq!(tally(a).await, None);

    publish(&rt, b).await;
    let report = rt.sync::<Hourly>().when(wants_two).run().await.unwrap();
    assert_eq!(report.not_needed, None);
    assert_eq!(report.totals().applied, 2);
    assert_eq!((tally(a).await, tally(b).await), (Some(1), Some(1)));

    // Just synced: one that wants an hour since the last sync does nothing;
    // one that wants any lag at all runs.
    publish(&rt, a).await;
    let hourly = SyncCondition::LastSyncOlderThan(Duration::from_secs(3600));
    let report = rt.sync::<Hourly>().when(hourly).run().await.unwrap();
    assert_eq!(report.not_needed, Some(hourly));
    assert_eq!(tally(a).await, Some(1));
    let any_lag = SyncCondition::LagOlderThan(Duration::ZERO);
    let report = rt.sync::<Hourly>().when(any_lag).run().await.unwrap();
    assert_eq!(report.totals().applied, 1);
    assert_eq!(tally(a).await, Some(2));
    // Nothing behind: even "any lag" does nothing.
    let report = rt.sync::<Hourly>().when(any_lag).run().await.unwrap();
    assert_eq!(report.not_needed, Some(any_lag));
}

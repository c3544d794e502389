//! Cascades and what a send reports: one append per send (command and inline
//! cascade together, or nothing), detached receptors after the append and
//! their failures observable, per-event perspective stages, one value per
//! event, flush failures kept to their own perspective, and `send_and_sync`
//! returning the output with each perspective's outcome.
//!
//! Every test uses message types of its own: the global registry holds them all.

mod common;
use common::{bounded, paused_runtime, stream_len};

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::{
    perspective, receptor, Command, Context, DetachedFailure, Error, Event, LensQuery, Perspective,
    PerspectiveSyncOptions, Receptor, Result, Runtime, SyncFilter, SyncOutcome,
};

// ------------------------------------------------ 1. a failing cascade stores nothing

#[derive(Command, Serialize, Deserialize)]
struct OpenTab {
    tab: Uuid,
}

#[derive(Event, Serialize, Deserialize)]
struct TabOpened {
    #[stream_key]
    tab: Uuid,
}

#[derive(Event, Serialize, Deserialize)]
struct TabNoted {
    #[stream_key]
    note: Uuid,
}

/// Where `Noter` writes: a stream derived from the tab's.
fn note_stream(tab: Uuid) -> Uuid {
    Uuid::from_u128(tab.as_u128() ^ 0xABCD)
}

#[derive(Default)]
struct Tabs;

#[receptor]
impl Receptor<OpenTab> for Tabs {
    async fn handle(&self, cmd: OpenTab, cx: &mut Context) -> Result<()> {
        cx.emit(TabOpened { tab: cmd.tab })?;
        Ok(())
    }
}

/// Emits and succeeds (runs first: an earlier stage).
#[derive(Default)]
struct Noter;

#[receptor]
#[fire_at(PreDistributeInline)]
impl Receptor<TabOpened> for Noter {
    async fn handle(&self, e: TabOpened, cx: &mut Context) -> Result<()> {
        cx.emit(TabNoted {
            note: note_stream(e.tab),
        })?;
        Ok(())
    }
}

#[derive(Debug)]
struct TabRefused;
impl std::fmt::Display for TabRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tabs are closed tonight")
    }
}
impl std::error::Error for TabRefused {}

/// Fails (at the default stage, after `Noter`).
#[derive(Default)]
struct Refuser;

#[receptor]
impl Receptor<TabOpened> for Refuser {
    async fn handle(&self, _: TabOpened, _: &mut Context) -> Result<()> {
        Err(Error::handler(TabRefused))
    }
}

static TAB_DETACHED_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A detached receptor at a stage before the failing one: it must not start,
/// as nothing was stored.
#[derive(Default)]
struct TabWatcher;

#[receptor]
#[fire_at(PreDistributeDetached)]
impl Receptor<TabOpened> for TabWatcher {
    async fn handle(&self, _: TabOpened, _: &mut Context) -> Result<()> {
        TAB_DETACHED_RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct TabViews;
#[perspective(model = u32)]
impl TabViews {
    fn opened(m: &mut u32, _: &TabOpened) {
        *m += 1;
    }
}

#[tokio::test]
async fn a_failing_event_receptor_in_the_cascade_stores_nothing_of_the_send() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let tab = Uuid::now_v7();
    let err = scope.send(OpenTab { tab }).await.unwrap_err();
    match &err {
        Error::CascadeFailed {
            receptor,
            event_type,
            discarded,
            ..
        } => {
            assert!(receptor.ends_with("Refuser"), "{receptor}");
            assert_eq!(event_type, "TabOpened");
            assert_eq!(*discarded, 2, "the command's event and Noter's");
        }
        other => panic!("expected CascadeFailed, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("tabs are closed tonight"), "{text}");
    assert!(text.contains("Nothing of this send was stored"), "{text}");
    assert!(err.downcast_handler_ref::<TabRefused>().is_some());

    assert_eq!(
        stream_len(&rt, tab).await,
        0,
        "not even the command's event"
    );
    assert_eq!(stream_len(&rt, note_stream(tab)).await, 0);
    assert!(scope.emitted().is_empty());
    assert_eq!(rt.sync_tracker().tracked_count(), 0);
    bounded(scope.complete()).await.unwrap();
    bounded(rt.wait_idle()).await;
    assert_eq!(TAB_DETACHED_RUNS.load(Ordering::SeqCst), 0);
    assert!(rt
        .lens::<TabViews>()
        .get(tab.into())
        .await
        .unwrap()
        .is_none());
}

// ------------------------------------------------ CascadeTooDeep stores nothing

#[derive(Event, Serialize, Deserialize)]
struct Echo {
    #[stream_key]
    stream: Uuid,
}

/// A cycle: every echo emits another.
#[derive(Default)]
struct Echoer;

#[receptor]
impl Receptor<Echo> for Echoer {
    async fn handle(&self, e: Echo, cx: &mut Context) -> Result<()> {
        cx.emit(Echo { stream: e.stream })?;
        Ok(())
    }
}

#[tokio::test]
async fn a_cascade_too_deep_stores_nothing() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let stream = Uuid::now_v7();
    let err = scope.publish(Echo { stream }).await.unwrap_err();
    assert_matches!(err, Error::CascadeTooDeep { .. });
    assert!(err.to_string().contains("Nothing of the send was stored"));
    assert_eq!(stream_len(&rt, stream).await, 0);
    assert!(scope.emitted().is_empty());
    assert_eq!(rt.sync_tracker().tracked_count(), 0);
    bounded(scope.complete()).await.unwrap();
}

// ------------------------------------------------ a cascade commits in one append

#[derive(Command, Serialize, Deserialize)]
struct StartChain {
    stream: Uuid,
}

#[derive(Event, Serialize, Deserialize)]
struct ChainLink {
    #[stream_key]
    stream: Uuid,
    n: u32,
}

#[derive(Default)]
struct Chains;

#[receptor]
impl Receptor<StartChain> for Chains {
    async fn handle(&self, cmd: StartChain, cx: &mut Context) -> Result<()> {
        cx.emit(ChainLink {
            stream: cmd.stream,
            n: 0,
        })?;
        Ok(())
    }
}

#[derive(Default)]
struct Linker;

#[receptor]
impl Receptor<ChainLink> for Linker {
    async fn handle(&self, e: ChainLink, cx: &mut Context) -> Result<()> {
        if e.n < 2 {
            cx.emit(ChainLink {
                stream: e.stream,
                n: e.n + 1,
            })?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_successful_cascade_is_stored_whole_in_order_and_recorded() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let stream = Uuid::now_v7();
    scope.send(StartChain { stream }).await.unwrap();
    let events = rt
        .event_store()
        .read_stream(stream.into(), 0)
        .await
        .unwrap();
    let ns: Vec<u64> = events
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e.data.get()).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ns, [0, 1, 2]);
    let versions: Vec<u64> = scope.emitted().iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [1, 2, 3]);
    bounded(scope.complete()).await.unwrap();
}

// ------------------------------------------------ detached failures are observable

#[derive(Event, Serialize, Deserialize)]
struct Doomed {
    #[stream_key]
    stream: Uuid,
}

#[derive(Default)]
struct DoomedHandler;

#[receptor]
#[fire_at(PostDistributeDetached)]
impl Receptor<Doomed> for DoomedHandler {
    async fn handle(&self, _: Doomed, _: &mut Context) -> Result<()> {
        Err(Error::rejected("the mail server is down"))
    }
}

#[tokio::test]
async fn a_detached_receptors_failure_is_counted_and_handed_to_the_hook() {
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let signal = Arc::new(tokio::sync::Notify::new());
    let rt = Runtime::builder()
        .on_detached_failure({
            let (seen, signal) = (Arc::clone(&seen), Arc::clone(&signal));
            move |f: &DetachedFailure| {
                seen.lock().unwrap().push((
                    f.receptor.clone(),
                    f.event_type.clone(),
                    f.error.to_string(),
                ));
                signal.notify_one();
            }
        })
        .build()
        .unwrap();
    let scope = rt.scope();
    let id = scope
        .publish(Doomed {
            stream: Uuid::now_v7(),
        })
        .await
        .unwrap();
    bounded(signal.notified()).await;
    bounded(rt.wait_idle()).await;
    assert_eq!(rt.detached_failures(), 1);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].0.ends_with("DoomedHandler"), "{seen:?}");
    assert_eq!(seen[0].1, "Doomed");
    assert_eq!(seen[0].2, "the mail server is down");
    let _ = id;
    bounded(scope.complete()).await.unwrap();
}

#[derive(Event, Serialize, Deserialize)]
struct Crashed {
    #[stream_key]
    stream: Uuid,
}

#[derive(Default)]
struct CrashingHandler;

#[receptor]
#[fire_at(PostDistributeDetached)]
impl Receptor<Crashed> for CrashingHandler {
    async fn handle(&self, _: Crashed, _: &mut Context) -> Result<()> {
        panic!("the template is missing")
    }
}

#[tokio::test]
async fn a_detached_receptor_that_panics_is_counted_and_handed_to_the_hook_too() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let signal = Arc::new(tokio::sync::Notify::new());
    let rt = Runtime::builder()
        .on_detached_failure({
            let (seen, signal) = (Arc::clone(&seen), Arc::clone(&signal));
            move |f: &DetachedFailure| {
                seen.lock().unwrap().push(f.error.to_string());
                signal.notify_one();
            }
        })
        .build()
        .unwrap();
    let scope = rt.scope();
    scope
        .publish(Crashed {
            stream: Uuid::now_v7(),
        })
        .await
        .unwrap();
    bounded(signal.notified()).await;
    bounded(rt.wait_idle()).await;
    assert_eq!(rt.detached_failures(), 1);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        ["the detached receptor panicked: the template is missing"]
    );
    bounded(scope.complete()).await.unwrap();
}

// ------------------------------------------------ 12. stages see each event's own before and after

#[derive(Event, Serialize, Deserialize)]
struct Tick {
    #[stream_key]
    stream: Uuid,
}

struct TickCount;
#[perspective(model = u64, mode = inline)]
impl TickCount {
    fn tick(m: &mut u64, _: &Tick) {
        *m += 1;
    }
}

static TICK_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn ticks(cx: &Context, stream: Uuid) -> u64 {
    cx.lens::<TickCount>()
        .get(stream.into())
        .await
        .unwrap()
        .unwrap_or(0)
}

#[derive(Default)]
struct BeforeTick;

#[receptor]
#[fire_at(PrePerspectiveInline)]
impl Receptor<Tick> for BeforeTick {
    async fn handle(&self, e: Tick, cx: &mut Context) -> Result<()> {
        let n = ticks(cx, e.stream).await;
        TICK_LOG.lock().unwrap().push(format!("pre {n}"));
        Ok(())
    }
}

#[derive(Default)]
struct AfterTick;

#[receptor]
#[fire_at(PostPerspectiveInline)]
impl Receptor<Tick> for AfterTick {
    async fn handle(&self, e: Tick, cx: &mut Context) -> Result<()> {
        let n = ticks(cx, e.stream).await;
        TICK_LOG.lock().unwrap().push(format!("post {n}"));
        Ok(())
    }
}

#[tokio::test]
async fn two_events_on_one_stream_each_see_their_own_before_and_after() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let stream = Uuid::now_v7();
    scope.publish(Tick { stream }).await.unwrap();
    scope.publish(Tick { stream }).await.unwrap();
    bounded(scope.complete()).await.unwrap();
    assert_eq!(
        *TICK_LOG.lock().unwrap(),
        ["pre 0", "post 1", "pre 1", "post 2"]
    );
}

// ------------------------------------------------ one value per event (#[serde(skip)])

#[derive(Event, Serialize, Deserialize)]
struct Skippy {
    #[stream_key]
    stream: Uuid,
    #[serde(skip)]
    local_only: u32,
}

struct SkippyView;
#[perspective(model = u32, mode = inline)]
impl SkippyView {
    fn seen(m: &mut u32, e: &Skippy) {
        *m = e.local_only;
    }
}

static SKIPPY_RECEPTOR_SAW: Mutex<Vec<u32>> = Mutex::new(Vec::new());

#[derive(Default)]
struct SkippyReader;

#[receptor]
impl Receptor<Skippy> for SkippyReader {
    async fn handle(&self, e: Skippy, _: &mut Context) -> Result<()> {
        SKIPPY_RECEPTOR_SAW.lock().unwrap().push(e.local_only);
        Ok(())
    }
}

#[tokio::test]
async fn a_serde_skip_field_reads_the_same_in_perspectives_and_receptors() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let stream = Uuid::now_v7();
    scope
        .publish(Skippy {
            stream,
            local_only: 7,
        })
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
    let view = rt.lens::<SkippyView>().get(stream.into()).await.unwrap();
    assert_eq!(view, Some(0), "what another process decodes");
    assert_eq!(*SKIPPY_RECEPTOR_SAW.lock().unwrap(), [0]);
}

// ------------------------------------------------ 10. a wait reports its own perspective

#[derive(Command, Serialize, Deserialize)]
#[command(output = Uuid)]
struct Mark {
    poison: bool,
}

#[derive(Event, Serialize, Deserialize)]
struct Marked {
    #[stream_key]
    stream: Uuid,
    poison: bool,
}

#[derive(Default)]
struct Marker;

#[receptor]
impl Receptor<Mark> for Marker {
    async fn handle(&self, cmd: Mark, cx: &mut Context) -> Result<Uuid> {
        let stream = Uuid::now_v7();
        cx.emit(Marked {
            stream,
            poison: cmd.poison,
        })?;
        Ok(stream)
    }
}

struct BrittleInline;
#[perspective(model = u32, mode = inline)]
impl BrittleInline {
    fn marked(m: &mut u32, e: &Marked) -> Result<(), String> {
        if e.poison {
            return Err("poisoned mark".into());
        }
        *m += 1;
        Ok(())
    }
}

struct SturdyAsync;
#[perspective(model = u32)]
impl SturdyAsync {
    fn marked(m: &mut u32, _: &Marked) {
        *m += 1;
    }
}

#[tokio::test]
async fn a_wait_on_a_healthy_perspective_is_not_failed_by_another_inline_one() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    scope.send(Mark { poison: true }).await.unwrap();
    let result = bounded(
        scope
            .sync_awaiter()
            .wait::<SturdyAsync>(SyncFilter::current_scope()),
    )
    .await
    .expect("the wait on SturdyAsync reports SturdyAsync only");
    assert_eq!(result.outcome, SyncOutcome::Synced);
    let err = bounded(scope.complete()).await.unwrap_err();
    match err {
        Error::PerspectiveFailed { perspective, .. } => {
            assert_eq!(perspective, BrittleInline::NAME);
        }
        other => panic!("expected the inline failure, got {other:?}"),
    }
}

// ------------------------------------------------ 11. send_and_sync

#[tokio::test]
async fn send_and_sync_is_not_failed_by_an_earlier_commands_inline_failure() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    scope.send(Mark { poison: true }).await.unwrap();
    let sent = bounded(scope.send_and_sync(Mark { poison: false }))
        .await
        .expect("the healthy command's events are stored: its output comes back");
    assert!(sent.is_synced(), "{:?}", sent.results);
    let names: Vec<&str> = sent.results.iter().map(|r| r.perspective).collect();
    assert!(names.contains(&SturdyAsync::NAME) && names.contains(&BrittleInline::NAME));
    let stream = sent.into_synced().unwrap();
    let view = rt.lens::<SturdyAsync>().get(stream.into()).await.unwrap();
    assert_eq!(view, Some(1));
    assert!(
        bounded(scope.complete()).await.is_err(),
        "complete reports the earlier failure"
    );
}

#[tokio::test(start_paused = true)]
async fn send_and_sync_timing_out_returns_the_output_and_says_the_events_are_stored() {
    let rt = paused_runtime();
    let scope = rt.scope();
    let sent = bounded(scope.send_and_sync_with(
        Mark { poison: false },
        PerspectiveSyncOptions::default().timeout(Duration::from_millis(100)),
    ))
    .await
    .unwrap();
    assert!(!sent.is_synced());
    let stream = sent.output;
    let async_result = sent
        .results
        .iter()
        .find(|r| r.perspective == SturdyAsync::NAME)
        .unwrap();
    assert_eq!(async_result.outcome, SyncOutcome::TimedOut);
    let not = sent.clone().into_synced().unwrap_err();
    assert_eq!(*not.output(), stream, "the output travels with the miss");
    let text = not.to_string();
    assert!(text.contains("events are stored"), "{text}");
    assert!(text.contains("Do not send the command again"), "{text}");
    assert!(text.contains(SturdyAsync::NAME), "{text}");
    assert!(!text.contains("did not run"), "{text}");
    let err: Error = not.into();
    assert_matches!(err, Error::NotSynced { perspective, .. } if *perspective == SturdyAsync::NAME);
    assert_eq!(err.to_string(), text);
    assert_eq!(stream_len(&rt, stream).await, 1, "stored");
    rt.runner().resume();
    bounded(scope.complete()).await.unwrap();
}

// Concurrent send_and_sync on one scope: each waits on its own events only.

#[derive(Command, Serialize, Deserialize)]
#[command(output = Uuid)]
struct Slowpoke;

#[derive(Command, Serialize, Deserialize)]
#[command(output = Uuid)]
struct Quick;

#[derive(Event, Serialize, Deserialize)]
struct SlowDone {
    #[stream_key]
    stream: Uuid,
}

#[derive(Event, Serialize, Deserialize)]
struct QuickDone {
    #[stream_key]
    stream: Uuid,
}

static SLOWPOKE_GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[derive(Default)]
struct Racers;

#[receptor]
impl Receptor<Slowpoke> for Racers {
    async fn handle(&self, _: Slowpoke, cx: &mut Context) -> Result<Uuid> {
        SLOWPOKE_GATE.notified().await;
        let stream = Uuid::now_v7();
        cx.emit(SlowDone { stream })?;
        Ok(stream)
    }
}

#[receptor]
impl Receptor<Quick> for Racers {
    async fn handle(&self, _: Quick, cx: &mut Context) -> Result<Uuid> {
        let stream = Uuid::now_v7();
        cx.emit(QuickDone { stream })?;
        Ok(stream)
    }
}

/// Applies at once (inline): never held up by the paused runner.
struct SlowInline;
#[perspective(model = u32, mode = inline)]
impl SlowInline {
    fn done(m: &mut u32, _: &SlowDone) {
        *m += 1;
    }
}

/// Async: held up by the paused runner.
struct QuickAsync;
#[perspective(model = u32)]
impl QuickAsync {
    fn done(m: &mut u32, _: &QuickDone) {
        *m += 1;
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_send_and_sync_on_one_scope_each_wait_on_their_own_events() {
    let rt = paused_runtime();
    let scope = rt.scope();
    let options = PerspectiveSyncOptions::default().timeout(Duration::from_millis(200));
    // The slow command starts first and is still in its receptor while the
    // quick one stores its event, then goes on.
    let (slow, quick) = bounded(async {
        tokio::join!(scope.send_and_sync_with(Slowpoke, options.clone()), async {
            let quick = scope.send_and_sync_with(Quick, options.clone()).await;
            SLOWPOKE_GATE.notify_one();
            quick
        })
    })
    .await;
    let (slow, quick) = (slow.unwrap(), quick.unwrap());
    assert_eq!(
        quick
            .results
            .iter()
            .map(|r| r.perspective)
            .collect::<Vec<_>>(),
        [QuickAsync::NAME]
    );
    assert_eq!(
        quick.results[0].outcome,
        SyncOutcome::TimedOut,
        "the runner is paused"
    );
    assert_eq!(
        slow.results
            .iter()
            .map(|r| r.perspective)
            .collect::<Vec<_>>(),
        [SlowInline::NAME],
        "the slow command waits on its own event, not on the quick one's"
    );
    assert!(slow.is_synced(), "{:?}", slow.results);
    assert_eq!(slow.results[0].events_awaited, 1);
    rt.runner().resume();
    bounded(scope.complete()).await.unwrap();
}

// ------------------------------------------------ a concurrency conflict in the cascade stores nothing

#[derive(Command, Serialize, Deserialize)]
struct Reserve {
    seat: Uuid,
}

#[derive(Event, Serialize, Deserialize)]
struct Reserved {
    #[stream_key]
    seat: Uuid,
}

#[derive(Event, Serialize, Deserialize)]
struct Billed {
    #[stream_key]
    bill: Uuid,
}

#[derive(Default)]
struct Seats;

#[receptor]
impl Receptor<Reserve> for Seats {
    async fn handle(&self, cmd: Reserve, cx: &mut Context) -> Result<()> {
        cx.emit(Reserved { seat: cmd.seat })?;
        Ok(())
    }
}

/// Emits on the bill stream expecting it new: the second reservation conflicts.
#[derive(Default)]
struct Biller;

#[receptor]
impl Receptor<Reserved> for Biller {
    async fn handle(&self, _: Reserved, cx: &mut Context) -> Result<()> {
        cx.emit_expecting(
            Billed { bill: BILL_STREAM },
            whizbang_core::ExpectedVersion::NoStream,
        )?;
        Ok(())
    }
}

const BILL_STREAM: Uuid = Uuid::from_u128(0xB111);

#[tokio::test]
async fn a_concurrency_conflict_in_the_cascade_stores_nothing_of_the_send() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    scope.send(Reserve { seat: first }).await.unwrap();
    let err = scope.send(Reserve { seat: second }).await.unwrap_err();
    assert_matches!(err, Error::Concurrency { .. });
    assert_eq!(stream_len(&rt, first).await, 1);
    assert_eq!(
        stream_len(&rt, second).await,
        0,
        "not the command's event either"
    );
    assert_eq!(scope.emitted().len(), 2);
    bounded(scope.complete()).await.unwrap();
}

// ------------------------------------------------ an event that does not round-trip is refused at emit

#[derive(Command, Serialize, Deserialize)]
struct EmitOneWay;

#[derive(Event, Serialize, Deserialize)]
struct OneWay {
    #[stream_key]
    stream: Uuid,
    #[serde(deserialize_with = "never")]
    value: u32,
}

fn never<'de, D: serde::Deserializer<'de>>(_: D) -> std::result::Result<u32, D::Error> {
    Err(serde::de::Error::custom("this field never decodes"))
}

#[derive(Default)]
struct OneWays;

#[receptor]
impl Receptor<EmitOneWay> for OneWays {
    async fn handle(&self, _: EmitOneWay, cx: &mut Context) -> Result<()> {
        let err = cx
            .emit(OneWay {
                stream: Uuid::now_v7(),
                value: 1,
            })
            .unwrap_err();
        assert_eq!(cx.pending_count(), 0, "nothing buffered");
        Err(err)
    }
}

#[tokio::test]
async fn an_event_that_does_not_decode_from_its_own_json_is_refused_at_emit() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let err = scope.send(EmitOneWay).await.unwrap_err();
    assert_matches!(
        err,
        Error::EventRoundTrip {
            event_type: "OneWay",
            ..
        }
    );
    assert!(err.to_string().contains("nothing was emitted"), "{err}");
    assert!(scope.emitted().is_empty());
}

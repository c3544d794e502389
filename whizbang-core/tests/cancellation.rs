//! Dropping public futures at their await points (a web framework dropping a
//! handler, `tokio::time::timeout`): a send dropped before its append stores
//! nothing and leaves nothing tracked; a flush dropped half-way (in
//! `complete`, `send_and_sync`, a wait) is finished on a spawned task.
//!
//! Every test uses message types or streams of its own: the global registry
//! holds them all.

mod common;
use common::{bounded, stream_len};

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::store::memory::MemoryEventStore;
use whizbang_core::store::{BoxFuture, EventLocation, EventStore, StoredEvent, StreamAppend};
use whizbang_core::{
    perspective, receptor, Command, Context, Event, EventId, LensQuery, Receptor, Result, Runtime,
    StreamId, SyncFilter,
};

const DROP_AFTER: Duration = Duration::from_millis(50);

// ------------------------------------------------ a send dropped mid-cascade

#[derive(Command, Serialize, Deserialize)]
struct Hang {
    stream: Uuid,
}

#[derive(Command, Serialize, Deserialize)]
struct NoHang {
    stream: Uuid,
}

#[derive(Event, Serialize, Deserialize)]
struct WillHang {
    #[stream_key]
    stream: Uuid,
}

#[derive(Event, Serialize, Deserialize)]
struct WontHang {
    #[stream_key]
    stream: Uuid,
}

#[derive(Default)]
struct Hangers;

#[receptor]
impl Receptor<Hang> for Hangers {
    async fn handle(&self, cmd: Hang, cx: &mut Context) -> Result<()> {
        cx.emit(WillHang { stream: cmd.stream })?;
        Ok(())
    }
}

#[receptor]
impl Receptor<NoHang> for Hangers {
    async fn handle(&self, cmd: NoHang, cx: &mut Context) -> Result<()> {
        cx.emit(WontHang { stream: cmd.stream })?;
        Ok(())
    }
}

/// Never fired: the receptor below waits for ever.
static NEVER: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[derive(Default)]
struct HangForEver;

#[receptor]
impl Receptor<WillHang> for HangForEver {
    async fn handle(&self, _: WillHang, _: &mut Context) -> Result<()> {
        NEVER.notified().await;
        Ok(())
    }
}

struct HangViews;
#[perspective(model = u32, mode = inline)]
impl HangViews {
    fn hung(m: &mut u32, _: &WillHang) {
        *m += 1;
    }
    fn not_hung(m: &mut u32, _: &WontHang) {
        *m += 1;
    }
}

#[tokio::test(start_paused = true)]
async fn a_send_dropped_mid_cascade_stores_nothing_and_the_scope_stays_usable() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let stream = Uuid::now_v7();
    let dropped = tokio::time::timeout(DROP_AFTER, scope.send(Hang { stream })).await;
    assert!(dropped.is_err(), "the send was still in its cascade");
    assert_eq!(stream_len(&rt, stream).await, 0, "nothing stored");
    assert!(scope.emitted().is_empty());
    assert_eq!(rt.sync_tracker().tracked_count(), 0);

    let other = Uuid::now_v7();
    bounded(scope.send(NoHang { stream: other })).await.unwrap();
    bounded(scope.complete()).await.unwrap();
    assert_eq!(stream_len(&rt, other).await, 1);
    let view = rt.lens::<HangViews>().get(other.into()).await.unwrap();
    assert_eq!(view, Some(1));
}

// ------------------------------------------------ a send dropped during its append

/// An event store whose appends wait for ever while `stall` is set.
#[derive(Clone, Default)]
struct StallingStore {
    inner: MemoryEventStore,
    stall: Arc<AtomicBool>,
}

impl EventStore for StallingStore {
    fn append(&self, streams: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>> {
        let stall = self.stall.load(Ordering::SeqCst);
        Box::pin(async move {
            if stall {
                NEVER.notified().await;
            }
            self.inner.append(streams).await
        })
    }

    fn read_stream(
        &self,
        stream: StreamId,
        after_version: u64,
    ) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>> {
        self.inner.read_stream(stream, after_version)
    }

    fn stream_version(&self, stream: StreamId) -> BoxFuture<'_, Result<u64>> {
        self.inner.stream_version(stream)
    }

    fn locate<'a>(&'a self, ids: &'a [EventId]) -> BoxFuture<'a, Result<Vec<EventLocation>>> {
        self.inner.locate(ids)
    }
}

#[tokio::test(start_paused = true)]
async fn a_send_dropped_during_its_append_leaves_no_tracker_entry() {
    let store = StallingStore::default();
    let rt = Runtime::builder()
        .event_store(store.clone())
        .build()
        .unwrap();
    let scope = rt.scope();
    let stream = Uuid::now_v7();
    store.stall.store(true, Ordering::SeqCst);
    let dropped = tokio::time::timeout(DROP_AFTER, scope.send(NoHang { stream })).await;
    assert!(dropped.is_err(), "the send was still in its append");
    assert_eq!(rt.sync_tracker().tracked_count(), 0, "untracked on drop");
    assert_eq!(stream_len(&rt, stream).await, 0);

    store.stall.store(false, Ordering::SeqCst);
    bounded(scope.send(NoHang { stream })).await.unwrap();
    bounded(scope.complete()).await.unwrap();
    assert_eq!(
        rt.sync_tracker().tracked_count(),
        0,
        "applied, so untracked"
    );
    assert_eq!(
        rt.lens::<HangViews>().get(stream.into()).await.unwrap(),
        Some(1)
    );
}

// ------------------------------------------------ flushes dropped half-way

#[derive(Command, Serialize, Deserialize)]
struct Ship {
    stream: Uuid,
}

#[derive(Event, Serialize, Deserialize)]
struct Shipped {
    #[stream_key]
    stream: Uuid,
}

#[derive(Default)]
struct Shipping;

#[receptor]
impl Receptor<Ship> for Shipping {
    async fn handle(&self, cmd: Ship, cx: &mut Context) -> Result<()> {
        cx.emit(Shipped { stream: cmd.stream })?;
        Ok(())
    }
}

/// The streams the slow stage receptor finished, once per run.
static SLOW_STAGE_DONE: Mutex<Vec<Uuid>> = Mutex::new(Vec::new());

/// A slow inline pre-perspective stage: the flush is dropped while it runs.
#[derive(Default)]
struct SlowInspector;

#[receptor]
#[fire_at(PrePerspectiveInline)]
impl Receptor<Shipped> for SlowInspector {
    async fn handle(&self, e: Shipped, _: &mut Context) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        SLOW_STAGE_DONE.lock().unwrap().push(e.stream);
        Ok(())
    }
}

struct ShippedInline;
#[perspective(model = u32, mode = inline)]
impl ShippedInline {
    fn shipped(m: &mut u32, _: &Shipped) {
        *m += 1;
    }
}

struct ShippedAsync;
#[perspective(model = u32)]
impl ShippedAsync {
    fn shipped(m: &mut u32, _: &Shipped) {
        *m += 1;
    }
}

/// After the runtime is idle, both models hold the event once and the slow
/// stage ran once (resumed, not run again).
async fn assert_flushed_once(rt: &Runtime, stream: Uuid) {
    bounded(rt.wait_idle()).await;
    let inline = rt.lens::<ShippedInline>().get(stream.into()).await.unwrap();
    let async_ = rt.lens::<ShippedAsync>().get(stream.into()).await.unwrap();
    assert_eq!((inline, async_), (Some(1), Some(1)), "both models applied");
    let runs = SLOW_STAGE_DONE
        .lock()
        .unwrap()
        .iter()
        .filter(|s| **s == stream)
        .count();
    assert_eq!(runs, 1, "the stage in progress was resumed, not repeated");
}

#[tokio::test(start_paused = true)]
async fn a_complete_dropped_mid_flush_still_applies_every_perspective() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let stream = Uuid::now_v7();
    bounded(scope.send(Ship { stream })).await.unwrap();
    let dropped = tokio::time::timeout(DROP_AFTER, scope.complete()).await;
    assert!(dropped.is_err(), "complete was still in the slow stage");
    assert!(scope.is_completed());
    assert_flushed_once(&rt, stream).await;
}

#[tokio::test(start_paused = true)]
async fn a_send_and_sync_dropped_mid_flush_still_applies_every_perspective() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let stream = Uuid::now_v7();
    let dropped = tokio::time::timeout(DROP_AFTER, scope.send_and_sync(Ship { stream })).await;
    assert!(
        dropped.is_err(),
        "send_and_sync was still in the slow stage"
    );
    assert_eq!(
        stream_len(&rt, stream).await,
        1,
        "the send itself was stored"
    );
    assert_flushed_once(&rt, stream).await;
    bounded(scope.complete()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_scope_wait_dropped_mid_flush_still_applies_every_perspective() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let stream = Uuid::now_v7();
    bounded(scope.send(Ship { stream })).await.unwrap();
    let awaiter = scope.sync_awaiter();
    let dropped = tokio::time::timeout(
        DROP_AFTER,
        awaiter.wait::<ShippedAsync>(SyncFilter::current_scope()),
    )
    .await;
    assert!(dropped.is_err(), "the wait was still flushing the scope");
    assert_flushed_once(&rt, stream).await;
    bounded(scope.complete()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn send_and_sync_returns_within_its_timeout_while_its_flush_is_slow() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let stream = Uuid::now_v7();
    let timeout = Duration::from_millis(50);
    let started = tokio::time::Instant::now();
    let sent = bounded(scope.send_and_sync_with(
        Ship { stream },
        whizbang_core::PerspectiveSyncOptions::default().timeout(timeout),
    ))
    .await
    .expect("the command's events are stored: the caller gets its output");
    let took = started.elapsed();
    // The slow stage takes 200 ms; the call is bounded by its own timeout.
    assert!(
        took <= timeout + whizbang_core::PerspectiveSyncOptions::SLACK,
        "send_and_sync took {took:?} with a {timeout:?} timeout"
    );
    assert!(!sent.is_synced(), "{:?}", sent.results);
    // The flush goes on without the caller: nothing is lost.
    assert_flushed_once(&rt, stream).await;
    bounded(scope.complete()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn send_and_sync_with_duration_max_waits_as_long_as_it_takes() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let stream = Uuid::now_v7();
    let sent = bounded(scope.send_and_sync_with(
        Ship { stream },
        whizbang_core::PerspectiveSyncOptions::default().timeout(Duration::MAX),
    ))
    .await
    .unwrap();
    assert!(sent.is_synced(), "{:?}", sent.results);
    assert!(sent.results.iter().all(|r| r.timeout == Duration::MAX));
    assert_flushed_once(&rt, stream).await;
    bounded(scope.complete()).await.unwrap();
}

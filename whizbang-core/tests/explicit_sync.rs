//! Explicit sync on the memory backend: named streams, everything, from
//! scratch, deferred and in parallel; per-stream failures that do not fail
//! the run; a run dropped mid-way; tombstones; the sync log and metrics.
//!
//! Events are appended to the event store directly, so nothing but the
//! explicit sync applies them.

mod common;
use common::{bounded, until};

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;
use uuid::Uuid;
use whizbang_core::backend::{EventMetadata, NewEvent, StreamAppend, SyncRunOutcome};
use whizbang_core::{
    perspective, Error, Event, ExpectedVersion, LensQuery, MessageId, Metadata, ModelOp,
    Perspective, Registry, Runtime, StreamId, SyncItem, SyncMode, Tombstone,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "xsync.added")]
struct Added {
    #[stream_key]
    id: Uuid,
    n: i64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "xsync.closed")]
struct Closed {
    #[stream_key]
    id: Uuid,
    purge: bool,
}

/// Handled by no perspective here.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "xsync.noted")]
struct Noted {
    #[stream_key]
    id: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Total {
    sum: i64,
    count: u64,
}

struct Totals;
#[perspective(model = Total, name = "xsync.totals")]
impl Totals {
    fn added(t: &mut Total, e: &Added) {
        t.sum += e.n;
        t.count += 1;
    }
}

/// Multiplies every amount by [`FACTOR`]: changing it is "a new release".
static FACTOR: AtomicI64 = AtomicI64::new(1);

struct Scaled;
#[perspective(model = Total, name = "xsync.scaled")]
impl Scaled {
    fn added(t: &mut Total, e: &Added) {
        t.sum += e.n * FACTOR.load(Ordering::SeqCst);
        t.count += 1;
    }
}

/// While set, an amount of 13 fails to apply.
static UNLUCKY: AtomicBool = AtomicBool::new(true);

struct Picky;
#[perspective(model = Total, name = "xsync.picky")]
impl Picky {
    fn added(t: &mut Total, e: &Added) -> Result<(), String> {
        if e.n == 13 && UNLUCKY.load(Ordering::SeqCst) {
            return Err("13 is unlucky".into());
        }
        t.sum += e.n;
        t.count += 1;
        Ok(())
    }
}

struct Strict;
#[perspective(model = Total, name = "xsync.strict")]
impl Strict {
    fn added(t: &mut Total, e: &Added) -> Result<(), String> {
        if e.n == 13 {
            return Err("13 is never allowed".into());
        }
        t.sum += e.n;
        Ok(())
    }
}

struct Carts;
#[perspective(model = Total, name = "xsync.carts")]
impl Carts {
    fn added(t: &mut Total, e: &Added) {
        t.sum += e.n;
        t.count += 1;
    }
    fn closed(_: &mut Total, _: &Closed) -> Tombstone {
        Tombstone
    }
}

struct MaybeCarts;
#[perspective(model = Total, name = "xsync.maybe_carts")]
impl MaybeCarts {
    fn added(t: &mut Total, e: &Added) {
        t.sum += e.n;
        t.count += 1;
    }
    fn closed(_: &mut Total, e: &Closed) -> Result<ModelOp, String> {
        Ok(if e.purge {
            ModelOp::Delete
        } else {
            ModelOp::Keep
        })
    }
}

fn runtime<P: Perspective>() -> Runtime {
    runtime_of(Registry::builder().perspective::<P>())
}

fn runtime_of(registry: whizbang_core::RegistryBuilder) -> Runtime {
    Runtime::builder()
        .registry(Arc::new(registry.build().unwrap()))
        .build()
        .unwrap()
}

fn new_event(stream: StreamId, event_type: &'static str, data: serde_json::Value) -> NewEvent {
    NewEvent {
        event_id: whizbang_core::EventId::new(),
        stream_id: stream,
        event_type,
        data: serde_json::value::to_raw_value(&data).unwrap(),
        metadata: EventMetadata {
            correlation_id: MessageId::new(),
            causation_id: None,
            timestamp: SystemTime::now(),
            extra: Metadata::default(),
        },
        typed: None,
        outbound: false,
    }
}

async fn append(rt: &Runtime, stream: StreamId, events: Vec<NewEvent>) {
    rt.event_store()
        .append(vec![StreamAppend {
            stream_id: stream,
            expected: ExpectedVersion::Any,
            events,
        }])
        .await
        .unwrap();
}

async fn add(rt: &Runtime, stream: StreamId, amounts: &[i64]) {
    let events = amounts
        .iter()
        .map(|n| {
            new_event(
                stream,
                "xsync.added",
                serde_json::json!({ "id": stream, "n": n }),
            )
        })
        .collect();
    append(rt, stream, events).await;
}

async fn close(rt: &Runtime, stream: StreamId, purge: bool) {
    let data = serde_json::json!({ "id": stream, "purge": purge });
    append(rt, stream, vec![new_event(stream, "xsync.closed", data)]).await;
}

async fn model<P: Perspective<Model = Total>>(rt: &Runtime, stream: StreamId) -> Option<Total> {
    rt.lens::<P>().get(stream).await.unwrap()
}

async fn cursor(rt: &Runtime, name: &str, stream: StreamId) -> whizbang_core::backend::Checkpoint {
    rt.services()
        .perspective_store()
        .checkpoint(name, stream)
        .await
        .unwrap()
}

fn applied(item: Option<&SyncItem>) -> (u64, u64, bool) {
    match item {
        Some(SyncItem::Applied {
            from, to, deleted, ..
        }) => (*from, *to, *deleted),
        other => panic!("expected an applied item, got {other:?}"),
    }
}

#[tokio::test]
async fn named_streams_are_applied_once_and_reported_per_stream() {
    let rt = runtime::<Totals>();
    let (a, b, idle) = (StreamId::new(), StreamId::new(), StreamId::new());
    add(&rt, a, &[1, 2]).await;
    add(&rt, b, &[5]).await;

    let report = bounded(rt.sync::<Totals>().streams([a, b, idle, a]).run())
        .await
        .unwrap();
    assert_eq!(report.perspective, "xsync.totals");
    assert_eq!(report.mode, SyncMode::Streams);
    assert_eq!(report.items.len(), 3, "an id given twice is synced once");
    assert_eq!(applied(report.item(a)), (0, 2, false));
    assert_eq!(applied(report.item(b)), (0, 1, false));
    assert!(matches!(report.item(idle), Some(SyncItem::Skipped { .. })));
    let t = report.totals();
    assert_eq!((t.applied, t.skipped, t.failed), (2, 1, 0));
    assert_eq!(
        model::<Totals>(&rt, a).await,
        Some(Total { sum: 3, count: 2 })
    );

    // Again: nothing to apply, nothing applied twice.
    add(&rt, b, &[7]).await;
    let again = bounded(rt.sync::<Totals>().streams([a, b]).run())
        .await
        .unwrap();
    assert!(matches!(again.item(a), Some(SyncItem::Skipped { .. })));
    assert_eq!(applied(again.item(b)), (1, 2, false));
    assert_eq!(
        model::<Totals>(&rt, b).await,
        Some(Total { sum: 12, count: 2 })
    );
    assert_eq!(
        model::<Totals>(&rt, a).await,
        Some(Total { sum: 3, count: 2 })
    );

    // An empty list is a no-op run.
    let none = bounded(rt.sync::<Totals>().streams(Vec::<StreamId>::new()).run())
        .await
        .unwrap();
    assert!(none.items.is_empty());
}

#[tokio::test]
async fn all_catches_up_every_stream_holding_handled_events() {
    let rt = runtime::<Totals>();
    let (a, b, other) = (StreamId::new(), StreamId::new(), StreamId::new());
    add(&rt, a, &[1]).await;
    add(&rt, b, &[2, 3]).await;
    append(
        &rt,
        other,
        vec![new_event(
            other,
            "xsync.noted",
            serde_json::json!({ "id": other }),
        )],
    )
    .await;

    let report = bounded(rt.sync::<Totals>().all().chunk_size(1).run())
        .await
        .unwrap();
    assert_eq!(report.mode, SyncMode::All);
    assert_eq!(report.items.len(), 2, "{report:?}");
    assert_eq!(applied(report.item(a)), (0, 1, false));
    assert_eq!(applied(report.item(b)), (0, 2, false));
    assert!(
        report.item(other).is_none(),
        "a stream without handled events is not visited"
    );
    assert_eq!(
        model::<Totals>(&rt, b).await,
        Some(Total { sum: 5, count: 2 })
    );
    // `all` is the default.
    let again = bounded(rt.sync::<Totals>().run()).await.unwrap();
    assert_eq!(again.totals().skipped, 2);
}

#[tokio::test]
async fn a_failed_stream_does_not_fail_the_batch_and_stays_failed_until_retried() {
    let rt = runtime::<Picky>();
    let (good, bad) = (StreamId::new(), StreamId::new());
    add(&rt, good, &[1]).await;
    add(&rt, bad, &[2, 13, 4]).await;

    let report = bounded(rt.sync::<Picky>().streams([good, bad]).run())
        .await
        .unwrap();
    assert_eq!(applied(report.item(good)), (0, 1, false));
    match report.item(bad) {
        Some(SyncItem::Failed { error, .. }) => match &**error {
            Error::PerspectiveFailed {
                version, message, ..
            } => {
                assert_eq!(*version, 2);
                assert!(message.contains("unlucky"), "{message}");
            }
            other => panic!("expected PerspectiveFailed, got {other:?}"),
        },
        other => panic!("expected a failed item, got {other:?}"),
    }
    // What applied before the failing event is committed; the cursor is failed there.
    assert_eq!(
        model::<Picky>(&rt, bad).await,
        Some(Total { sum: 2, count: 1 })
    );
    assert_eq!(
        cursor(&rt, "xsync.picky", bad)
            .await
            .failure
            .unwrap()
            .version,
        2
    );

    // Fixed, but not asked to retry: still reported failed, not applied.
    UNLUCKY.store(false, Ordering::SeqCst);
    let again = bounded(rt.sync::<Picky>().streams([bad]).run())
        .await
        .unwrap();
    assert_eq!(again.totals().failed, 1);
    assert_eq!(
        model::<Picky>(&rt, bad).await,
        Some(Total { sum: 2, count: 1 })
    );

    let retried = bounded(rt.sync::<Picky>().streams([bad]).retry_failed().run())
        .await
        .unwrap();
    assert_eq!(applied(retried.item(bad)), (1, 3, false));
    assert_eq!(
        model::<Picky>(&rt, bad).await,
        Some(Total { sum: 19, count: 3 })
    );
    assert!(cursor(&rt, "xsync.picky", bad).await.failure.is_none());
}

#[tokio::test]
async fn full_refolds_every_model_from_scratch() {
    let rt = runtime::<Scaled>();
    let (a, b) = (StreamId::new(), StreamId::new());
    add(&rt, a, &[1, 2]).await;
    add(&rt, b, &[3]).await;
    bounded(rt.sync::<Scaled>().all().run()).await.unwrap();
    assert_eq!(model::<Scaled>(&rt, a).await.unwrap().sum, 3);

    // A new release: incremental sync has nothing to do, a full one refolds.
    FACTOR.store(10, Ordering::SeqCst);
    let incremental = bounded(rt.sync::<Scaled>().all().run()).await.unwrap();
    assert_eq!(incremental.totals().skipped, 2);
    let full = bounded(rt.sync::<Scaled>().streams([a]).full().run())
        .await
        .unwrap();
    assert_eq!(full.mode, SyncMode::FullStreams);
    assert_eq!(applied(full.item(a)), (2, 2, false));
    assert_eq!(
        model::<Scaled>(&rt, a).await,
        Some(Total { sum: 30, count: 2 })
    );
    assert_eq!(
        model::<Scaled>(&rt, b).await.unwrap().sum,
        3,
        "not named, not refolded"
    );

    let all = bounded(rt.sync::<Scaled>().all().full().run())
        .await
        .unwrap();
    assert_eq!(all.mode, SyncMode::FullAll);
    assert_eq!(all.totals().applied, 2);
    assert_eq!(
        model::<Scaled>(&rt, b).await,
        Some(Total { sum: 30, count: 1 })
    );
    assert_eq!(cursor(&rt, "xsync.scaled", b).await.version, 1);
}

#[tokio::test]
async fn deferred_sync_runs_to_the_end_even_when_its_handle_is_dropped() {
    let rt = runtime::<Totals>();
    let (a, b) = (StreamId::new(), StreamId::new());
    add(&rt, a, &[4]).await;
    add(&rt, b, &[6]).await;

    let handle = rt.sync::<Totals>().streams([a]).deferred();
    let report = bounded(handle).await.unwrap();
    assert_eq!(applied(report.item(a)), (0, 1, false));

    drop(rt.sync::<Totals>().streams([b]).deferred());
    let store = Arc::clone(rt.services().perspective_store());
    until(move || futures_now(store.load_model("xsync.totals", b)).is_some_and(|m| m.is_some()))
        .await;
    assert_eq!(
        model::<Totals>(&rt, b).await,
        Some(Total { sum: 6, count: 1 })
    );
}

/// The value of a memory store's future, which is ready at once.
fn futures_now<T>(f: whizbang_core::backend::BoxFuture<'_, whizbang_core::Result<T>>) -> Option<T> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = f;
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r.ok(),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test]
async fn several_perspectives_sync_in_parallel_in_one_call() {
    let rt = runtime_of(
        Registry::builder()
            .perspective::<Totals>()
            .perspective::<Carts>(),
    );
    let a = StreamId::new();
    add(&rt, a, &[2, 3]).await;
    let results = bounded(rt.sync_many([
        rt.sync::<Totals>().streams([a]),
        rt.sync::<Carts>().all(),
        rt.sync_named("xsync.no_such_perspective"),
    ]))
    .await;
    assert_eq!(results.len(), 3);
    let totals = results[0].as_ref().unwrap();
    let carts = results[1].as_ref().unwrap();
    assert_eq!(
        (totals.perspective, carts.perspective),
        ("xsync.totals", "xsync.carts")
    );
    assert_eq!(model::<Totals>(&rt, a).await.unwrap().sum, 5);
    assert_eq!(model::<Carts>(&rt, a).await.unwrap().sum, 5);
    assert!(matches!(
        &results[2],
        Err(Error::UnknownPerspective { name }) if name == "xsync.no_such_perspective"
    ));
}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let rt = runtime::<Totals>();
    let err = rt.sync::<Carts>().run().await.unwrap_err();
    assert!(matches!(err, Error::UnknownPerspective { ref name } if name == "xsync.carts"));
    let err = rt.sync::<Totals>().chunk_size(0).run().await.unwrap_err();
    assert!(
        common::invalid_input(&err).contains("chunk size of 0"),
        "{err}"
    );
}

#[tokio::test]
async fn a_run_dropped_midway_leaves_every_model_old_or_new() {
    let rt = runtime::<Totals>();
    let mut streams = [StreamId::new(), StreamId::new(), StreamId::new()];
    streams.sort();
    let [first, held, last] = streams;
    for s in streams {
        add(&rt, s, &[1, 1]).await;
    }
    // Another unit holds the middle model: the run cannot finish. (The
    // memory store claims the streams of one chunk together, so it waits
    // before applying any; a store claiming one at a time applies the first.)
    let store = Arc::clone(rt.services().perspective_store());
    let claim = store.claim("xsync.totals", held).await.unwrap();
    {
        let run = rt.sync::<Totals>().streams(streams).run();
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => panic!("the run cannot finish while a model is held"),
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
        // Dropped here, mid-way.
    }
    drop(claim);
    // Every model is old (none, cursor 0) or new (both events), never half.
    let mut untouched = 0;
    for s in streams {
        match model::<Totals>(&rt, s).await {
            None => {
                assert_eq!(cursor(&rt, "xsync.totals", s).await.version, 0);
                untouched += 1;
            }
            Some(total) => assert_eq!(total, Total { sum: 2, count: 2 }),
        }
    }
    assert!(untouched >= 2, "the held model and the one after it");
    let rest = bounded(rt.sync::<Totals>().streams(streams).run())
        .await
        .unwrap();
    assert_eq!(rest.totals().applied, untouched);
    for s in [first, held, last] {
        assert_eq!(
            model::<Totals>(&rt, s).await,
            Some(Total { sum: 2, count: 2 })
        );
    }
}

#[tokio::test]
async fn a_tombstone_deletes_the_model_and_keeps_the_cursor() {
    let rt = runtime::<Carts>();
    let (cart, kept) = (StreamId::new(), StreamId::new());
    add(&rt, cart, &[5, 6]).await;
    add(&rt, kept, &[1]).await;
    bounded(rt.sync::<Carts>().all().run()).await.unwrap();
    assert!(model::<Carts>(&rt, cart).await.is_some());

    close(&rt, cart, true).await;
    let report = bounded(rt.sync::<Carts>().streams([cart]).run())
        .await
        .unwrap();
    assert_eq!(applied(report.item(cart)), (2, 3, true));
    assert_eq!(
        model::<Carts>(&rt, cart).await,
        None,
        "the lens sees no model"
    );
    assert_eq!(
        cursor(&rt, "xsync.carts", cart).await.version,
        3,
        "the cursor stays"
    );
    let listed = rt
        .lens::<Carts>()
        .list(whizbang_core::ListQuery::all())
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|m| m.id).collect::<Vec<_>>(), vec![kept]);
    // Syncing again applies nothing: the deleting event is not re-applied.
    let again = bounded(rt.sync::<Carts>().streams([cart]).run())
        .await
        .unwrap();
    assert!(matches!(again.item(cart), Some(SyncItem::Skipped { .. })));

    // A later event starts a fresh model from `Default`.
    add(&rt, cart, &[9]).await;
    bounded(rt.sync::<Carts>().streams([cart]).run())
        .await
        .unwrap();
    assert_eq!(
        model::<Carts>(&rt, cart).await,
        Some(Total { sum: 9, count: 1 })
    );
    assert_eq!(cursor(&rt, "xsync.carts", cart).await.version, 4);

    // A full refold ends the same way; a fold ending deleted deletes.
    let full = bounded(rt.sync::<Carts>().streams([cart]).full().run())
        .await
        .unwrap();
    assert_eq!(applied(full.item(cart)), (4, 4, false));
    assert_eq!(
        model::<Carts>(&rt, cart).await,
        Some(Total { sum: 9, count: 1 })
    );
    close(&rt, cart, true).await;
    let full = bounded(rt.sync::<Carts>().streams([cart]).full().run())
        .await
        .unwrap();
    assert_eq!(applied(full.item(cart)), (4, 5, true));
    assert_eq!(model::<Carts>(&rt, cart).await, None);
    // The live fold agrees: after the tombstone the model is a fresh one.
    assert_eq!(
        rt.aggregate::<Carts>(cart).await.unwrap().model,
        Total::default()
    );
}

#[tokio::test]
async fn an_apply_may_decide_to_delete_at_run_time() {
    let rt = runtime::<MaybeCarts>();
    let (purged, closed) = (StreamId::new(), StreamId::new());
    for s in [purged, closed] {
        add(&rt, s, &[3]).await;
    }
    close(&rt, purged, true).await;
    close(&rt, closed, false).await;
    let report = bounded(rt.sync::<MaybeCarts>().all().run()).await.unwrap();
    assert_eq!(applied(report.item(purged)), (0, 2, true));
    assert_eq!(applied(report.item(closed)), (0, 2, false));
    assert_eq!(model::<MaybeCarts>(&rt, purged).await, None);
    assert_eq!(
        model::<MaybeCarts>(&rt, closed).await,
        Some(Total { sum: 3, count: 1 })
    );
}

#[tokio::test]
async fn every_run_is_logged_newest_first() {
    let rt = runtime::<Strict>();
    let (a, b) = (StreamId::new(), StreamId::new());
    add(&rt, a, &[1]).await;
    add(&rt, b, &[13]).await;
    bounded(rt.sync::<Strict>().streams([a]).run())
        .await
        .unwrap();
    bounded(rt.sync::<Strict>().streams([a, b]).run())
        .await
        .unwrap();

    let log = rt.sync_log(10).await.unwrap();
    assert_eq!(log.len(), 2);
    let (newest, oldest) = (&log[0], &log[1]);
    assert_eq!(newest.perspective, "xsync.strict");
    assert_eq!(newest.mode, "streams");
    assert!(
        newest.target.starts_with("2 streams: "),
        "{}",
        newest.target
    );
    assert_eq!((oldest.applied, oldest.skipped, oldest.failed), (1, 0, 0));
    assert_eq!(oldest.outcome, SyncRunOutcome::Succeeded);
    assert_eq!((newest.applied, newest.skipped, newest.failed), (0, 1, 1));
    assert_eq!(newest.outcome, SyncRunOutcome::PartiallyFailed);
    assert!(newest.duration >= std::time::Duration::ZERO && newest.started_at >= oldest.started_at);
    assert_eq!(rt.sync_log(1).await.unwrap().len(), 1);
}

// ---- metrics ---------------------------------------------------------------------------

/// Every metric written, as (name, labels, value).
type Written = Mutex<Vec<(String, Vec<(String, String)>, f64)>>;

struct Recorded {
    key: metrics::Key,
    written: &'static Written,
}

impl Recorded {
    fn push(&self, value: f64) {
        let labels = self
            .key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        self.written
            .lock()
            .unwrap()
            .push((self.key.name().to_owned(), labels, value));
    }
}

impl metrics::CounterFn for Recorded {
    fn increment(&self, value: u64) {
        self.push(value as f64);
    }
    fn absolute(&self, value: u64) {
        self.push(value as f64);
    }
}

impl metrics::HistogramFn for Recorded {
    fn record(&self, value: f64) {
        self.push(value);
    }
}

impl metrics::GaugeFn for Recorded {
    fn increment(&self, value: f64) {
        self.push(value);
    }
    fn decrement(&self, value: f64) {
        self.push(-value);
    }
    fn set(&self, value: f64) {
        self.push(value);
    }
}

/// A recorder keeping everything in memory.
struct TestRecorder(&'static Written);

impl TestRecorder {
    fn recorded(&self, key: &metrics::Key) -> Arc<Recorded> {
        Arc::new(Recorded {
            key: key.clone(),
            written: self.0,
        })
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.recorded(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.recorded(key))
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.recorded(key))
    }
}

/// The metrics written so far (the recorder is installed once, globally).
fn written() -> &'static Written {
    static WRITTEN: OnceLock<&'static Written> = OnceLock::new();
    WRITTEN.get_or_init(|| {
        let written: &'static Written = Box::leak(Box::default());
        metrics::set_global_recorder(TestRecorder(written)).expect("the only recorder");
        written
    })
}

#[tokio::test]
async fn every_run_emits_metrics_labelled_by_perspective_and_mode() {
    let written = written();
    let rt = runtime::<Scaled>();
    let (a, b) = (StreamId::new(), StreamId::new());
    add(&rt, a, &[1]).await;
    bounded(rt.sync::<Scaled>().streams([a, b]).run())
        .await
        .unwrap();

    let ours: Vec<_> = written
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, labels, _)| {
            labels.contains(&("perspective".into(), "xsync.scaled".into()))
                && labels.contains(&("mode".into(), "streams".into()))
        })
        .cloned()
        .collect();
    let value = |name: &str| {
        ours.iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
            .sum::<f64>()
    };
    assert_eq!(value("whizbang_sync_runs_total"), 1.0);
    assert_eq!(value("whizbang_sync_applied_total"), 1.0);
    assert_eq!(value("whizbang_sync_skipped_total"), 1.0);
    assert_eq!(value("whizbang_sync_failed_total"), 0.0);
    assert!(ours
        .iter()
        .any(|(n, labels, _)| n == "whizbang_sync_runs_total"
            && labels.contains(&("outcome".into(), "succeeded".into()))));
    assert_eq!(
        ours.iter()
            .filter(|(n, _, _)| n == "whizbang_sync_duration_seconds")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_waiter_on_the_events_ends_synced_once_an_explicit_sync_applies_them() {
    let rt = runtime::<Totals>();
    rt.runner().pause(); // only the explicit sync applies
    let stream = StreamId::new();
    let data = serde_json::json!({ "id": stream, "n": 4 });
    let stored = rt
        .event_store()
        .append(vec![StreamAppend {
            stream_id: stream,
            expected: ExpectedVersion::Any,
            events: vec![new_event(stream, "xsync.added", data)],
        }])
        .await
        .unwrap();
    let awaiter = rt.sync_awaiter();
    let filter = whizbang_core::SyncFilter::event_ids([stored[0].event_id]);
    let wait = tokio::spawn(async move {
        awaiter
            .wait::<Totals>(filter.with_timeout(common::BOUND))
            .await
    });
    bounded(rt.sync::<Totals>().streams([stream]).run())
        .await
        .unwrap();
    let result = bounded(wait).await.unwrap().unwrap();
    assert!(result.is_synced(), "{result:?}");
    assert_eq!(
        model::<Totals>(&rt, stream).await,
        Some(Total { sum: 4, count: 1 })
    );
}

#[tokio::test]
async fn an_event_the_perspective_does_not_handle_leaves_a_deleted_model_deleted() {
    let rt = runtime::<Carts>();
    let cart = StreamId::new();
    add(&rt, cart, &[1]).await;
    close(&rt, cart, true).await;
    let noted = new_event(cart, "xsync.noted", serde_json::json!({ "id": cart }));
    append(&rt, cart, vec![noted]).await;
    let report = bounded(rt.sync::<Carts>().streams([cart]).run())
        .await
        .unwrap();
    assert_eq!(applied(report.item(cart)), (0, 3, true));
    assert_eq!(model::<Carts>(&rt, cart).await, None);
    assert_eq!(cursor(&rt, "xsync.carts", cart).await.version, 3);
}

#[tokio::test]
async fn a_tombstone_before_a_failing_event_stands_and_the_cursor_fails_after_it() {
    let rt = runtime::<Carts>();
    let cart = StreamId::new();
    add(&rt, cart, &[5]).await;
    close(&rt, cart, true).await;
    // Version 3 does not decode: `n` is not a number.
    let bad = serde_json::json!({ "id": cart, "n": "five" });
    append(&rt, cart, vec![new_event(cart, "xsync.added", bad)]).await;

    let report = bounded(rt.sync::<Carts>().streams([cart]).run())
        .await
        .unwrap();
    assert!(
        matches!(report.item(cart), Some(SyncItem::Failed { .. })),
        "{report:?}"
    );
    // The model is deleted as of version 2 (not a `Default` one), and the
    // cursor stands after the tombstone, failed at version 3.
    assert_eq!(model::<Carts>(&rt, cart).await, None);
    let at = cursor(&rt, "xsync.carts", cart).await;
    assert_eq!(at.version, 2);
    assert_eq!(at.failure.map(|f| f.version), Some(3));
}

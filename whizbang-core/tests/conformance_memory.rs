//! The backend conformance suite against the memory stores, in both model
//! formats, and the JSON path end to end: a runtime on stores that keep only
//! JSON applies, reads and waits like one on typed stores.

mod common;
use common::bounded;

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::backend::conformance;
use whizbang_core::backend::conformance::Stores;
use whizbang_core::backend::{
    ApplyReport, Checkpoint, ModelValue, PerspectiveStore, StoredEvent, WakeupSink,
};
use whizbang_core::backend::{BoxFuture, ModelKey, ModelRow, PerspectiveUnit};
use whizbang_core::backend::{MemoryEventStore, MemoryPerspectiveStore};
use whizbang_core::perspective::ApplyError;
use whizbang_core::registry::{PerspectiveRegistration, Registry};
use whizbang_core::sync::PerspectiveSyncOptions;
use whizbang_core::{
    perspective, receptor, Command, Context, Error, Event, LensQuery, ListQuery, Perspective,
    PerspectiveMode, Receptor, Result, Runtime, StreamId, SyncFilter, SyncOutcome,
};

/// The memory stores keeping typed payloads and typed models.
mod typed {
    use super::*;
    whizbang_core::conformance_tests!(|| async {
        Stores::new(MemoryEventStore::new(), MemoryPerspectiveStore::new())
    });
}

/// The memory stores keeping only JSON, as a database does.
mod json {
    use super::*;
    whizbang_core::conformance_tests!(|| async {
        Stores::new(MemoryEventStore::json(), MemoryPerspectiveStore::json())
    });
}

#[tokio::test]
async fn run_all_passes_on_one_shared_pair_of_stores() {
    // Contracts use their own ids, so one pair of stores carries them all.
    let stores = Stores::new(MemoryEventStore::json(), MemoryPerspectiveStore::json());
    whizbang_core::backend::conformance::run_all(&move || {
        let s = stores.clone();
        async move { s }
    })
    .await;
}

// ---- The JSON path end to end ------------------------------------------------------

#[derive(Command, Serialize, Deserialize)]
#[command(output = ())]
struct Tick {
    counter: Uuid,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "conformance_memory.ticked")]
struct Ticked {
    #[stream_key]
    counter: Uuid,
}

#[derive(Default)]
struct Ticker;

#[receptor]
impl Receptor<Tick> for Ticker {
    async fn handle(&self, cmd: Tick, cx: &mut Context) -> Result<()> {
        cx.emit(Ticked {
            counter: cmd.counter,
        })?;
        Ok(())
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Count {
    ticks: u64,
}

struct InlineCounts;

#[perspective(model = Count, name = "conformance_memory.inline", mode = inline)]
impl InlineCounts {
    fn ticked(m: &mut Count, _e: &Ticked) {
        m.ticks += 1;
    }
}

struct AsyncCounts;

#[perspective(model = Count, name = "conformance_memory.async")]
impl AsyncCounts {
    fn ticked(m: &mut Count, _e: &Ticked) {
        m.ticks += 1;
    }
}

/// A runtime on stores that keep only JSON, and a handle on its perspective store.
fn json_runtime() -> (Runtime, MemoryPerspectiveStore) {
    let models = MemoryPerspectiveStore::json();
    let rt = Runtime::builder()
        .event_store(MemoryEventStore::json())
        .perspective_store(models.clone())
        .build()
        .unwrap();
    (rt, models)
}

#[tokio::test(start_paused = true)]
async fn a_runtime_on_json_stores_applies_commits_json_and_lenses_decode_it() {
    let (rt, models) = json_runtime();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let scope = rt.scope();
    for counter in [a, a, b] {
        scope.send(Tick { counter }).await.unwrap();
    }
    bounded(scope.complete()).await.unwrap();

    // Inline: committed as JSON, decoded by the lens.
    let row = models
        .load_model("conformance_memory.inline", a.into())
        .await
        .unwrap()
        .unwrap();
    match &row.model {
        ModelValue::Json(j) => assert_eq!(j.get(), r#"{"ticks":2}"#),
        ModelValue::Typed(_) => panic!("a JSON store was handed a typed model"),
    }
    let lens = rt.lens::<InlineCounts>();
    assert_eq!(lens.get(a.into()).await.unwrap(), Some(Count { ticks: 2 }));
    assert_eq!(
        lens.get_versioned(b.into()).await.unwrap(),
        Some((Count { ticks: 1 }, 1))
    );

    // Async: the runner decodes the stored JSON event and model, applies, and
    // commits JSON; a read-your-writes wait and the lens list see it.
    let synced = bounded(
        rt.sync_awaiter()
            .wait::<AsyncCounts>(SyncFilter::for_stream(a).with_timeout(Duration::from_secs(2))),
    )
    .await
    .unwrap();
    assert_eq!(synced.outcome, SyncOutcome::Synced);
    bounded(rt.wait_idle()).await;
    let mut listed = rt
        .lens::<AsyncCounts>()
        .list(ListQuery::all())
        .await
        .unwrap()
        .into_iter()
        .map(whizbang_core::Versioned::into_inner)
        .collect::<Vec<_>>();
    listed.sort_by_key(|c| c.ticks);
    assert_eq!(listed, vec![Count { ticks: 1 }, Count { ticks: 2 }]);
    let stored = models
        .load_model("conformance_memory.async", a.into())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(stored.model, ModelValue::Json(_)));
}

#[tokio::test(start_paused = true)]
async fn a_json_event_store_keeps_no_typed_payload_and_perspectives_still_apply() {
    let events = MemoryEventStore::json();
    let rt = Runtime::builder()
        .event_store(events.clone())
        .build()
        .unwrap();
    let counter = Uuid::now_v7();
    let scope = rt.scope();
    scope.send(Tick { counter }).await.unwrap();
    bounded(scope.complete()).await.unwrap();
    assert!(events.all_events().iter().all(|e| e.typed.is_none()));
    assert_eq!(
        rt.lens::<InlineCounts>().get(counter.into()).await.unwrap(),
        Some(Count { ticks: 1 })
    );
}

// ---- A model that cannot be stored as JSON ----------------------------------------

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "conformance_memory.paired")]
struct Paired {
    #[stream_key]
    id: Uuid,
    left: u8,
    right: u8,
}

/// Its `Default` round-trips (an empty map), but a map with tuple keys does not
/// serialise to JSON.
#[derive(Default, Clone, Serialize, Deserialize, Debug)]
struct Pairs {
    seen: HashMap<(u8, u8), u64>,
}

struct PairViews;

#[perspective(model = Pairs, name = "conformance_memory.pairs", mode = inline)]
impl PairViews {
    fn paired(m: &mut Pairs, e: &Paired) {
        *m.seen.entry((e.left, e.right)).or_default() += 1;
    }
}

#[tokio::test(start_paused = true)]
async fn a_model_that_does_not_serialise_fails_its_cursor_with_a_sentence_and_commits_nothing() {
    let (rt, models) = json_runtime();
    let id = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(Paired {
            id,
            left: 1,
            right: 2,
        })
        .await
        .unwrap();
    match bounded(scope.complete()).await {
        Err(Error::PerspectiveFailed {
            perspective,
            version,
            message,
            ..
        }) => {
            assert_eq!((perspective, version), ("conformance_memory.pairs", 1));
            assert!(message.contains("does not serialise to JSON"), "{message}");
            assert!(message.contains("then retry"), "{message}");
        }
        other => panic!("expected PerspectiveFailed, got {other:?}"),
    }
    let cp = models
        .checkpoint("conformance_memory.pairs", id.into())
        .await
        .unwrap();
    assert_eq!(cp.version, 0, "nothing of the batch is committed");
    assert_eq!(cp.failure.map(|f| f.version), Some(1));
    assert!(rt
        .lens::<PairViews>()
        .get(id.into())
        .await
        .unwrap()
        .is_none());
}

/// Written by hand (not registered in the binary): its model's `Default`
/// serialises to `null` and so cannot be read back.
struct NanViews;

#[derive(Clone, Serialize, Deserialize, Debug)]
struct Nan {
    value: f64,
}

impl Default for Nan {
    fn default() -> Self {
        Nan { value: f64::NAN }
    }
}

impl Perspective for NanViews {
    type Model = Nan;
    const NAME: &'static str = "conformance_memory.nan";
    const MODE: PerspectiveMode = PerspectiveMode::Async;
    const EVENT_TYPES: &'static [&'static str] = &[];
    fn event_type_ids() -> Vec<std::any::TypeId> {
        Vec::new()
    }
    fn apply(_: &mut Nan, _: &StoredEvent) -> std::result::Result<bool, ApplyError> {
        Ok(false)
    }
}

static NAN_VIEWS: PerspectiveRegistration =
    PerspectiveRegistration::of::<NanViews>("NanViews", module_path!());

#[tokio::test]
async fn build_refuses_a_json_store_for_a_model_that_does_not_round_trip() {
    let registry = || Arc::new(Registry::from_parts([], [&NAN_VIEWS], []).unwrap());
    let err = Runtime::builder()
        .registry(registry())
        .perspective_store(MemoryPerspectiveStore::json())
        .build()
        .unwrap_err();
    match &err {
        Error::ModelNotJson { perspective, .. } => {
            assert_eq!(*perspective, "conformance_memory.nan");
        }
        other => panic!("expected ModelNotJson, got {other:?}"),
    }
    assert!(
        err.to_string().contains("the runtime was not built"),
        "{err}"
    );
    // A store that keeps typed models can hold it.
    Runtime::builder()
        .registry(registry())
        .perspective_store(MemoryPerspectiveStore::new())
        .build()
        .unwrap();
}

// ---- Wake-ups both ways ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn apply_listeners_hear_every_local_commit_and_a_panicking_one_breaks_nothing() {
    let heard: Arc<Mutex<Vec<ApplyReport>>> = Arc::default();
    let log = Arc::clone(&heard);
    let rt = Runtime::builder()
        .apply_listener(|_: &ApplyReport| panic!("a listener with a bug"))
        .apply_listener(move |r: &ApplyReport| log.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    let counter = Uuid::now_v7();
    let scope = rt.scope();
    scope.send(Tick { counter }).await.unwrap();
    bounded(scope.complete()).await.unwrap();
    bounded(rt.wait_idle()).await;
    let heard = heard.lock().unwrap().clone();
    let mut perspectives: Vec<&str> = heard
        .iter()
        .filter(|r| r.stream == StreamId::from(counter))
        .map(|r| r.perspective)
        .collect();
    perspectives.sort_unstable();
    assert_eq!(
        perspectives,
        vec!["conformance_memory.async", "conformance_memory.inline"]
    );
    assert!(heard.iter().all(|r| r.version == 1 && r.applied.len() == 1));
    assert_eq!(
        rt.lens::<InlineCounts>().get(counter.into()).await.unwrap(),
        Some(Count { ticks: 1 }),
        "the commit stands after a listener panicked"
    );
}

/// Appends a `Ticked` straight to the store (as another process would),
/// parks a wait for `AsyncCounts` on it that would re-ask only after an hour,
/// applies it "elsewhere" by committing to the shared perspective store, and
/// feeds the report in with `wake`. The wait must end at once.
async fn woken_by(wake: impl FnOnce(&Runtime, &ApplyReport)) {
    use whizbang_core::backend::{EventMetadata, EventStore, NewEvent, StreamAppend};
    let events = MemoryEventStore::new();
    let models = MemoryPerspectiveStore::new();
    let rt = Runtime::builder()
        .event_store(events.clone())
        .perspective_store(models.clone())
        .build()
        .unwrap();
    // This runtime's runner would apply what the wait finds; the apply is
    // "another process's" here.
    rt.runner().pause();
    let counter = Uuid::now_v7();
    let stream = StreamId::from(counter);
    let stored = events
        .append(vec![StreamAppend {
            stream_id: stream,
            expected: whizbang_core::ExpectedVersion::NoStream,
            events: vec![NewEvent {
                event_id: whizbang_core::EventId::new(),
                stream_id: stream,
                event_type: "conformance_memory.ticked",
                data: serde_json::value::to_raw_value(&Ticked { counter }).unwrap(),
                metadata: EventMetadata {
                    correlation_id: whizbang_core::MessageId::new(),
                    causation_id: None,
                    timestamp: std::time::SystemTime::now(),
                    extra: whizbang_core::Metadata::default(),
                },
                typed: None,
                outbound: false,
            }],
        }])
        .await
        .unwrap();
    let hour = Duration::from_secs(3600);
    let awaiter = rt.sync_awaiter();
    let wait = tokio::spawn(async move {
        awaiter
            .wait::<AsyncCounts>(
                PerspectiveSyncOptions::new(SyncFilter::for_stream(counter))
                    .reask_backoff(hour, hour)
                    .timeout(2 * hour)
                    .debugger_aware(false),
            )
            .await
    });
    // Paused time moves only when every task is idle: the wait has parked.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!wait.is_finished(), "the event is not applied yet");
    let unit = models
        .claim("conformance_memory.async", stream)
        .await
        .unwrap();
    unit.commit(
        Some(ModelValue::Typed(Box::new(Count { ticks: 1 }))),
        Checkpoint {
            version: 1,
            ..Checkpoint::default()
        },
    )
    .await
    .unwrap();
    let report = ApplyReport::new(
        "conformance_memory.async",
        stream,
        1,
        vec![stored[0].event_id],
    );
    wake(&rt, &report);
    let result = tokio::time::timeout(Duration::from_secs(1), wait)
        .await
        .expect("the wake-up ends the wait at once, not at the next re-ask")
        .unwrap()
        .unwrap();
    assert_eq!(result.outcome, SyncOutcome::Synced);
}

#[tokio::test(start_paused = true)]
async fn notify_applied_wakes_local_waiters_for_a_commit_made_elsewhere() {
    woken_by(|rt, report| rt.notify_applied(report)).await;
}

#[tokio::test(start_paused = true)]
async fn a_wakeup_sink_wakes_local_waiters_and_says_when_the_runtime_is_gone() {
    woken_by(|rt, report| assert!(rt.wakeup_sink().notify(report))).await;
    let rt = Runtime::in_memory().unwrap();
    let sink: WakeupSink = rt.wakeup_sink();
    let report = ApplyReport::new("conformance_memory.async", StreamId::new(), 1, Vec::new());
    assert!(sink.clone().notify(&report));
    drop(rt);
    assert!(
        !sink.notify(&report),
        "a sink must not keep the runtime alive"
    );
}

// ---- The suite catches broken backends --------------------------------------------

/// A perspective store with two bugs on demand: claims alternate between two
/// inner stores (so a second claim never waits), or lists come in reverse order.
#[derive(Clone, Default)]
struct Broken {
    inner: [MemoryPerspectiveStore; 2],
    claims: Arc<std::sync::atomic::AtomicUsize>,
    non_exclusive: bool,
    reversed: bool,
}

impl PerspectiveStore for Broken {
    fn model_format(&self) -> whizbang_core::backend::ModelFormat {
        self.inner[0].model_format()
    }
    fn claim<'a>(
        &'a self,
        perspective: &'static str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Box<dyn PerspectiveUnit>>> {
        let n = self
            .claims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let i = if self.non_exclusive { n % 2 } else { 0 };
        self.inner[i].claim(perspective, key)
    }
    fn checkpoint<'a>(
        &'a self,
        perspective: &'a str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Checkpoint>> {
        self.inner[0].checkpoint(perspective, key)
    }
    fn load_model<'a>(
        &'a self,
        perspective: &'a str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Option<ModelRow>>> {
        self.inner[0].load_model(perspective, key)
    }
    fn list_models<'a>(&'a self, perspective: &'a str) -> BoxFuture<'a, Result<Vec<ModelRow>>> {
        let reversed = self.reversed;
        let rows = self.inner[0].list_models(perspective);
        Box::pin(async move {
            let mut rows = rows.await?;
            if reversed {
                rows.reverse();
            }
            Ok(rows)
        })
    }
}

fn broken(b: Broken) -> impl conformance::BackendFactory {
    move || {
        let b = b.clone();
        async move { Stores::new(MemoryEventStore::new(), b) }
    }
}

#[test]
#[should_panic(expected = "must wait while the first unit is held")]
fn the_suite_catches_a_store_whose_claims_are_not_exclusive() {
    let factory = broken(Broken {
        non_exclusive: true,
        ..Broken::default()
    });
    conformance::block_on(conformance::a_second_claim_waits_until_the_first_unit_commits(&factory));
}

#[test]
#[should_panic(expected = "list_models must order models by key")]
fn the_suite_catches_a_store_that_lists_out_of_order() {
    let factory = broken(Broken {
        reversed: true,
        ..Broken::default()
    });
    conformance::block_on(
        conformance::list_models_is_ordered_by_key_and_leaves_out_keys_without_a_model(&factory),
    );
}

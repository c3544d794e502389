//! Failures in user code during a catch-up: a panic anywhere in a
//! perspective's code (model construction included) marks its cursor failed
//! and wakes its waiters without taking down the runner.

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::store::memory::MemoryPerspectiveStore;
use whizbang_core::store::{BoxFuture, Checkpoint, ModelRow, PerspectiveStore, PerspectiveUnit};
use whizbang_core::{
    perspective, Error, Event, LensQuery, Runtime, StreamId, SyncFilter, SyncOutcome,
};

// ---- A model whose `Default` panics ------------------------------------------------

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "failures.poked")]
struct Poked {
    #[stream_key]
    target: Uuid,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "failures.nudged")]
struct Nudged {
    #[stream_key]
    target: Uuid,
}

#[derive(Clone, Serialize, Deserialize, Debug)]
struct Fragile {
    pokes: u64,
}

impl Default for Fragile {
    fn default() -> Self {
        panic!("Fragile cannot be defaulted")
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug)]
struct Tally {
    pokes: u64,
}

/// Async, and its model cannot be constructed.
struct FragileView;

#[perspective(model = Fragile, name = "failures.fragile")]
impl FragileView {
    fn poked(m: &mut Fragile, _e: &Poked) {
        m.pokes += 1;
    }
}

/// Inline, and its model cannot be constructed.
struct FragileInline;

#[perspective(model = Fragile, name = "failures.fragile_inline", mode = inline)]
impl FragileInline {
    fn nudged(m: &mut Fragile, _e: &Nudged) {
        m.pokes += 1;
    }
}

/// Healthy, over the same events as `FragileView`.
struct TallyView;

#[perspective(model = Tally, name = "failures.tally")]
impl TallyView {
    fn poked(m: &mut Tally, _e: &Poked) {
        m.pokes += 1;
    }
}

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("did not finish in time")
}

async fn checkpoint(rt: &Runtime, perspective: &str, s: Uuid) -> Checkpoint {
    rt.services()
        .perspective_store()
        .checkpoint(perspective, s.into())
        .await
        .unwrap()
}

// ---- Item 3: panics outside apply ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_model_whose_default_panics_fails_its_cursor_and_the_runner_goes_on() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Poked { target: a }).await.unwrap();

    let result = bounded(
        scope
            .sync_awaiter()
            .wait::<FragileView>(SyncFilter::current_scope().with_timeout(Duration::from_secs(5))),
    )
    .await
    .unwrap();
    match &result.outcome {
        SyncOutcome::Failed {
            stream,
            version,
            message,
        } => {
            assert_eq!((*stream, *version), (StreamId::from(a), 1));
            assert!(message.contains("Fragile cannot be defaulted"), "{message}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // The runner task survived and counted its work down.
    bounded(rt.wait_idle()).await;
    let cp = checkpoint(&rt, "failures.fragile", a).await;
    assert_eq!(cp.version, 0);
    let failure = cp.failure.expect("the cursor is marked failed");
    assert_eq!(failure.version, 1);
    assert!(failure.message.contains("panicked"), "{}", failure.message);

    // Another perspective over the same event applied.
    assert_eq!(
        rt.lens::<TallyView>()
            .get(a.into())
            .await
            .unwrap()
            .unwrap()
            .pokes,
        1
    );
    // The runner still runs: later work on another stream applies.
    let b = Uuid::now_v7();
    let later = rt.scope();
    later.publish(Poked { target: b }).await.unwrap();
    let synced = bounded(
        later
            .sync_awaiter()
            .wait::<TallyView>(SyncFilter::current_scope().with_timeout(Duration::from_secs(5))),
    )
    .await
    .unwrap();
    assert_eq!(synced.outcome, SyncOutcome::Synced);
    bounded(later.complete()).await.unwrap();
    bounded(scope.complete()).await.unwrap();
    bounded(rt.wait_idle()).await;
}

#[tokio::test(start_paused = true)]
async fn a_model_whose_default_panics_in_an_inline_perspective_is_an_error_not_a_panic() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Nudged { target: a }).await.unwrap();
    let err = bounded(scope.complete()).await.unwrap_err();
    match &err {
        Error::PerspectiveFailed {
            perspective,
            version,
            message,
            ..
        } => {
            assert_eq!((*perspective, *version), ("failures.fragile_inline", 1));
            assert!(message.contains("Fragile cannot be defaulted"), "{message}");
        }
        other => panic!("expected PerspectiveFailed, got {other:?}"),
    }
    bounded(rt.wait_idle()).await;
}

/// A perspective store with a bug: claiming for `failures.tally` panics.
#[derive(Clone, Default)]
struct PanickyStore {
    inner: MemoryPerspectiveStore,
}

impl PerspectiveStore for PanickyStore {
    fn claim<'a>(
        &'a self,
        perspective: &'static str,
        stream: StreamId,
    ) -> BoxFuture<'a, whizbang_core::Result<Box<dyn PerspectiveUnit>>> {
        if perspective == "failures.tally" {
            return Box::pin(async { panic!("a bug in the backend") });
        }
        self.inner.claim(perspective, stream)
    }
    fn checkpoint<'a>(
        &'a self,
        perspective: &'a str,
        stream: StreamId,
    ) -> BoxFuture<'a, whizbang_core::Result<Checkpoint>> {
        self.inner.checkpoint(perspective, stream)
    }
    fn load_model<'a>(
        &'a self,
        perspective: &'a str,
        id: StreamId,
    ) -> BoxFuture<'a, whizbang_core::Result<Option<ModelRow>>> {
        self.inner.load_model(perspective, id)
    }
    fn list_models<'a>(
        &'a self,
        perspective: &'a str,
    ) -> BoxFuture<'a, whizbang_core::Result<Vec<ModelRow>>> {
        self.inner.list_models(perspective)
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_runner_task_cannot_leave_wait_idle_hanging() {
    let rt = Runtime::builder()
        .perspective_store(PanickyStore::default())
        .build()
        .unwrap();
    let scope = rt.scope();
    scope
        .publish(Poked {
            target: Uuid::now_v7(),
        })
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
    // The task catching up `failures.tally` panics outside any user code.
    bounded(rt.wait_idle()).await;
}

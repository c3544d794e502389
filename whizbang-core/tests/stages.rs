//! Lifecycle stages and receptor-level perspective sync, on explicit
//! registrations (the attribute macros emit the same records).

mod common;
use common::bounded;

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::registry::{PerspectiveRegistration, ReceptorRegistration};
use whizbang_core::{
    perspective, Command, Context, Error, Event, FromServices, LensQuery, LifecycleStage, Receptor,
    Registry, Result, Runtime, Services, SyncFire, SyncOutcome, SyncRequirement,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
struct Placed {
    #[stream_key]
    order: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Seen {
    placed: u32,
}

struct AsyncView;
#[perspective(model = Seen)]
impl AsyncView {
    fn placed(m: &mut Seen, _: &Placed) {
        m.placed += 1;
    }
}

struct InlineView;
#[perspective(model = Seen, mode = inline)]
impl InlineView {
    fn placed(m: &mut Seen, _: &Placed) {
        m.placed += 1;
    }
}

/// What each receptor saw, in firing order.
#[derive(Default, Debug)]
struct Log(Mutex<Vec<String>>, tokio::sync::Notify);

impl Log {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
        self.1.notify_waiters();
    }
    /// Waits (bounded) until at least `n` entries are logged.
    async fn wait_len(&self, n: usize) {
        bounded(async {
            loop {
                let changed = self.1.notified();
                if self.0.lock().unwrap().len() >= n {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }
    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

macro_rules! logging_receptor {
    ($name:ident, $label:literal) => {
        struct $name(Arc<Log>);
        impl FromServices for $name {
            fn from_services(s: &Services) -> Result<Self> {
                Ok($name(s.require::<Log>(stringify!($name))?))
            }
        }
        // Registered by hand (the statics below), as `#[receptor]` would.
        impl whizbang_core::__private::Registered<Placed> for $name {}
        impl Receptor<Placed> for $name {
            async fn handle(&self, e: Placed, cx: &mut Context) -> Result<()> {
                let inline = cx
                    .lens::<InlineView>()
                    .get(e.order.into())
                    .await?
                    .map_or(0, |m| m.placed);
                let outcomes: Vec<_> = cx
                    .sync_results()
                    .iter()
                    .map(|r| format!("{:?}", r.outcome))
                    .collect();
                self.0
                    .push(format!("{} inline={inline} sync={outcomes:?}", $label));
                Ok(())
            }
        }
    };
}

logging_receptor!(PreDistribute, "pre-distribute");
logging_receptor!(Default_, "default");
logging_receptor!(PrePerspective, "pre-perspective");
logging_receptor!(PostPerspective, "post-perspective");
logging_receptor!(PostAll, "post-all");
logging_receptor!(Waiter, "waiter");

static PRE_DISTRIBUTE: ReceptorRegistration =
    ReceptorRegistration::of::<PreDistribute, Placed>("PreDistribute", "stages")
        .fire_at(LifecycleStage::PreDistributeInline);
static DEFAULT: ReceptorRegistration =
    ReceptorRegistration::of::<Default_, Placed>("Default_", "stages");
static PRE_PERSPECTIVE: ReceptorRegistration =
    ReceptorRegistration::of::<PrePerspective, Placed>("PrePerspective", "stages")
        .fire_at(LifecycleStage::PrePerspectiveInline);
static POST_PERSPECTIVE: ReceptorRegistration =
    ReceptorRegistration::of::<PostPerspective, Placed>("PostPerspective", "stages")
        .fire_at(LifecycleStage::PostPerspectiveInline);
static POST_ALL: ReceptorRegistration =
    ReceptorRegistration::of::<PostAll, Placed>("PostAll", "stages")
        .fire_at(LifecycleStage::PostAllPerspectivesInline);

static ASYNC_VIEW: PerspectiveRegistration =
    PerspectiveRegistration::of::<AsyncView>("AsyncView", "stages");
static INLINE_VIEW: PerspectiveRegistration =
    PerspectiveRegistration::of::<InlineView>("InlineView", "stages");

fn runtime(receptors: Vec<&'static ReceptorRegistration>) -> Result<(Runtime, Arc<Log>)> {
    let log = Arc::new(Log::default());
    let registry = Registry::from_parts(receptors, [&ASYNC_VIEW, &INLINE_VIEW], [])?;
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .shared_service(Arc::clone(&log))
        .build()?;
    Ok((rt, log))
}

#[tokio::test]
async fn receptors_fire_in_stage_order_around_the_perspectives() {
    let (rt, log) = runtime(vec![
        &POST_ALL,
        &POST_PERSPECTIVE,
        &DEFAULT,
        &PRE_PERSPECTIVE,
        &PRE_DISTRIBUTE,
    ])
    .unwrap();
    let scope = rt.scope();
    scope
        .publish(Placed {
            order: Uuid::now_v7(),
        })
        .await
        .unwrap();
    assert_eq!(
        log.entries(),
        vec![
            "pre-distribute inline=0 sync=[]",
            "default inline=0 sync=[]"
        ]
    );
    scope.complete().await.unwrap();
    assert_eq!(
        log.entries()[2..],
        [
            "pre-perspective inline=0 sync=[]",
            "post-perspective inline=1 sync=[]",
            "post-all inline=1 sync=[]"
        ]
    );
}

static WAIT_DETACHED: ReceptorRegistration =
    ReceptorRegistration::of::<Waiter, Placed>("Waiter", "stages")
        .fire_at(LifecycleStage::PostPerspectiveDetached)
        .awaiting(&[SyncRequirement::of::<AsyncView>(
            &[],
            Some(5_000),
            SyncFire::OnSuccess,
        )]);

#[tokio::test]
async fn a_detached_receptor_awaiting_an_async_perspective_runs_after_it_applied() {
    let (rt, log) = runtime(vec![&WAIT_DETACHED]).unwrap();
    let order = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Placed { order }).await.unwrap();
    scope.complete().await.unwrap();
    bounded(rt.wait_idle()).await;
    assert_eq!(log.entries(), vec!["waiter inline=1 sync=[\"Synced\"]"]);
    let seen = rt
        .lens::<AsyncView>()
        .get(order.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.placed, 1);
}

static WAIT_ALWAYS: ReceptorRegistration =
    ReceptorRegistration::of::<Waiter, Placed>("Waiter", "stages")
        .fire_at(LifecycleStage::PostDistributeDetached)
        .awaiting(&[SyncRequirement::of::<AsyncView>(
            &[],
            Some(150),
            SyncFire::Always,
        )]);

#[tokio::test]
async fn fire_always_runs_the_receptor_with_the_timed_out_outcome() {
    let (rt, log) = runtime(vec![&WAIT_ALWAYS]).unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    scope
        .publish(Placed {
            order: Uuid::now_v7(),
        })
        .await
        .unwrap();
    scope.complete().await.unwrap();
    // The runner is paused, so the async perspective never applies; the
    // detached receptor waits 150 ms and runs anyway.
    log.wait_len(1).await;
    assert_eq!(log.entries(), vec!["waiter inline=1 sync=[\"TimedOut\"]"]);
    rt.runner().resume();
}

#[derive(Command, Serialize, Deserialize)]
struct Confirm {
    order: Uuid,
}

#[derive(Default)]
struct Confirmer;

// Registered by hand (`CONFIRM` below), as `#[receptor]` would.
impl whizbang_core::__private::Registered<Confirm> for Confirmer {}

impl Receptor<Confirm> for Confirmer {
    async fn handle(&self, _: Confirm, cx: &mut Context) -> Result<()> {
        assert_eq!(
            cx.sync_result::<AsyncView>().map(|r| r.outcome.clone()),
            Some(SyncOutcome::Synced)
        );
        Ok(())
    }
}

static CONFIRM: ReceptorRegistration =
    ReceptorRegistration::of::<Confirmer, Confirm>("Confirmer", "stages").awaiting(&[
        SyncRequirement::of::<AsyncView>(&["Placed"], Some(200), SyncFire::OnSuccess),
    ]);

#[tokio::test]
async fn a_command_receptor_on_success_fails_the_dispatch_with_a_timeout_and_does_not_run() {
    let (rt, _) = runtime(vec![&CONFIRM]).unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    let order = Uuid::now_v7();
    scope.publish(Placed { order }).await.unwrap();
    let err = bounded(scope.send(Confirm { order })).await.unwrap_err();
    match err {
        Error::PerspectiveSyncTimeout {
            perspective,
            timeout,
        } => {
            assert_eq!(perspective, "AsyncView");
            assert_eq!(timeout, Duration::from_millis(200));
        }
        other => panic!("expected PerspectiveSyncTimeout, got {other:?}"),
    }
    // With the runner going, the same command waits for the scope's Placed and runs.
    rt.runner().resume();
    bounded(scope.send(Confirm { order })).await.unwrap();
}

static INLINE_WAIT: ReceptorRegistration =
    ReceptorRegistration::of::<Waiter, Placed>("Waiter", "stages")
        .fire_at(LifecycleStage::PostPerspectiveInline)
        .awaiting(&[SyncRequirement::of::<AsyncView>(
            &[],
            Some(100),
            SyncFire::OnSuccess,
        )]);
static INBOX: ReceptorRegistration = ReceptorRegistration::of::<Waiter, Placed>("Waiter", "stages")
    .fire_at(LifecycleStage::PostInboxDetached);
static COMMAND_STAGE: ReceptorRegistration =
    ReceptorRegistration::of::<Confirmer, Confirm>("Confirmer", "stages")
        .fire_at(LifecycleStage::PostDistributeDetached);

#[tokio::test]
async fn waiting_from_an_inline_stage_is_a_start_up_error() {
    let err = runtime(vec![&INLINE_WAIT]).unwrap_err();
    assert_matches!(
        err,
        Error::InlineStageWait {
            stage: LifecycleStage::PostPerspectiveInline,
            ..
        }
    );
    assert!(err.to_string().contains("Detached"), "{err}");
}

#[tokio::test]
async fn inbox_stages_are_accepted_and_stages_on_commands_are_rejected() {
    // Inbox stages fire for messages an inbox receives (`Scope::receive`).
    runtime(vec![&INBOX]).expect("an inbox-stage receptor starts");
    let err = runtime(vec![&COMMAND_STAGE]).unwrap_err();
    assert!(
        err.to_string().contains("apply to event receptors"),
        "{err}"
    );
}

#[test]
fn inline_and_detached_stages_alternate() {
    for (i, s) in LifecycleStage::ALL.iter().enumerate() {
        assert_eq!(s.is_inline(), i % 2 == 0, "{s:?}");
        assert_eq!(format!("{s:?}").ends_with("Inline"), s.is_inline());
    }
}

//! The wait path: waiters served in batches by the tracker, the event-id
//! filter, results that carry their timeout, and invariant breaks as their own
//! error variant.

mod common;
use common::{bounded, counting_runtime, ms, paused_runtime, scope_wait, until};

use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::store::BoxFuture;
use whizbang_core::sync::{SyncBackend, SyncInquiry, SyncInquiryResult};
use whizbang_core::{
    perspective, receptor, Context, Error, Event, EventId, Receptor, Runtime, SyncFilter,
    SyncOutcome,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "wait_path.noted")]
struct Noted {
    #[stream_key]
    stream: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Count {
    n: u64,
}

/// Async; the only perspective of `Noted`.
struct Notes;

#[perspective(model = Count, name = "wait_path.notes")]
impl Notes {
    fn noted(c: &mut Count, _: &Noted) {
        c.n += 1;
    }
}

#[tokio::test(start_paused = true)]
async fn sleeping_waiters_are_asked_about_in_batches_not_one_inquiry_each() {
    const N: usize = 200;
    let (rt, calls) = counting_runtime();
    rt.runner().pause();
    let mut waits = Vec::with_capacity(N);
    for _ in 0..N {
        let stream = Uuid::now_v7();
        let scope = rt.scope();
        scope.publish(Noted { stream }).await.unwrap();
        scope.complete().await.unwrap();
        let aw = rt.sync_awaiter();
        waits.push(tokio::spawn(async move {
            aw.wait::<Notes>(SyncFilter::for_stream(stream).with_timeout(Duration::from_secs(60)))
                .await
        }));
    }
    // Every waiter asked once on its own task and sleeps on its backoff.
    until(|| rt.sync_tracker().alarm_count() == N).await;
    // Five backoff steps (5 ms doubling) of N sleeping waiters: one inquiry
    // per round, not one per waiter.
    let before = calls.load(Ordering::SeqCst);
    tokio::time::sleep(ms(5 + 10 + 20 + 40 + 80)).await;
    let reasks = calls.load(Ordering::SeqCst) - before;
    // About one per step (a step's waiters fall due together); one per waiter
    // per step would be 1,000.
    assert!(
        reasks <= 10,
        "{reasks} inquiries for {N} waiters over five backoff steps: not batched"
    );
    rt.runner().resume();
    for w in waits {
        let r = bounded(w).await.unwrap().unwrap();
        assert_eq!(r.outcome, SyncOutcome::Synced);
    }
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
    assert_eq!(rt.sync_tracker().alarm_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_apply_that_names_every_remaining_id_ends_the_wait_without_another_inquiry() {
    let (rt, calls) = counting_runtime();
    rt.runner().pause();
    let stream = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Noted { stream }).await.unwrap();
    scope.publish(Noted { stream }).await.unwrap();
    scope.complete().await.unwrap();
    let aw = rt.sync_awaiter();
    // A backoff of an hour: only an apply can end this wait.
    let options = whizbang_core::PerspectiveSyncOptions::new(SyncFilter::for_stream(stream))
        .timeout(Duration::from_secs(60))
        .reask_backoff(Duration::from_secs(3600), Duration::from_secs(3600));
    let wait = tokio::spawn(async move { aw.wait::<Notes>(options).await });
    // The first round asked once and found both events pending.
    until(|| rt.sync_tracker().alarm_count() == 1).await;
    let asked = calls.load(Ordering::SeqCst);
    rt.runner().resume();
    let r = bounded(wait).await.unwrap().unwrap();
    assert_eq!(r.outcome, SyncOutcome::Synced);
    assert_eq!(r.events_awaited, 2);
    // The commit's report named both ids: no inquiry was needed to decide.
    assert_eq!(calls.load(Ordering::SeqCst), asked);
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
    assert_eq!(rt.sync_tracker().alarm_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_event_id_filter_waits_for_exactly_that_event() {
    let rt = paused_runtime();
    let scope = rt.scope();
    let id = scope
        .publish(Noted {
            stream: Uuid::now_v7(),
        })
        .await
        .unwrap();
    scope.complete().await.unwrap();
    // A runtime-level awaiter: the id alone says what to wait for.
    let aw = rt.sync_awaiter();
    let r = bounded(aw.wait::<Notes>(SyncFilter::event_ids([id]).with_timeout(ms(50))))
        .await
        .unwrap();
    assert_eq!(r.outcome, SyncOutcome::TimedOut);
    assert_eq!(r.events_awaited, 1);
    rt.runner().resume();
    let r = bounded(aw.wait::<Notes>(SyncFilter::event_ids([id])))
        .await
        .unwrap();
    assert_eq!(r.outcome, SyncOutcome::Synced);
    assert_eq!(r.events_awaited, 1);
}

#[tokio::test(start_paused = true)]
async fn an_event_id_never_stored_is_never_synced() {
    let rt = Runtime::in_memory().unwrap();
    let never = EventId::new();
    let r = bounded(
        rt.sync_awaiter()
            .wait::<Notes>(SyncFilter::event_ids([never]).with_timeout(ms(100))),
    )
    .await
    .unwrap();
    assert_eq!(r.outcome, SyncOutcome::TimedOut);
    assert_eq!(r.events_awaited, 1);
}

#[tokio::test(start_paused = true)]
async fn a_result_carries_its_timeout_into_its_error() {
    let rt = paused_runtime();
    let scope = rt.scope();
    scope
        .publish(Noted {
            stream: Uuid::now_v7(),
        })
        .await
        .unwrap();
    let r = scope_wait::<Notes>(&scope, SyncFilter::current_scope().with_timeout(ms(70))).await;
    assert_eq!(r.timeout, ms(70));
    match r.into_result() {
        Err(Error::PerspectiveSyncTimeout {
            perspective,
            timeout,
        }) => {
            assert_eq!(perspective, "wait_path.notes");
            assert_eq!(timeout, ms(70));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// A backend that answers nothing at all.
struct Mute;

impl SyncBackend for Mute {
    fn inquire<'a>(
        &'a self,
        _: &'a [SyncInquiry],
    ) -> BoxFuture<'a, whizbang_core::Result<Vec<SyncInquiryResult>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[tokio::test]
async fn a_backend_that_answers_no_inquiry_is_an_invariant_break() {
    let rt = Runtime::builder().sync_backend(Mute).build().unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    scope
        .publish(Noted {
            stream: Uuid::now_v7(),
        })
        .await
        .unwrap();
    let err = bounded(
        scope
            .sync_awaiter()
            .wait::<Notes>(SyncFilter::current_scope().with_timeout(ms(500))),
    )
    .await
    .unwrap_err();
    assert_matches!(err, Error::Invariant(_));
    assert!(format!("{err:?}").contains("Invariant"), "{err:?}");
    assert!(err.to_string().contains("answered no inquiry"), "{err}");
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
}

// ------------------------------------------- ad hoc waits from a receptor

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "wait_path.pinged")]
struct Pinged {
    #[stream_key]
    stream: Uuid,
}

/// Async; the only perspective of `Pinged`.
struct Pings;

#[perspective(model = Count, name = "wait_path.pings")]
impl Pings {
    fn pinged(c: &mut Count, _: &Pinged) {
        c.n += 1;
    }
}

/// What each receptor's ad hoc wait gave: its outcome, or the error's variant.
static AD_HOC: std::sync::Mutex<Vec<(&'static str, String)>> = std::sync::Mutex::new(Vec::new());

async fn wait_ad_hoc(who: &'static str, e: &Pinged, cx: &Context) {
    let said = match cx.sync_awaiter() {
        Ok(aw) => match aw
            .wait::<Pings>(SyncFilter::for_stream(e.stream).with_timeout(Duration::from_secs(5)))
            .await
        {
            Ok(r) => format!("{:?}", r.outcome),
            Err(e) => format!("wait error {e:?}"),
        },
        Err(e) => format!("{e:?}"),
    };
    AD_HOC.lock().unwrap().push((who, said));
}

#[derive(Default)]
struct DetachedPinger;

#[receptor]
#[fire_at(PostDistributeDetached)]
impl Receptor<Pinged> for DetachedPinger {
    async fn handle(&self, e: Pinged, cx: &mut Context) -> whizbang_core::Result<()> {
        wait_ad_hoc("detached", &e, cx).await;
        Ok(())
    }
}

#[derive(Default)]
struct InlinePinger;

#[receptor]
#[fire_at(PostDistributeInline)]
impl Receptor<Pinged> for InlinePinger {
    async fn handle(&self, e: Pinged, cx: &mut Context) -> whizbang_core::Result<()> {
        wait_ad_hoc("inline", &e, cx).await;
        Ok(())
    }
}

#[tokio::test]
async fn a_detached_receptor_waits_ad_hoc_and_an_inline_one_is_told_to_use_a_detached_stage() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    scope
        .publish(Pinged {
            stream: Uuid::now_v7(),
        })
        .await
        .unwrap();
    scope.complete().await.unwrap();
    until(|| AD_HOC.lock().unwrap().len() == 2).await;
    let mut said = AD_HOC.lock().unwrap().clone();
    said.sort();
    assert_eq!(said[0].0, "detached");
    assert_eq!(said[0].1, "Synced", "{said:?}");
    assert_eq!(said[1].0, "inline");
    assert!(
        said[1]
            .1
            .ends_with("(whizbang_core::Error::InlineStageWait)"),
        "{said:?}"
    );
}

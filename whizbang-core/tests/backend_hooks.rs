//! The hooks a backend shared by several processes plugs into: one-call
//! installation with start hooks, catch-up by perspective name for a runner
//! that finds work in the store, open-ended waits that ask the backend what
//! other processes appended, and re-asking every waiter after lost wake-ups.
//!
//! "Another process" is a second runtime over the same memory stores.

mod common;
use common::{bounded, ms, until};

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::backend::{
    Backend, BoxFuture, EventLocation, EventStore, MemoryEventStore, MemoryPerspectiveStore,
    StoreSyncBackend, SyncBackend, SyncInquiry, SyncInquiryResult, UnappliedQuery,
};
use whizbang_core::{
    perspective, Error, Event, EventId, LensQuery, PerspectiveSyncOptions, Runtime, RuntimeBuilder,
    SyncFilter, SyncOutcome,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "backend_hooks.noted")]
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

#[perspective(model = Count, name = "backend_hooks.notes")]
impl Notes {
    fn noted(c: &mut Count, _: &Noted) {
        c.n += 1;
    }
}

/// A backend made of the shared memory stores, a sync backend, and a start
/// hook that records what it saw of the runtime.
struct Shared {
    events: MemoryEventStore,
    perspectives: MemoryPerspectiveStore,
    sync: Option<Arc<dyn SyncBackend>>,
    started: Arc<Mutex<Vec<String>>>,
    fail_start: bool,
}

impl Shared {
    fn new(events: &MemoryEventStore, perspectives: &MemoryPerspectiveStore) -> Self {
        Shared {
            events: events.clone(),
            perspectives: perspectives.clone(),
            sync: None,
            started: Arc::default(),
            fail_start: false,
        }
    }
}

impl Backend for Shared {
    fn install(self, builder: RuntimeBuilder) -> RuntimeBuilder {
        let started = Arc::clone(&self.started);
        let fail = self.fail_start;
        let mut builder = builder
            .event_store(self.events)
            .perspective_store(self.perspectives)
            .on_start(move |rt: &Runtime| {
                if fail {
                    return Err(Error::InvalidInput("the backend could not start".into()));
                }
                let names = rt.registry().perspectives().iter().map(|p| p.name);
                started.lock().unwrap().extend(names.map(str::to_owned));
                Ok(())
            });
        if let Some(sync) = self.sync {
            builder = builder.sync_backend(ArcSync(sync));
        }
        builder
    }
}

struct ArcSync(Arc<dyn SyncBackend>);

impl SyncBackend for ArcSync {
    fn inquire<'a>(
        &'a self,
        inquiries: &'a [SyncInquiry],
    ) -> BoxFuture<'a, whizbang_core::Result<Vec<SyncInquiryResult>>> {
        self.0.inquire(inquiries)
    }
    fn unapplied<'a>(
        &'a self,
        query: &'a UnappliedQuery,
    ) -> BoxFuture<'a, whizbang_core::Result<Vec<EventLocation>>> {
        self.0.unapplied(query)
    }
}

/// A sync backend that answers `unapplied` with a fixed list (what a shared
/// store would report of other processes' appends) and counts inquiries.
struct Reporting {
    inner: StoreSyncBackend,
    unapplied: Vec<EventLocation>,
    inquiries: Arc<AtomicUsize>,
}

impl SyncBackend for Reporting {
    fn inquire<'a>(
        &'a self,
        inquiries: &'a [SyncInquiry],
    ) -> BoxFuture<'a, whizbang_core::Result<Vec<SyncInquiryResult>>> {
        self.inquiries.fetch_add(1, Ordering::SeqCst);
        self.inner.inquire(inquiries)
    }
    fn unapplied<'a>(
        &'a self,
        query: &'a UnappliedQuery,
    ) -> BoxFuture<'a, whizbang_core::Result<Vec<EventLocation>>> {
        let out = if query.perspective == "backend_hooks.notes" {
            self.unapplied.clone()
        } else {
            Vec::new()
        };
        Box::pin(async move { Ok(out) })
    }
}

fn stores() -> (MemoryEventStore, MemoryPerspectiveStore) {
    (MemoryEventStore::new(), MemoryPerspectiveStore::new())
}

#[tokio::test]
async fn a_backend_installs_its_stores_and_start_hooks_in_one_call() {
    let (events, perspectives) = stores();
    let backend = Shared::new(&events, &perspectives);
    let started = Arc::clone(&backend.started);
    let rt = Runtime::builder().backend(backend).build().unwrap();
    // The hook ran once, before build returned, and saw the registry.
    assert!(started
        .lock()
        .unwrap()
        .iter()
        .any(|n| n == "backend_hooks.notes"));
    // The runtime appends into the backend's store.
    let stream = Uuid::now_v7();
    rt.scope().publish(Noted { stream }).await.unwrap();
    assert_eq!(events.stream_version(stream.into()).await.unwrap(), 1);
}

#[tokio::test]
async fn a_start_hook_that_fails_fails_the_build_with_its_error() {
    let (events, perspectives) = stores();
    let mut backend = Shared::new(&events, &perspectives);
    backend.fail_start = true;
    let err = Runtime::builder().backend(backend).build().unwrap_err();
    assert!(
        err.to_string().contains("could not start"),
        "the hook's error is the build's: {err}"
    );
}

#[tokio::test]
async fn catch_up_by_name_applies_what_another_process_appended() {
    let (events, perspectives) = stores();
    // The writer does not run perspectives; the reader applies on demand.
    let writer = Runtime::builder()
        .backend(Shared::new(&events, &perspectives))
        .build()
        .unwrap();
    writer.runner().pause();
    let reader = Runtime::builder()
        .backend(Shared::new(&events, &perspectives))
        .build()
        .unwrap();
    let stream = Uuid::now_v7();
    let scope = writer.scope();
    scope.publish(Noted { stream }).await.unwrap();
    scope.publish(Noted { stream }).await.unwrap();
    scope.complete().await.unwrap();

    let report = bounded(reader.catch_up("backend_hooks.notes", stream.into()))
        .await
        .unwrap()
        .expect("two events to apply");
    assert_eq!(report.version, 2);
    assert_eq!(report.applied.len(), 2);
    assert_eq!(
        reader.lens::<Notes>().get(stream.into()).await.unwrap(),
        Some(Count { n: 2 })
    );
    // Nothing left: a second catch-up commits nothing.
    let again = reader
        .catch_up("backend_hooks.notes", stream.into())
        .await
        .unwrap();
    assert!(again.is_none());

    let err = reader
        .catch_up("backend_hooks.missing", stream.into())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownPerspective { name } if name == "backend_hooks.missing"),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_open_ended_wait_includes_what_the_backend_reports_other_processes_appended() {
    let (events, perspectives) = stores();
    // An event "another process" appended: stored nowhere this runtime can
    // see it, known only to the shared backend's high-water mark.
    let elsewhere = EventLocation {
        event_id: EventId::new(),
        stream_id: Uuid::now_v7().into(),
        stream_version: 1,
        event_type: "backend_hooks.noted".into(),
    };
    let mut backend = Shared::new(&events, &perspectives);
    backend.sync = Some(Arc::new(Reporting {
        inner: StoreSyncBackend::new(Arc::new(events.clone()), Arc::new(perspectives.clone())),
        unapplied: vec![elsewhere],
        inquiries: Arc::default(),
    }));
    let rt = Runtime::builder().backend(backend).build().unwrap();
    let options = PerspectiveSyncOptions::new(SyncFilter::all()).timeout(ms(100));
    let r = bounded(rt.sync_awaiter().wait::<Notes>(options))
        .await
        .unwrap();
    // Not "nothing pending": the wait held the other process's event, which
    // never applied here.
    assert_eq!(r.outcome, SyncOutcome::TimedOut);

    // A filter that names its stream does not ask for other streams' events.
    let options =
        PerspectiveSyncOptions::new(SyncFilter::for_stream(Uuid::now_v7())).timeout(ms(100));
    let r = bounded(rt.sync_awaiter().wait::<Notes>(options))
        .await
        .unwrap();
    assert_eq!(r.outcome, SyncOutcome::NoPendingEvents);
}

#[tokio::test]
async fn with_the_default_backend_an_open_ended_wait_knows_only_this_process() {
    let (events, perspectives) = stores();
    let rt = Runtime::builder()
        .backend(Shared::new(&events, &perspectives))
        .build()
        .unwrap();
    let options = PerspectiveSyncOptions::new(SyncFilter::all()).timeout(ms(100));
    let r = bounded(rt.sync_awaiter().wait::<Notes>(options))
        .await
        .unwrap();
    assert_eq!(r.outcome, SyncOutcome::NoPendingEvents);
}

#[tokio::test]
async fn reask_all_makes_every_sleeping_waiter_ask_again_at_once() {
    let (events, perspectives) = stores();
    let inquiries = Arc::new(AtomicUsize::new(0));
    let mut backend = Shared::new(&events, &perspectives);
    backend.sync = Some(Arc::new(Reporting {
        inner: StoreSyncBackend::new(Arc::new(events.clone()), Arc::new(perspectives.clone())),
        unapplied: Vec::new(),
        inquiries: Arc::clone(&inquiries),
    }));
    let rt = Runtime::builder().backend(backend).build().unwrap();
    rt.runner().pause();
    let stream = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(Noted { stream }).await.unwrap();
    scope.complete().await.unwrap();
    let aw = rt.sync_awaiter();
    // A backoff of an hour: only a wake-up makes this waiter ask again.
    let wait = tokio::spawn(async move {
        let options = PerspectiveSyncOptions::new(SyncFilter::for_stream(stream))
            .timeout(Duration::from_secs(30))
            .reask_backoff(Duration::from_secs(3600), Duration::from_secs(3600));
        aw.wait::<Notes>(options).await
    });
    until(|| rt.sync_tracker().alarm_count() == 1).await;
    let before = inquiries.load(Ordering::SeqCst);
    assert!(rt.wakeup_sink().reask_all());
    until(|| inquiries.load(Ordering::SeqCst) > before).await;
    // Still pending: it went back to sleep, and an apply ends it.
    until(|| rt.sync_tracker().alarm_count() == 1).await;
    rt.runner().resume();
    let r = bounded(wait).await.unwrap().unwrap();
    assert_eq!(r.outcome, SyncOutcome::Synced);
    // A sink outlives its runtime without keeping it alive.
    let sink = rt.wakeup_sink();
    drop((scope, rt));
    assert!(!sink.reask_all());
}

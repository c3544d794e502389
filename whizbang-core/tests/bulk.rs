//! The bulk apply hook on the in-memory backend: a batch strategy's run
//! hands the hook every model it changed in one call, before the commit;
//! deletions arrive as deletions; explicit syncs of many streams are one
//! call; a hook that fails commits nothing, fails the cursor of the model
//! it failed on (other models of the batch still commit) and a retry after
//! the cause is fixed applies it; a panicking hook is contained the same way.

mod common;
use common::bounded;

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::perspective::BulkBatch;
use whizbang_core::{
    perspective, Event, PerspectiveSyncOptions, Runtime, SyncFilter, SyncOutcome, Tombstone,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "bulk.added")]
struct Added {
    #[stream_key]
    id: Uuid,
    n: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "bulk.removed")]
struct Removed {
    #[stream_key]
    id: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Sum {
    total: u64,
}

/// One call of a hook: the perspective, whether a rebuild, and per model
/// its key, its total (`None`: deleted) and how many events it folded.
#[derive(Clone, Debug)]
struct Call {
    perspective: &'static str,
    rebuild: bool,
    items: Vec<(Uuid, Option<u64>, usize)>,
}

static CALLS: Mutex<Vec<Call>> = Mutex::new(Vec::new());
/// Keys whose presence in a batch makes the hook fail (or panic).
static POISONED: Mutex<Vec<Uuid>> = Mutex::new(Vec::new());
static PANICKING: Mutex<Vec<Uuid>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct SinkDown(Uuid);
impl std::fmt::Display for SinkDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the sink refused {}", self.0)
    }
}

/// The hook every perspective here shares: records the call, fails when
/// the batch holds a poisoned key, panics on a panicking one.
async fn record(batch: BulkBatch<'_, Sum>) -> Result<(), SinkDown> {
    // A hook is async: it may await its own store.
    tokio::task::yield_now().await;
    let keys: Vec<Uuid> = batch.iter().map(|i| i.key().into()).collect();
    if let Some(bad) = keys.iter().find(|k| PANICKING.lock().unwrap().contains(k)) {
        panic!("the sink panicked on {bad}");
    }
    if let Some(bad) = keys.iter().find(|k| POISONED.lock().unwrap().contains(k)) {
        return Err(SinkDown(*bad));
    }
    assert!(!batch.is_empty());
    let items = batch
        .iter()
        .map(|i| (i.key().into(), i.model().map(|m| m.total), i.events().len()))
        .collect();
    CALLS.lock().unwrap().push(Call {
        perspective: batch.perspective(),
        rebuild: batch.is_rebuild(),
        items,
    });
    Ok(())
}

/// Calls of `perspective` that touched any of `ids`.
fn calls_for(perspective: &str, ids: &[Uuid]) -> Vec<Call> {
    CALLS
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.perspective == perspective && c.items.iter().any(|i| ids.contains(&i.0)))
        .cloned()
        .collect()
}

/// Applies at 4 pending (never on the hour-long wait in a test).
struct Batched;
#[perspective(model = Sum, name = "bulk.batched", strategy = batch(4, "1h"), bulk = Self::sink)]
impl Batched {
    fn added(s: &mut Sum, e: &Added) {
        s.total += e.n;
    }
    fn removed(_: &mut Sum, _: &Removed) -> Tombstone {
        Tombstone
    }
    async fn sink(batch: BulkBatch<'_, Sum>) -> Result<(), SinkDown> {
        record(batch).await
    }
}

/// Realtime, the hook a free function.
struct Live;
#[perspective(model = Sum, name = "bulk.live", bulk = record)]
impl Live {
    fn added(s: &mut Sum, e: &Added) {
        s.total += e.n;
    }
}

/// Scheduled hourly: only explicit syncs apply it in a test.
struct Hourly;
#[perspective(model = Sum, name = "bulk.hourly", strategy = scheduled("1h"), bulk = record)]
impl Hourly {
    fn added(s: &mut Sum, e: &Added) {
        s.total += e.n;
    }
}

async fn add(rt: &Runtime, id: Uuid, n: u64) {
    let scope = rt.scope();
    scope.publish(Added { id, n }).await.unwrap();
    scope.complete().await.unwrap();
}

fn all() -> PerspectiveSyncOptions {
    PerspectiveSyncOptions::new(SyncFilter::all())
}

#[tokio::test]
async fn a_batch_run_hands_the_hook_every_model_it_changed_in_one_call() {
    let rt = Runtime::in_memory().unwrap();
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    add(&rt, ids[0], 1).await;
    add(&rt, ids[1], 2).await;
    add(&rt, ids[0], 10).await;
    assert!(calls_for("bulk.batched", &ids).is_empty(), "ran before n");
    add(&rt, ids[2], 3).await;
    let synced = bounded(rt.sync_awaiter().wait::<Batched>(all()))
        .await
        .unwrap();
    assert_eq!(synced.outcome, SyncOutcome::Synced);

    let calls = calls_for("bulk.batched", &ids);
    assert_eq!(calls.len(), 1, "one run, one call: {calls:?}");
    let mut items = calls[0].items.clone();
    items.sort();
    let mut expected = vec![
        (ids[0], Some(11), 2),
        (ids[1], Some(2), 1),
        (ids[2], Some(3), 1),
    ];
    expected.sort();
    assert_eq!(items, expected);
    assert!(!calls[0].rebuild);
    // What the hook saw is what was committed.
    let lens = rt.lens::<Batched>();
    for (id, total, _) in expected {
        assert_eq!(lens.get_by_key(id).await.unwrap().map(|s| s.total), total);
    }
}

#[tokio::test]
async fn a_deletion_reaches_the_hook_as_a_deletion() {
    let rt = Runtime::in_memory().unwrap();
    let (gone, kept) = (Uuid::now_v7(), Uuid::now_v7());
    add(&rt, gone, 1).await;
    add(&rt, kept, 5).await;
    let scope = rt.scope();
    scope.publish(Removed { id: gone }).await.unwrap();
    scope.complete().await.unwrap();
    add(&rt, kept, 5).await;
    bounded(rt.sync_awaiter().wait::<Batched>(all()))
        .await
        .unwrap();
    let calls = calls_for("bulk.batched", &[gone, kept]);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let mut items = calls[0].items.clone();
    items.sort();
    let mut expected = vec![(gone, None, 2), (kept, Some(10), 2)];
    expected.sort();
    assert_eq!(items, expected);
    assert_eq!(rt.lens::<Batched>().get_by_key(gone).await.unwrap(), None);
}

#[tokio::test]
async fn explicit_sync_of_many_streams_is_one_hook_call() {
    let rt = Runtime::in_memory().unwrap();
    let ids: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    for (n, id) in ids.iter().enumerate() {
        add(&rt, *id, n as u64).await;
    }
    assert!(calls_for("bulk.hourly", &ids).is_empty());
    let report = bounded(rt.sync::<Hourly>().streams(ids.iter().copied()).run())
        .await
        .unwrap();
    assert_eq!(report.totals().applied, 50);
    let calls = calls_for("bulk.hourly", &ids);
    assert_eq!(calls.len(), 1, "{} calls", calls.len());
    assert_eq!(calls[0].items.len(), 50);
}

#[tokio::test]
async fn a_failing_hook_commits_nothing_and_fails_only_the_model_it_refused() {
    let rt = Runtime::in_memory().unwrap();
    let (bad, good) = (Uuid::now_v7(), Uuid::now_v7());
    POISONED.lock().unwrap().push(bad);
    add(&rt, bad, 7).await;
    add(&rt, good, 1).await;
    // Explicit sync of both: the batch fails in the hook, each is then
    // synced alone; the good one commits, the bad one fails.
    let report = bounded(rt.sync::<Hourly>().streams([bad, good]).run())
        .await
        .unwrap();
    assert_eq!((report.totals().applied, report.totals().failed), (1, 1));
    let lens = rt.lens::<Hourly>();
    assert_eq!(
        lens.get_by_key(good).await.unwrap().map(|s| s.total),
        Some(1)
    );
    assert_eq!(
        lens.get_by_key(bad).await.unwrap(),
        None,
        "committed past a failing hook"
    );

    // The realtime perspective's runner: the cursor fails with the hook's
    // message, waiters hear it, and nothing is committed.
    let waited = bounded(
        rt.sync_awaiter()
            .wait::<Live>(PerspectiveSyncOptions::new(SyncFilter::for_stream(bad))),
    )
    .await
    .unwrap();
    let SyncOutcome::Failed {
        version, message, ..
    } = waited.outcome
    else {
        panic!("expected a failure, got {:?}", waited.outcome);
    };
    assert_eq!(version, 1);
    assert!(message.contains("bulk hook"), "{message}");
    assert!(message.contains("the sink refused"), "{message}");
    assert_eq!(rt.lens::<Live>().get_by_key(bad).await.unwrap(), None);

    // The cause fixed, a retry applies it, through the hook.
    POISONED.lock().unwrap().retain(|k| *k != bad);
    let retried = rt.retry_perspective::<Live>(bad).await.unwrap();
    assert_eq!(retried.version, 1);
    assert_eq!(
        rt.lens::<Live>()
            .get_by_key(bad)
            .await
            .unwrap()
            .map(|s| s.total),
        Some(7)
    );
    assert!(calls_for("bulk.live", &[bad])
        .iter()
        .any(|c| c.items == vec![(bad, Some(7), 1)]));
}

#[tokio::test]
async fn a_panicking_hook_is_contained_as_a_failure() {
    let rt = Runtime::in_memory().unwrap();
    let id = Uuid::now_v7();
    PANICKING.lock().unwrap().push(id);
    add(&rt, id, 3).await;
    let waited = bounded(rt.sync_awaiter().wait::<Live>(
        PerspectiveSyncOptions::new(SyncFilter::for_stream(id)).timeout(Duration::from_secs(20)),
    ))
    .await
    .unwrap();
    let SyncOutcome::Failed { message, .. } = waited.outcome else {
        panic!("expected a failure, got {:?}", waited.outcome);
    };
    assert!(message.contains("panicked"), "{message}");
    assert_eq!(rt.lens::<Live>().get_by_key(id).await.unwrap(), None);
    // The runtime goes on: another stream applies.
    let other = Uuid::now_v7();
    add(&rt, other, 4).await;
    let ok = bounded(
        rt.sync_awaiter()
            .wait::<Live>(PerspectiveSyncOptions::new(SyncFilter::for_stream(other))),
    )
    .await
    .unwrap();
    assert_eq!(ok.outcome, SyncOutcome::Synced);
    PANICKING.lock().unwrap().clear();
}

#[test]
fn a_perspective_says_whether_it_has_a_bulk_hook() {
    use whizbang_core::Perspective;
    const { assert!(<Batched as Perspective>::BULK) };
    let registry = whizbang_core::Registry::global();
    let reg = registry.unwrap().perspective_named("bulk.live").unwrap();
    assert!(reg.has_bulk_hook());
}

#[tokio::test]
async fn a_rebuild_hands_the_hook_its_chunks_marked_as_a_rebuild() {
    let rt = Runtime::in_memory().unwrap();
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        add(&rt, *id, 2).await;
    }
    bounded(rt.sync::<Hourly>().streams(ids.iter().copied()).run())
        .await
        .unwrap();
    let live_calls = calls_for("bulk.hourly", &ids).len();
    bounded(rt.rebuild::<Hourly>()).await.unwrap();
    let calls = calls_for("bulk.hourly", &ids);
    let rebuilt: Vec<&Call> = calls[live_calls..].iter().collect();
    assert!(!rebuilt.is_empty(), "the rebuild never called the hook");
    assert!(rebuilt.iter().all(|c| c.rebuild), "{rebuilt:?}");
    let mut seen: Vec<(Uuid, Option<u64>)> = rebuilt
        .iter()
        .flat_map(|c| c.items.iter().map(|i| (i.0, i.1)))
        .filter(|(k, _)| ids.contains(k))
        .collect();
    seen.sort();
    let mut expected: Vec<(Uuid, Option<u64>)> = ids.iter().map(|id| (*id, Some(2))).collect();
    expected.sort();
    assert_eq!(seen, expected);
    for id in &ids {
        assert_eq!(
            rt.lens::<Hourly>()
                .get_by_key(*id)
                .await
                .unwrap()
                .map(|s| s.total),
            Some(2)
        );
    }
}

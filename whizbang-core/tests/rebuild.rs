//! Rebuilds beside live on the memory stores: the swap is atomic for
//! readers, a rebuild under load ends with every model equal to a fresh
//! fold, a dropped rebuild leaves the live models and resumes, and declared
//! versions are recorded, rebuilt or refused.

mod common;
use common::bounded;

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;
use whizbang_core::perspective::rebuild::{
    shadow_name, RebuildOptions, RebuildPhase, VersionCheck, VersionPolicy,
};
use whizbang_core::{
    perspective, Error, Event, LensQuery, ListQuery, PerspectiveSyncOptions, Runtime, SyncFilter,
    SyncOutcome,
};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "rebuild.deposited")]
struct Deposited {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Balance {
    cents: i64,
    deposits: u64,
}

/// When set, the apply code counts ten times each deposit: "a new release".
static NEW_CODE: AtomicBool = AtomicBool::new(false);
/// Applies of `Balances`, any generation.
static APPLIES: AtomicU64 = AtomicU64::new(0);

struct Balances;

#[perspective(model = Balance)]
impl Balances {
    fn deposited(b: &mut Balance, e: &Deposited) {
        APPLIES.fetch_add(1, Ordering::Relaxed);
        let factor = if NEW_CODE.load(Ordering::Relaxed) {
            10
        } else {
            1
        };
        b.cents += e.cents * factor;
        b.deposits += 1;
    }
}

/// The same fold at version 3, for the version checks.
struct Versioned3;

#[perspective(model = Balance, version = 3)]
impl Versioned3 {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
}

// The tests share NEW_CODE and APPLIES: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn deposit(rt: &Runtime, accounts: &[Uuid], rounds: usize) {
    for round in 0..rounds {
        let scope = rt.scope();
        for (i, account) in accounts.iter().enumerate() {
            scope
                .publish(Deposited {
                    account: *account,
                    cents: (i + round + 1) as i64,
                })
                .await
                .unwrap();
        }
        scope.complete().await.unwrap();
    }
}

/// Every live model of `Balances` equals a fresh fold of its stream.
async fn assert_models_equal_fresh_fold(rt: &Runtime, accounts: &[Uuid]) {
    let lens = rt.lens::<Balances>();
    for account in accounts {
        let fold = rt.aggregate::<Balances>(*account).await.unwrap();
        let (model, version) = lens
            .get_versioned((*account).into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (&model, version),
            (&fold.model, fold.version),
            "model of {account}"
        );
    }
    assert_eq!(
        lens.list(ListQuery::all()).await.unwrap().len(),
        accounts.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_under_load_ends_with_every_model_equal_to_a_fresh_fold() {
    let _serial = SERIAL.lock().await;
    NEW_CODE.store(false, Ordering::Relaxed);
    let rt = Runtime::in_memory().unwrap();
    let accounts: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    deposit(&rt, &accounts, 20).await;
    rt.wait_idle().await;
    // New deposits keep arriving while it rebuilds, on old and new streams.
    let writer = {
        let rt = rt.clone();
        let mut all = accounts.clone();
        all.extend((0..5).map(|_| Uuid::now_v7()));
        tokio::spawn(async move {
            deposit(&rt, &all, 30).await;
            all
        })
    };
    let (options, mut progress) = RebuildOptions::default()
        .chunk_events(25)
        .fence_below(10)
        .watch();
    let report = bounded(rt.rebuild_named("Balances", options))
        .await
        .unwrap();
    let all = writer.await.unwrap();
    rt.wait_idle().await;
    assert!(report.events >= 400, "{report:?}");
    assert_eq!(report.version, 1);
    assert!(!report.resumed);
    let last = progress.borrow_and_update().clone();
    assert_eq!(last.phase, RebuildPhase::Done);
    assert_eq!(last.done, last.total);
    assert!(last.rate > 0.0);
    assert_models_equal_fresh_fold(&rt, &all).await;
    // The run is in the sync log, like an explicit sync's.
    let logged = rt.sync_log(10).await.unwrap();
    let run = logged
        .iter()
        .find(|r| r.mode == "rebuild")
        .unwrap_or_else(|| panic!("no rebuild in the sync log: {logged:?}"));
    assert_eq!(run.perspective, "Balances");
    assert_eq!(run.applied, report.models as u64);
    assert_eq!(
        run.outcome,
        whizbang_core::perspective::SyncRunOutcome::Succeeded
    );
    // The shadow is gone: its models moved to the live name.
    let store = rt.services().perspective_store();
    assert!(store
        .list_models(shadow_name("Balances"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_every_old_model_or_every_new_one_never_a_mix() {
    let _serial = SERIAL.lock().await;
    NEW_CODE.store(false, Ordering::Relaxed);
    let rt = Runtime::in_memory().unwrap();
    let accounts: Vec<Uuid> = (0..30).map(|_| Uuid::now_v7()).collect();
    deposit(&rt, &accounts, 10).await;
    rt.wait_idle().await;
    let old: Vec<i64> = rt
        .lens::<Balances>()
        .list(ListQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|m| m.cents)
        .collect();
    // The new release: its models are ten times the old ones.
    NEW_CODE.store(true, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (rt, stop, old) = (rt.clone(), Arc::clone(&stop), old.clone());
        tokio::spawn(async move {
            let (mut saw_old, mut saw_new) = (0, 0);
            // At least one read, then until stopped.
            while saw_old + saw_new == 0 || !stop.load(Ordering::Relaxed) {
                let now: Vec<i64> = rt
                    .lens::<Balances>()
                    .list(ListQuery::all())
                    .await
                    .unwrap()
                    .iter()
                    .map(|m| m.cents)
                    .collect();
                let new: Vec<i64> = old.iter().map(|c| c * 10).collect();
                if now == old {
                    saw_old += 1;
                } else if now == new {
                    saw_new += 1;
                } else {
                    panic!("a reader saw a mix of old and new models: {now:?}");
                }
                tokio::task::yield_now().await;
            }
            (saw_old, saw_new)
        })
    };
    let report = bounded(rt.rebuild_named("Balances", RebuildOptions::default().chunk_events(7)))
        .await
        .unwrap();
    assert_eq!(report.models, 30);
    stop.store(true, Ordering::Relaxed);
    let (saw_old, saw_new) = reader.await.unwrap();
    assert!(saw_old + saw_new > 0);
    let now: Vec<i64> = rt
        .lens::<Balances>()
        .list(ListQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|m| m.cents)
        .collect();
    assert_eq!(now, old.iter().map(|c| c * 10).collect::<Vec<_>>());
    NEW_CODE.store(false, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_rebuild_leaves_the_live_models_and_the_next_one_resumes() {
    let _serial = SERIAL.lock().await;
    NEW_CODE.store(false, Ordering::Relaxed);
    let rt = Runtime::in_memory().unwrap();
    let accounts: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    deposit(&rt, &accounts, 10).await;
    rt.wait_idle().await;
    NEW_CODE.store(true, Ordering::Relaxed);
    let (options, mut progress) = RebuildOptions::default()
        .chunk_events(10)
        .fence_below(0)
        .watch();
    {
        let rebuild = rt.rebuild_named("Balances", options);
        tokio::pin!(rebuild);
        // Drop it once some chunks are in the shadow.
        bounded(async {
            tokio::select! {
                r = &mut rebuild => panic!("finished before it was dropped: {r:?}"),
                _ = progress.wait_for(|p| p.done >= 100) => {}
            }
        })
        .await;
    }
    assert!(progress.borrow().done >= 100);
    // What the shadow reflects (chunks in flight when it was dropped commit
    // whole or not at all).
    let store = rt.services().perspective_store();
    let done_before: u64 = store
        .list_models(shadow_name("Balances"))
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .sum();
    assert!((100..400).contains(&done_before), "{done_before}");
    // Live models untouched: still the old code's.
    for account in &accounts {
        let m = rt
            .lens::<Balances>()
            .get((*account).into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.deposits, 10);
        assert!(m.cents < 10 * 10 * 45, "{m:?}");
    }
    // A rebuild still marked running in this process is refused; end it the
    // way a crashed process's would be: the record says it stopped.
    store
        .rebuilds()
        .unwrap()
        .abandon(
            rt.registry().perspective_named("Balances").unwrap().name,
            "dropped",
        )
        .await
        .unwrap();
    let before = APPLIES.load(Ordering::Relaxed);
    let report = bounded(rt.rebuild_named("Balances", RebuildOptions::default()))
        .await
        .unwrap();
    let applied = APPLIES.load(Ordering::Relaxed) - before;
    assert!(report.resumed, "{report:?}");
    assert_eq!(report.events, 400);
    // Finished work is not redone: only what the shadow lacked was applied.
    assert_eq!(applied, 400 - done_before, "{report:?}");
    assert_eq!(report.folded, 400 - done_before);
    NEW_CODE.store(false, Ordering::Relaxed);
    for account in &accounts {
        let m = rt
            .lens::<Balances>()
            .get((*account).into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.deposits, 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_versions_are_recorded_then_rebuilt_or_refused() {
    let _serial = SERIAL.lock().await;
    let rt = Runtime::in_memory().unwrap();
    let accounts: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    deposit(&rt, &accounts, 2).await;
    rt.wait_idle().await;
    let store = rt.services().perspective_store();
    let rebuilds = store.rebuilds().unwrap();
    assert_eq!(rebuilds.built_version("Balances").await.unwrap(), None);
    // Models built by an older release, at version 1.
    rebuilds.record_version("Versioned3", 1).await.unwrap();
    let err = rt
        .check_perspective_versions(VersionPolicy::Refuse)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PerspectiveVersion {
                perspective: "Versioned3",
                declared: 3,
                built: 1
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("whizbang rebuild Versioned3"),
        "{err}"
    );
    let checks = rt
        .check_perspective_versions(VersionPolicy::Rebuild)
        .await
        .unwrap();
    let of = |name: &str| checks.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    // Recorded by the first check, before it refused `Versioned3`.
    assert_eq!(of("Balances"), VersionCheck::Current(1));
    match of("Versioned3") {
        VersionCheck::Rebuilt(report) => assert_eq!((report.version, report.events), (3, 6)),
        other => panic!("expected a rebuild, got {other:?}"),
    }
    assert_eq!(rebuilds.built_version("Versioned3").await.unwrap(), Some(3));
    let again = rt
        .check_perspective_versions(VersionPolicy::Refuse)
        .await
        .unwrap();
    assert!(again
        .iter()
        .all(|(_, c)| matches!(c, VersionCheck::Current(_))));
    // An unknown name is a typed error.
    assert!(matches!(
        rt.rebuild_named("nope", RebuildOptions::default()).await,
        Err(Error::UnknownPerspective { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_synced_by_the_swap_and_then_reads_its_event() {
    let _serial = SERIAL.lock().await;
    NEW_CODE.store(false, Ordering::Relaxed);
    let rt = Runtime::in_memory().unwrap();
    let account = Uuid::now_v7();
    deposit(&rt, &[account], 3).await;
    rt.wait_idle().await;
    // Paused: from here only the rebuild's swap can apply the next event.
    rt.runner().pause();
    deposit(&rt, &[account], 1).await;
    let waiter = {
        let rt = rt.clone();
        tokio::spawn(async move {
            let options = PerspectiveSyncOptions::new(SyncFilter::for_stream(account))
                .timeout(std::time::Duration::from_secs(30));
            let r = rt.sync_awaiter().wait::<Balances>(options).await.unwrap();
            // Synced: the models it reads reflect the event.
            let m = rt
                .lens::<Balances>()
                .get(account.into())
                .await
                .unwrap()
                .unwrap();
            (r.outcome, m.deposits)
        })
    };
    let report = bounded(rt.rebuild_named("Balances", RebuildOptions::default()))
        .await
        .unwrap();
    assert_eq!(report.events, 4);
    let (outcome, deposits) = bounded(waiter).await.unwrap();
    assert_eq!(outcome, SyncOutcome::Synced);
    assert_eq!(deposits, 4);
    rt.runner().resume();
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "rebuild.closed")]
struct Closed {
    #[stream_key]
    account: Uuid,
}

/// Balances that an account's closing deletes (a tombstone).
struct Ledger;

#[perspective(model = Balance, name = "rebuild.ledger")]
impl Ledger {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
    fn closed(_: &mut Balance, _: &Closed) -> whizbang_core::Tombstone {
        whizbang_core::Tombstone
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_closed_while_a_rebuild_runs_are_gone_after_the_swap() {
    let _serial = SERIAL.lock().await;
    NEW_CODE.store(false, Ordering::Relaxed);
    for attempt in 0..5 {
        let rt = Runtime::in_memory().unwrap();
        let accounts: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
        deposit(&rt, &accounts, 10).await;
        rt.wait_idle().await;
        // While it rebuilds: more deposits, then half the accounts close.
        // Where a closing lands (a chunk, a later pass, the fenced last
        // pass, or the live models after the swap) depends on timing; the
        // closed account is gone whichever it was.
        let writer = {
            let rt = rt.clone();
            let accounts = accounts.clone();
            tokio::spawn(async move {
                deposit(&rt, &accounts, 5).await;
                for account in accounts.iter().step_by(2) {
                    let scope = rt.scope();
                    scope.publish(Closed { account: *account }).await.unwrap();
                    scope.complete().await.unwrap();
                }
            })
        };
        let options = RebuildOptions::default().chunk_events(25).fence_below(40);
        bounded(rt.rebuild_named("rebuild.ledger", options))
            .await
            .unwrap();
        writer.await.unwrap();
        rt.wait_idle().await;
        let lens = rt.lens::<Ledger>();
        for (i, account) in accounts.iter().enumerate() {
            let model = lens.get_by_key(*account).await.unwrap();
            if i % 2 == 0 {
                assert_eq!(model, None, "attempt {attempt}: closed account {i} is back");
            } else {
                assert_eq!(
                    model.map(|b| b.deposits),
                    Some(15),
                    "attempt {attempt}: account {i}"
                );
            }
        }
    }
}

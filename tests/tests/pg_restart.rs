//! A PostgreSQL restart in the middle of a run (`pg_ctl restart -m fast` on a
//! private server; the shared one is never touched), and a crash of it
//! (`pg_ctl stop -m immediate`, then a start that recovers from the WAL).
//!
//! A runtime on the whole PostgreSQL backend (`Postgres::connect_with` and
//! `.backend(pg)`: the stores, the LISTEN task and the partitioned runner)
//! appends from several tasks, each to streams of its own at an exact
//! expected version. The server restarts while they run. An append that fails
//! with a backend (connection) error is retried by the test, as a caller must:
//! at the same expected version, so a retry of an append that did commit
//! (`Stored::Unknown`, its acknowledgement lost with the connection) is a
//! concurrency conflict whose stored event the test recognises as its own.
//!
//! Afterwards: every acknowledged append is stored exactly once and nothing
//! else is; versions are gap-free per stream; `Runtime::catch_up` on every
//! stream leaves every model equal to a fresh fold of its events; and the
//! same runtime (its pools, its runner, its sync backend) works again without
//! being rebuilt: a new append is stored at the first try and a wait on it is
//! `Synced`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::error::Stored;
use whizbang_core::{
    Error, ExpectedVersion, PerspectiveSyncOptions, Runtime, StreamId, SyncFilter, SyncOutcome,
};
use whizbang_postgres::{Postgres, PostgresOptions};
use whizbang_tests::pg::db::FreshDb;
use whizbang_tests::pg::ledger::{self, Tally};
use whizbang_tests::pg::server::PgServer;

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(60);
/// The whole run (appends, restart, retries) must finish within this.
const RUN_BOUND: Duration = Duration::from_secs(180);
/// Appending tasks, streams per task, events per stream.
const TASKS: usize = 4;
const STREAMS_PER_TASK: usize = 3;
const EVENTS_PER_STREAM: u64 = 60;
/// How many times the server restarts during the run.
const RESTARTS: u64 = 3;
const TOTAL: u64 = TASKS as u64 * STREAMS_PER_TASK as u64 * EVENTS_PER_STREAM;

whizbang_tests::pg_totals!();

/// What the appending tasks observed.
#[derive(Default)]
struct Counts {
    /// Acknowledged appends ("stream:seq").
    acked: Mutex<BTreeSet<String>>,
    /// Attempts that failed with a backend error and were retried.
    retried: AtomicU64,
    /// Retries that found their event already stored (the acknowledgement
    /// of a committed append was lost with the connection).
    found_committed: AtomicU64,
}

/// Appends `seq` to `stream` at `expected`, retrying backend errors until it
/// is stored, exactly once.
async fn append_until_stored(rt: &Runtime, counts: &Counts, stream: Uuid, seq: u64) {
    let expected = if seq == 1 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(seq - 1)
    };
    let event = Added {
        account: stream,
        seq,
        amount: amount(stream, seq),
    };
    loop {
        let scope = rt.scope();
        let result = scope.publish_expecting(event.clone(), expected).await;
        // Async perspectives are signalled when the scope completes.
        let _ = scope.complete().await;
        match result {
            Ok(_) => break,
            Err(Error::Concurrency { actual, .. }) if actual == seq => {
                // An earlier attempt committed and lost its acknowledgement:
                // the event at `seq` must be ours.
                let stored = read_back(rt, stream, seq).await;
                assert_eq!(
                    stored, seq,
                    "stream {stream} version {seq} holds seq {stored}, not ours"
                );
                counts.found_committed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Err(Error::Backend { stored, .. }) => {
                assert!(
                    matches!(stored, Stored::Nothing | Stored::Unknown),
                    "{stored:?}"
                );
                counts.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("append {stream}:{seq} failed unexpectedly: {other:?}"),
        }
    }
    counts
        .acked
        .lock()
        .unwrap()
        .insert(format!("{stream}:{seq}"));
}

/// The `seq` of the event stored at `version` of `stream`, retrying while
/// the server is away.
async fn read_back(rt: &Runtime, stream: Uuid, version: u64) -> u64 {
    loop {
        match rt
            .event_store()
            .read_stream(StreamId::from(stream), version - 1)
            .await
        {
            Ok(events) => {
                let first = events.first().expect("the conflicting event is stored");
                assert_eq!(first.stream_version, version);
                let added: Added = serde_json::from_str(first.data.get()).unwrap();
                return added.seq;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

/// How the server goes down and comes back.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// `pg_ctl restart -m fast`.
    Fast,
    /// `pg_ctl stop -m immediate` and a start: a crash and its recovery.
    Crash,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_restart_mid_run_loses_nothing_duplicates_nothing_and_the_pool_recovers() {
    restarts_mid_run(Restart::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_crash_and_recovery_mid_run_loses_nothing_and_duplicates_nothing() {
    restarts_mid_run(Restart::Crash).await;
}

async fn restarts_mid_run(how: Restart) {
    let server = Arc::new(
        tokio::task::spawn_blocking(PgServer::start)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let db = bounded(FreshDb::on(&server.url())).await;
    let pool = db.pool.clone();
    let pg = bounded(Postgres::connect_with(
        &db.url,
        PostgresOptions::default()
            .pool_size(8)
            .lease_duration(Duration::from_secs(2))
            .rescan_interval(Duration::from_millis(200)),
    ))
    .await
    .unwrap();
    let rt = Runtime::builder().backend(pg.clone()).build().unwrap();

    let counts = Arc::new(Counts::default());
    let streams: Vec<Vec<Uuid>> = (0..TASKS)
        .map(|_| (0..STREAMS_PER_TASK).map(|_| Uuid::now_v7()).collect())
        .collect();

    let run = async {
        let mut tasks = Vec::new();
        for own in streams.clone() {
            let (rt, counts) = (rt.clone(), Arc::clone(&counts));
            tasks.push(tokio::spawn(async move {
                for seq in 1..=EVENTS_PER_STREAM {
                    for &stream in &own {
                        append_until_stored(&rt, &counts, stream, seq).await;
                    }
                }
            }));
        }

        // Restart at a quarter, half and three quarters of the acknowledged
        // appends, while the tasks keep appending.
        let mut marks = Vec::new();
        for quarter in 1..=RESTARTS {
            while (counts.acked.lock().unwrap().len() as u64) < TOTAL * quarter / (RESTARTS + 1) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let before = counts.acked.lock().unwrap().len() as u64;
            let s = Arc::clone(&server);
            tokio::task::spawn_blocking(move || match how {
                Restart::Fast => s.restart(),
                Restart::Crash => s.crash_restart(),
            })
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
            marks.push((before, counts.acked.lock().unwrap().len() as u64));
        }

        for task in tasks {
            task.await.expect("an appending task panicked");
        }
        marks
    };
    let marks = tokio::time::timeout(RUN_BOUND, run)
        .await
        .expect("the run finished within its bound");
    let retried = counts.retried.load(Ordering::Relaxed);
    let found = counts.found_committed.load(Ordering::Relaxed);
    eprintln!(
        "{how:?} restarts (acknowledged appends when each began and ended): {marks:?} of {TOTAL}; \
         {retried} attempts retried, {found} found already committed"
    );
    let last_end = marks.last().map_or(TOTAL, |m| m.1);
    assert!(
        last_end < TOTAL,
        "the restarts ended before the run did ({last_end} of {TOTAL} acknowledged)"
    );

    // Every acknowledged append stored exactly once, nothing else stored.
    let acked = counts.acked.lock().unwrap().clone();
    assert_eq!(acked.len() as u64, TOTAL);
    let seen = bounded(ledger::event_keys(&pool, "seq")).await.unwrap();
    let tally = Tally::of(acked, seen);
    tally.assert_exact();
    let gaps = bounded(ledger::version_gaps(&pool)).await.unwrap();
    assert!(gaps.is_empty(), "versions not gap-free: {gaps:#?}");

    // What the runner left by itself (its retries outlast a restart).
    bounded(rt.wait_idle()).await;
    let stale = bounded(ledger::check_all_folds(&pool, TOTALS, fold_totals))
        .await
        .unwrap();
    eprintln!(
        "before catch-up, {} models differ from a fresh fold",
        stale.len()
    );

    // Catch every stream up; then every model is a fresh fold.
    for &stream in streams.iter().flatten() {
        bounded(rt.catch_up(TOTALS, StreamId::from(stream)))
            .await
            .unwrap_or_else(|e| panic!("catch up {stream}: {e:?}"));
    }
    let wrong = bounded(ledger::check_all_folds(&pool, TOTALS, fold_totals))
        .await
        .unwrap();
    assert!(
        wrong.is_empty(),
        "{} of {} models differ from a fresh fold:\n{}",
        wrong.len(),
        TASKS * STREAMS_PER_TASK,
        wrong
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The same runtime works again: a new append at the first try, applied
    // by its runner, and a wait on it is Synced.
    let fresh_stream = Uuid::now_v7();
    let scope = rt.scope();
    bounded(scope.publish_expecting(
        Added {
            account: fresh_stream,
            seq: 1,
            amount: 5,
        },
        ExpectedVersion::NoStream,
    ))
    .await
    .unwrap_or_else(|e| panic!("the pool did not recover by itself: {e:?}"));
    let options =
        PerspectiveSyncOptions::new(SyncFilter::current_scope()).timeout(Duration::from_secs(20));
    let waited = bounded(scope.sync_awaiter().wait::<AccountTotals>(options))
        .await
        .unwrap();
    assert_eq!(waited.outcome, SyncOutcome::Synced, "{waited:?}");
    bounded(scope.complete()).await.unwrap();
    let check = bounded(ledger::fresh_fold(&pool, TOTALS, fresh_stream, fold_totals))
        .await
        .unwrap();
    assert!(check.matches(), "{check}");

    drop(rt);
    bounded(pg.close()).await;
    drop(db);
    let server = Arc::into_inner(server).expect("the only handle");
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
}

//! A PostgreSQL restart, then a crash, in the middle of a run with the
//! runners in child processes.
//!
//! The test starts a private server (the shared one is never touched), two
//! `pg_appender runner` children on a fresh database in it, and appends from
//! its own process a round of one event on each of 300 streams every 100 ms
//! (an append cut by the restart is retried at the same expected version; a
//! retry that finds its events stored counts as stored). Once the runners
//! are applying, the server restarts (`pg_ctl restart -m fast`); once
//! everything appended before that restart is applied, it crashes and
//! recovers (`pg_ctl stop -m immediate`, then a start that replays the
//! write-ahead log); once everything appended before the crash is applied,
//! the appends stop.
//!
//! The runners are never restarted: their pools, LISTEN connections and
//! leases recover by themselves. At the end: every event stored once,
//! every cursor at its stream's head, every model equal to a fresh fold
//! (nothing skipped, nothing applied twice), no (stream, version) reported
//! by two commits, and both runners still running until told to stop.

use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use whizbang_postgres::PgEventStore;
use whizbang_tests::pg::cluster::Cluster;
use whizbang_tests::pg::db::FreshDb;
use whizbang_tests::pg::ledger;
use whizbang_tests::pg::runners::{self, AppendPace, AppliedLog, BackgroundAppender};
use whizbang_tests::pg::server::PgServer;

whizbang_tests::pg_totals!();

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(60);
const STREAMS: usize = 300;
const PER_TX: usize = 100;
const PACE: Duration = Duration::from_millis(100);
const MAX_ROUNDS: u64 = 600;
const LEASE: Duration = Duration::from_secs(2);
const BATCH: u32 = 50;
const PROGRAM: &str = env!("CARGO_BIN_EXE_pg_appender");

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

/// Runs `f` (which blocks) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    bounded(tokio::task::spawn_blocking(f))
        .await
        .expect("the blocking step panicked")
}

/// Waits until every stream's cursor reached at least `version` (each
/// stream has at least that many events), retrying while the server is away.
async fn applied_up_to(pool: &sqlx::PgPool, version: i64) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let least: Result<Option<i64>, _> = sqlx::query_scalar(
            "select min(coalesce(c.version, 0))
               from wh_streams s
               left join wh_perspective_cursors c
                      on c.perspective = $1 and c.model_key = s.stream_id",
        )
        .bind(TOTALS)
        .fetch_one(pool)
        .await;
        if matches!(least, Ok(Some(v)) if v >= version) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams not applied up to {version} within {BOUND:?} (least cursor: {least:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_processes_recover_from_a_server_restart_and_a_crash_and_apply_everything_once() {
    let server = Arc::new(
        blocking(PgServer::start)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let db = bounded(FreshDb::on(&server.url())).await;
    let url = db.url.clone();
    let cluster = blocking(move || {
        let mut cluster =
            Cluster::spawn(2, |_| runners::runner_command(PROGRAM, &url, LEASE, BATCH));
        for i in 0..2 {
            cluster[i]
                .wait_line(|l| l.starts_with("ready "), BOUND)
                .unwrap_or_else(|e| panic!("runner {i} never started: {e}"));
        }
        cluster
    })
    .await;

    let streams: Vec<Uuid> = (0..STREAMS).map(|_| Uuid::now_v7()).collect();
    let appender = BackgroundAppender::start(
        PgEventStore::new(db.pool.clone()),
        streams.clone(),
        amount,
        AppendPace {
            per_tx: PER_TX,
            pace: PACE,
            max_rounds: MAX_ROUNDS,
            bound: BOUND,
        },
    );

    // Runners applying; then the restart; everything appended before it
    // applied after it; then the crash; the same again.
    applied_up_to(&db.pool, 3).await;
    let mut marks = Vec::new();
    for crash in [false, true] {
        let before = appender.rounds_done();
        let s = Arc::clone(&server);
        blocking(move || {
            if crash {
                s.crash_restart()
            } else {
                s.restart()
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        applied_up_to(&db.pool, i64::try_from(before).unwrap()).await;
        marks.push((before, appender.rounds_done()));
    }
    let (rounds, stats) = appender.stop("the crash", BOUND).await;
    runners::wait_applied(&db.pool, TOTALS, BOUND)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "restart and crash at rounds {marks:?} (before, once caught up) of {rounds}; \
         {} append transactions retried, {} found committed",
        stats.retried, stats.found_committed
    );

    // The runners survived on their own; now they stop cleanly.
    let lines = blocking(move || {
        let mut cluster = cluster;
        for i in 0..2 {
            assert!(
                !cluster[i].has_exited(),
                "runner {i} died: {:?}",
                cluster[i].lines()
            );
            cluster[i].close_stdin();
        }
        let statuses = cluster
            .wait_all(BOUND)
            .unwrap_or_else(|running| panic!("runners {running:?} did not stop"));
        assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
        (0..2)
            .map(|i| {
                cluster[i]
                    .read_to_end(BOUND)
                    .expect("stdout closes")
                    .to_vec()
            })
            .collect::<Vec<_>>()
    })
    .await;

    let expected = bounded(ledger::assert_stored_once_and_folded(
        &db.pool,
        &streams,
        rounds,
        TOTALS,
        fold_totals,
    ))
    .await;

    // No version reported by two commits. (A commit whose answer was lost
    // with the server is applied but not reported: not counted.)
    let mut log = AppliedLog::new();
    for (i, lines) in lines.iter().enumerate() {
        log.record(&format!("runner {i}"), lines);
    }
    assert!(log.failures().is_empty(), "{:?}", log.failures());
    let twice = log.twice();
    assert!(twice.is_empty(), "applied twice: {twice:?}");
    let tally = log.tally(expected);
    assert!(tally.unexpected.is_empty(), "{tally}");
    eprintln!(
        "reports: {} of {} versions reported applied; per runner: {:?}",
        log.len(),
        tally.expected,
        log.by_process()
    );

    drop(db);
    let server = Arc::into_inner(server).expect("the only handle");
    blocking(move || drop(server)).await;
}

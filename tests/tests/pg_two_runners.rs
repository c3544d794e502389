//! Two runner processes share the work: 10,000 events on 500 streams, each
//! applied exactly once and in order per stream.
//!
//! Two `pg_appender runner` children start on a fresh database and split the
//! partitions (eight each). The test then appends `pg_totals!` events from
//! its own process (which applies nothing): 20 rounds of one event on each
//! of the 500 streams, 100 streams per transaction, while the runners apply.
//! Once every cursor reached its stream's head the runners stop cleanly.
//!
//! Checked from the models: every stored model equals a fresh fold of its
//! stream (count, sum, last seq; the model's `disorder` counter is 0, so no
//! event was applied twice or out of order) and the counts add up to 10,000.
//! Checked from the runners' reports: every (stream, version) was reported
//! by exactly one commit, and both runners applied events.

use std::time::Duration;
use uuid::Uuid;
use whizbang_postgres::PgEventStore;
use whizbang_tests::pg::cluster::Cluster;
use whizbang_tests::pg::db::FreshDb;
use whizbang_tests::pg::ledger;
use whizbang_tests::pg::runners::{self, AppliedLog};

whizbang_tests::pg_totals!();

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(60);
const STREAMS: usize = 500;
const EVENTS_PER_STREAM: u64 = 20;
const PER_TX: usize = 100;
const LEASE: Duration = Duration::from_secs(2);
const BATCH: u32 = 200;
const PROGRAM: &str = env!("CARGO_BIN_EXE_pg_appender");

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

/// Runs `f` (which blocks on child processes) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    bounded(tokio::task::spawn_blocking(f))
        .await
        .expect("the blocking step panicked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runner_processes_split_the_partitions_and_apply_every_event_once_in_order() {
    let db = bounded(FreshDb::create()).await;
    let url = db.url.clone();
    let (cluster, ids) = blocking(move || {
        let mut cluster =
            Cluster::spawn(2, |_| runners::runner_command(PROGRAM, &url, LEASE, BATCH));
        let ids: Vec<Uuid> = (0..2)
            .map(|i| {
                let ready = cluster[i]
                    .wait_line(|l| l.starts_with("ready "), BOUND)
                    .unwrap_or_else(|e| panic!("runner {i} never started: {e}"));
                runners::ready_instance(&ready).expect("ready carries the instance id")
            })
            .collect();
        (cluster, ids)
    })
    .await;

    // Both hold their half of the partitions before any event exists.
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let owners = bounded(runners::lease_owners(&db.pool, TOTALS))
            .await
            .unwrap();
        if ids.iter().all(|id| owners.get(id) == Some(&8)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runners never split the partitions: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let streams: Vec<Uuid> = (0..STREAMS).map(|_| Uuid::now_v7()).collect();
    let store = PgEventStore::new(db.pool.clone());
    let started = std::time::Instant::now();
    for seq in 1..=EVENTS_PER_STREAM {
        let deadline = tokio::time::Instant::now() + BOUND;
        bounded(runners::append_round(
            &store, &streams, seq, amount, PER_TX, deadline,
        ))
        .await
        .unwrap_or_else(|e| panic!("append round {seq}: {e}"));
    }
    let appended = started.elapsed();
    runners::wait_applied(&db.pool, TOTALS, BOUND)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{} events appended in {appended:?}, all applied after {:?}",
        STREAMS as u64 * EVENTS_PER_STREAM,
        started.elapsed()
    );

    // Stop both; collect what each reported.
    let lines = blocking(move || {
        let mut cluster = cluster;
        for i in 0..2 {
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

    // The store: every event once, versions gap-free.
    let expected = bounded(ledger::assert_stored_once_and_folded(
        &db.pool,
        &streams,
        EVENTS_PER_STREAM,
        TOTALS,
        fold_totals,
    ))
    .await;
    let (models, count, disorder): (i64, i64, i64) = bounded(
        sqlx::query_as(
            "select count(*), sum((data->>'count')::int8)::int8,
                    sum((data->>'disorder')::int8)::int8
               from wh_perspective_rows where perspective = $1",
        )
        .bind(TOTALS)
        .fetch_one(&db.pool),
    )
    .await
    .unwrap();
    assert_eq!(
        (models, count, disorder),
        (STREAMS as i64, STREAMS as i64 * EVENTS_PER_STREAM as i64, 0)
    );

    // The reports: each version applied by exactly one commit, by both runners.
    let mut log = AppliedLog::new();
    for (i, lines) in lines.iter().enumerate() {
        log.record(&format!("runner {i}"), lines);
    }
    assert!(log.failures().is_empty(), "{:?}", log.failures());
    log.tally(expected).assert_exact();
    let by_process = log.by_process();
    eprintln!("events applied per runner: {by_process:?}");
    assert_eq!(by_process.len(), 2, "both runners applied: {by_process:?}");

    let owners = bounded(runners::lease_owners(&db.pool, TOTALS))
        .await
        .unwrap();
    assert!(owners.is_empty(), "leases still held: {owners:?}");
}

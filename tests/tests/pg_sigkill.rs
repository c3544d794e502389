//! SIGKILL appending processes at least 10 times while events flow.
//!
//! Two `pg_appender append` children, each with a runtime on the PostgreSQL
//! backend (its runner on: it applies the `pg_totals!` perspective and takes
//! its share of the partitions),
//! append to streams of their own at exact expected versions. The test kills
//! one of them with SIGKILL after a varying number of acknowledged appends
//! (while its runner is applying), reaps it and starts it again; it resumes
//! each stream after its last stored event. At the end: every expected event
//! is stored exactly once (every acknowledged one among them), versions are
//! gap-free, and after `Runtime::catch_up` every model equals a fresh fold.
//!
//! This test covers what the stores promise under SIGKILL: an append and a
//! perspective commit are whole or absent, and a dead session's claim goes.
//! Killing runner processes is `tests/pg_sigkill_runners.rs`.

use std::time::Duration;
use whizbang_core::{Runtime, StreamId};
use whizbang_postgres::{Postgres, PostgresOptions};
use whizbang_tests::pg::appenders::{kill_appenders, KillPlan};
use whizbang_tests::pg::db::FreshDb;
use whizbang_tests::pg::ledger;

whizbang_tests::pg_totals!();

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_appending_processes_loses_nothing_and_applies_nothing_twice() {
    let db = bounded(FreshDb::create()).await;
    let plan = KillPlan::new(env!("CARGO_BIN_EXE_pg_appender"), "append", 2, 3);
    // Stored exactly once, gap-free, at least 10 kills: checked in there.
    let run = kill_appenders(&db, &plan).await;

    let stale = bounded(ledger::check_all_folds(&db.pool, TOTALS, fold_totals))
        .await
        .unwrap();
    eprintln!(
        "{} kills, {} appends acknowledged; before catch-up {} of {} models differ from a \
         fresh fold",
        run.kills,
        run.acked.len(),
        stale.len(),
        plan.all_streams().count()
    );

    // Catch every stream up here (a backend without a runner: only these
    // catch-ups apply); then every model is a fresh fold.
    let pg = bounded(Postgres::connect_with(
        &db.url,
        PostgresOptions::default().pool_size(6).runner(false),
    ))
    .await
    .unwrap();
    let rt = Runtime::builder().backend(pg.clone()).build().unwrap();
    for stream in plan.all_streams() {
        bounded(rt.catch_up(TOTALS, StreamId::from(stream)))
            .await
            .unwrap_or_else(|e| panic!("catch up {stream}: {e:?}"));
    }
    let wrong = bounded(ledger::check_all_folds(&db.pool, TOTALS, fold_totals))
        .await
        .unwrap();
    assert!(
        wrong.is_empty(),
        "models differ from a fresh fold:\n{}",
        wrong
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(rt);
    bounded(pg.close()).await;
}

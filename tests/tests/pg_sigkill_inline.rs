//! SIGKILL appending processes that apply an inline perspective, at least 10
//! times while events flow, with no runner anywhere: every inline model must
//! equal a fresh fold of the stored events with no catch-up at all.
//!
//! Two `pg_appender append-inline` children (the partitioned runner off, the
//! in-process runner paused, only the inline `pg_totals.inline` registered)
//! append to streams of their own at exact expected versions. The test kills
//! one of them with SIGKILL after a varying number of acknowledged appends,
//! reaps it and starts it again; it resumes each stream after its last stored
//! event. At the end: every expected event is stored exactly once, versions
//! are gap-free, and every inline model (version and value) already equals a
//! fresh fold: the append's transaction wrote events and models together, so
//! no kill can leave one without the other. Nothing catches up here.

use std::time::Duration;
use whizbang_tests::pg::appenders::{kill_appenders, KillPlan};
use whizbang_tests::pg::db::FreshDb;
use whizbang_tests::pg::ledger;

whizbang_tests::pg_totals!();
whizbang_tests::pg_inline_totals!();

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_appenders_leave_every_inline_model_a_fresh_fold_without_catch_up() {
    let db = bounded(FreshDb::create()).await;
    let plan = KillPlan::new(env!("CARGO_BIN_EXE_pg_appender"), "append-inline", 2, 3);
    // Stored exactly once, gap-free, at least 10 kills: checked in there.
    let run = kill_appenders(&db, &plan).await;

    // No runner ran and nothing caught up: the appends alone wrote these.
    let wrong = bounded(ledger::check_all_folds(
        &db.pool,
        INLINE_TOTALS,
        fold_totals,
    ))
    .await
    .unwrap();
    eprintln!(
        "{} kills, {} appends acknowledged; {} of {} inline models differ from a fresh fold",
        run.kills,
        run.acked.len(),
        wrong.len(),
        plan.all_streams().count()
    );
    assert!(
        wrong.is_empty(),
        "inline models differ from a fresh fold:\n{}",
        wrong
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

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

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;
use uuid::Uuid;
use whizbang_tests::pg::cluster::{Cluster, WaitError};
use whizbang_tests::pg::db::FreshDb;
use whizbang_tests::pg::ledger::{self, Tally};

whizbang_tests::pg_totals!();
whizbang_tests::pg_inline_totals!();

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(60);
const CHILDREN: usize = 2;
const STREAMS_PER_CHILD: usize = 3;
const EVENTS_PER_STREAM: u64 = 200;
/// How many times a child is killed.
const KILLS: usize = 12;

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

fn appender(url: &str, streams: &[Uuid]) -> std::process::Command {
    let mut cmd = Cluster::command(env!("CARGO_BIN_EXE_pg_appender"));
    cmd.arg("append-inline")
        .arg(url)
        .arg(EVENTS_PER_STREAM.to_string());
    cmd.args(streams.iter().map(Uuid::to_string));
    cmd
}

/// What the children did, as the parent saw it.
struct Run {
    kills: usize,
    acked: BTreeSet<String>,
}

/// Runs the children, killing one at a time `KILLS` times, until both
/// finish. Blocking: run it off the async workers.
fn run_children(url: &str, streams: &[Vec<Uuid>]) -> Run {
    let mut cluster = Cluster::spawn(CHILDREN, |i| appender(url, &streams[i]));
    let mut acked = BTreeSet::new();
    let mut finished = [false; CHILDREN];
    let mut kills = 0;
    let keep = |acked: &mut BTreeSet<String>, lines: &[String]| {
        for line in lines {
            if let Some(key) = line.strip_prefix("appended ") {
                acked.insert(key.to_owned());
            }
        }
    };
    for k in 0..KILLS * 2 {
        if kills == KILLS || finished.iter().all(|f| *f) {
            break;
        }
        let i = k % CHILDREN;
        if finished[i] {
            continue;
        }
        // A varying number of appends before the kill: 10 to 47.
        let wanted = 10 + (k * 13) % 38;
        let mut seen = 0;
        while seen < wanted {
            match cluster[i].next_line(BOUND) {
                Ok(line) if line == "finished" => {
                    finished[i] = true;
                    break;
                }
                Ok(_) => seen += 1,
                Err(WaitError::Closed { lines }) => {
                    let status = cluster[i].wait_timeout(BOUND);
                    panic!("child {i} exited ({status:?}) before finishing; lines: {lines:?}");
                }
                Err(e) => panic!("child {i}: {e}"),
            }
        }
        if finished[i] {
            continue;
        }
        cluster[i].kill();
        let status = cluster[i]
            .wait_timeout(BOUND)
            .expect("the killed child exits");
        assert_eq!(
            status.signal(),
            Some(9),
            "child {i} died of SIGKILL: {status}"
        );
        keep(&mut acked, cluster[i].lines());
        cluster.respawn(i, appender(url, &streams[i]));
        kills += 1;
    }
    for (i, done) in finished.iter().enumerate() {
        if !done {
            cluster[i]
                .wait_line(|l| l == "finished", BOUND * 2)
                .unwrap_or_else(|e| panic!("child {i} never finished: {e}"));
        }
    }
    let statuses = cluster
        .wait_all(BOUND)
        .unwrap_or_else(|running| panic!("children {running:?} never exited"));
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
    for i in 0..CHILDREN {
        keep(&mut acked, cluster[i].lines());
    }
    Run { kills, acked }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_appenders_leave_every_inline_model_a_fresh_fold_without_catch_up() {
    let db = bounded(FreshDb::create()).await;
    let streams: Vec<Vec<Uuid>> = (0..CHILDREN)
        .map(|_| (0..STREAMS_PER_CHILD).map(|_| Uuid::now_v7()).collect())
        .collect();
    let url = db.url.clone();
    let children_streams = streams.clone();
    let run = tokio::time::timeout(
        BOUND * 5,
        tokio::task::spawn_blocking(move || run_children(&url, &children_streams)),
    )
    .await
    .expect("the children finished within the bound")
    .expect("the children's driver panicked");
    assert!(run.kills >= 10, "only {} kills landed", run.kills);

    // Every event stored exactly once, every acknowledged one among them.
    let expected: BTreeSet<String> = streams
        .iter()
        .flatten()
        .flat_map(|s| (1..=EVENTS_PER_STREAM).map(move |seq| format!("{s}:{seq}")))
        .collect();
    let not_expected: Vec<&String> = run.acked.difference(&expected).collect();
    assert!(not_expected.is_empty(), "acknowledged: {not_expected:?}");
    let seen = bounded(ledger::event_keys(&db.pool, "seq")).await.unwrap();
    let tally = Tally::of(expected, seen);
    tally.assert_exact();
    let gaps = bounded(ledger::version_gaps(&db.pool)).await.unwrap();
    assert!(gaps.is_empty(), "versions not gap-free: {gaps:#?}");

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
        CHILDREN * STREAMS_PER_CHILD
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

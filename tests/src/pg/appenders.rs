//! Appender processes killed with SIGKILL while they append: the driver the
//! `pg_sigkill*` tests share.
//!
//! [`kill_appenders`] runs `pg_appender <mode>` children, one per group of
//! streams, each appending `seq` 1..=N to its streams at exact expected
//! versions and printing `appended <stream>:<seq>` per acknowledged append. It
//! kills one child at a time with SIGKILL after a varying number of appends,
//! reaps it and starts it again (it resumes each stream after its last stored
//! event), until `kills` kills have landed and every child has finished. Then
//! it checks what every such test relies on: at least 10 kills landed, every
//! acknowledged append is an expected one, every expected event is stored
//! exactly once, and versions are gap-free. What the models must show is the
//! calling test's.

use super::cluster::{Cluster, WaitError};
use super::db::FreshDb;
use super::ledger::{self, Tally};
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;
use uuid::Uuid;

/// What to run and how often to kill it.
#[derive(Clone, Debug)]
pub struct KillPlan {
    /// The `pg_appender` binary (`env!("CARGO_BIN_EXE_pg_appender")`).
    pub program: &'static str,
    /// Its mode argument (`append`, `append-inline`).
    pub mode: &'static str,
    /// The streams of each child (one child per entry).
    pub streams: Vec<Vec<Uuid>>,
    /// Events appended to each stream.
    pub events_per_stream: u64,
    /// How many kills to land.
    pub kills: usize,
    /// No single wait may take longer than this.
    pub bound: Duration,
}

impl KillPlan {
    /// `children` children with `streams_per_child` new streams each.
    #[must_use]
    pub fn new(
        program: &'static str,
        mode: &'static str,
        children: usize,
        streams_per_child: usize,
    ) -> KillPlan {
        KillPlan {
            program,
            mode,
            streams: (0..children)
                .map(|_| (0..streams_per_child).map(|_| Uuid::now_v7()).collect())
                .collect(),
            events_per_stream: 200,
            kills: 12,
            bound: Duration::from_secs(60),
        }
    }

    /// Every stream of every child.
    pub fn all_streams(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.streams.iter().flatten().copied()
    }

    fn command(&self, url: &str, child: usize) -> std::process::Command {
        let mut cmd = Cluster::command(self.program);
        cmd.arg(self.mode)
            .arg(url)
            .arg(self.events_per_stream.to_string());
        cmd.args(self.streams[child].iter().map(Uuid::to_string));
        cmd
    }
}

/// What the children did, as the parent saw it.
#[derive(Debug)]
pub struct KillRun {
    /// Kills that landed.
    pub kills: usize,
    /// Appends the children acknowledged (`<stream>:<seq>`).
    pub acked: BTreeSet<String>,
}

/// Runs `plan` against `db` and checks the stored events (see the module
/// docs). Panics, naming what went wrong, when a check fails.
pub async fn kill_appenders(db: &FreshDb, plan: &KillPlan) -> KillRun {
    let url = db.url.clone();
    let driver_plan = plan.clone();
    let run = tokio::time::timeout(
        plan.bound * 5,
        tokio::task::spawn_blocking(move || run_children(&url, &driver_plan)),
    )
    .await
    .expect("the children finished within the bound")
    .expect("the children's driver panicked");
    assert!(run.kills >= 10, "only {} kills landed", run.kills);

    let expected: BTreeSet<String> = plan
        .all_streams()
        .flat_map(|s| (1..=plan.events_per_stream).map(move |seq| format!("{s}:{seq}")))
        .collect();
    let not_expected: Vec<&String> = run.acked.difference(&expected).collect();
    assert!(not_expected.is_empty(), "acknowledged: {not_expected:?}");
    let bounded = |f| tokio::time::timeout(plan.bound, f);
    let seen = bounded(ledger::event_keys(&db.pool, "seq"))
        .await
        .expect("read the events within the bound")
        .unwrap();
    Tally::of(expected, seen).assert_exact();
    let gaps = tokio::time::timeout(plan.bound, ledger::version_gaps(&db.pool))
        .await
        .expect("read the versions within the bound")
        .unwrap();
    assert!(gaps.is_empty(), "versions not gap-free: {gaps:#?}");
    run
}

/// Blocking: run it off the async workers.
fn run_children(url: &str, plan: &KillPlan) -> KillRun {
    let children = plan.streams.len();
    let bound = plan.bound;
    let mut cluster = Cluster::spawn(children, |i| plan.command(url, i));
    let mut acked = BTreeSet::new();
    let mut finished = vec![false; children];
    let mut kills = 0;
    let keep = |acked: &mut BTreeSet<String>, lines: &[String]| {
        for line in lines {
            if let Some(key) = line.strip_prefix("appended ") {
                acked.insert(key.to_owned());
            }
        }
    };
    for k in 0..plan.kills * 2 {
        if kills == plan.kills || finished.iter().all(|f| *f) {
            break;
        }
        let i = k % children;
        if finished[i] {
            continue;
        }
        // A varying number of appends before the kill: 10 to 47.
        let wanted = 10 + (k * 13) % 38;
        let mut seen = 0;
        while seen < wanted {
            match cluster[i].next_line(bound) {
                Ok(line) if line == "finished" => {
                    finished[i] = true;
                    break;
                }
                Ok(_) => seen += 1,
                Err(WaitError::Closed { lines }) => {
                    let status = cluster[i].wait_timeout(bound);
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
            .wait_timeout(bound)
            .expect("the killed child exits");
        assert_eq!(
            status.signal(),
            Some(9),
            "child {i} died of SIGKILL: {status}"
        );
        keep(&mut acked, cluster[i].lines());
        cluster.respawn(i, plan.command(url, i));
        kills += 1;
    }
    for (i, done) in finished.iter().enumerate() {
        if !done {
            cluster[i]
                .wait_line(|l| l == "finished", bound * 2)
                .unwrap_or_else(|e| panic!("child {i} never finished: {e}"));
        }
    }
    let statuses = cluster
        .wait_all(bound)
        .unwrap_or_else(|running| panic!("children {running:?} never exited"));
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
    for i in 0..children {
        keep(&mut acked, cluster[i].lines());
    }
    KillRun { kills, acked }
}

//! SIGKILL runner processes mid-batch, again and again, while events flow:
//! the realtime `pg_totals!` perspective, and the held-back
//! `pg_batched_totals!` one (`batch(30, "20ms")`: the partitioned runner
//! applies it in runs, one claim transaction per run of up to 100 streams
//! with the partition checkpoints moving in that same transaction).
//!
//! Two `pg_appender runner` (or `runner-batched`) children (1 s leases,
//! batches of 50 events) apply the perspective while the test appends from
//! its own process (which applies nothing): a round of one event on each of
//! 100 streams every 100 ms. The test kills one runner at a time with
//! SIGKILL right after it reported a commit, 12 times, alternating between
//! them, and starts a new runner in its place; the survivor and the newcomer
//! take the dead one's partitions once its leases expire. After each kill
//! the test counts the events of the dead runner's partitions that were
//! applied but lay past the partition's checkpoint: a batch cut in the
//! middle, which the next owner reads again and must not apply twice (for
//! the realtime perspective at least one kill must do so). The two tests
//! run one after the other.
//!
//! At the end (appends stopped, every cursor at its stream's head, runners
//! stopped cleanly): every event stored once, every model equal to a fresh
//! fold (its `disorder` counter 0: nothing applied twice or out of order),
//! and no (stream, version) reported by two commits, counting the lines of
//! the killed runners too.

use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;
use uuid::Uuid;
use whizbang_postgres::PgEventStore;
use whizbang_tests::pg::cluster::{Cluster, WaitError};
use whizbang_tests::pg::db::FreshDb;
use whizbang_tests::pg::ledger;
use whizbang_tests::pg::runners::{self, AppendPace, AppliedLog, BackgroundAppender};

whizbang_tests::pg_totals!();
whizbang_tests::pg_batched_totals!();

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(60);
const RUNNERS: usize = 2;
const STREAMS: usize = 100;
const PER_TX: usize = 50;
/// Between append rounds.
const PACE: Duration = Duration::from_millis(100);
/// Rounds appended at most (the backlog stays bounded).
const MAX_ROUNDS: u64 = 300;
const KILLS: usize = 12;
const LEASE: Duration = Duration::from_secs(1);
const BATCH: u32 = 50;
const PROGRAM: &str = env!("CARGO_BIN_EXE_pg_appender");

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

/// Events applied (cursor at or past them) that lie past their partition's
/// checkpoint, in the partitions `owner` leases: what a batch in progress
/// has done.
async fn applied_past_checkpoint(
    pool: &sqlx::PgPool,
    perspective: &str,
    owner: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "select count(*)
           from wh_partition_leases l
           join wh_events e on e.partition = l.partition
           left join wh_feed_checkpoints cp
                  on cp.perspective = l.perspective and cp.partition = l.partition
           join wh_perspective_cursors c
                  on c.perspective = l.perspective and c.model_key = e.stream_id
          where l.perspective = $1 and l.owner = $2
            and (e.tx_id, e.global_position)
                > (coalesce(cp.tx_id, '0'::xid8), coalesce(cp.global_position, 0))
            and c.version >= e.stream_version",
    )
    .bind(perspective)
    .bind(owner)
    .fetch_one(pool)
    .await
}

/// What the kill loop saw.
struct Kills {
    /// The runners running at the end.
    cluster: Cluster,
    /// Their labels.
    labels: Vec<String>,
    /// Kills after which the dead runner's partitions held applied events
    /// past their checkpoint (a batch cut in the middle).
    mid_batch: usize,
    /// The killed runners' lines, by label (`runner <i>#<generation>`).
    lines: Vec<(String, Vec<String>)>,
}

/// Which perspective the runners apply, and how.
#[derive(Clone, Copy)]
struct Variant {
    /// Its name.
    perspective: &'static str,
    /// The `pg_appender` role that runs it.
    role: &'static str,
    /// Whether some kill must cut a batch in the middle. A held-back run's
    /// checkpoint commits with its claim, yet applied events may lie past
    /// it (a claim applies each stream up to its head, beyond what the
    /// run's feed read saw): reported, not required.
    cut_required: bool,
}

const REALTIME: Variant = Variant {
    perspective: TOTALS,
    role: "runner",
    cut_required: true,
};

const HELD_BACK: Variant = Variant {
    perspective: BATCHED_TOTALS,
    role: "runner-batched",
    cut_required: false,
};

/// One kill test at a time: each already loads the 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts the runners and kills one `KILLS` times, respawning it each time.
/// Blocking: runs on its own thread, with `rt` for the database checks.
fn kill_loop(
    rt: &tokio::runtime::Handle,
    pool: &sqlx::PgPool,
    url: &str,
    variant: Variant,
) -> Kills {
    let command = || runners::runner_command_as(variant.role, PROGRAM, url, LEASE, BATCH);
    let mut cluster = Cluster::spawn(RUNNERS, |_| command());
    let mut generation = [0usize; RUNNERS];
    let mut lines = Vec::new();
    let mut mid_batch = 0;
    let ready = |cluster: &mut Cluster, i: usize| {
        let line = cluster[i]
            .wait_line(|l| l.starts_with("ready "), BOUND)
            .unwrap_or_else(|e| panic!("runner {i} never started: {e}"));
        runners::ready_instance(&line).expect("ready carries the instance id")
    };
    let mut ids: Vec<Uuid> = (0..RUNNERS).map(|i| ready(&mut cluster, i)).collect();
    for k in 0..KILLS {
        let i = k % RUNNERS;
        // A varying number of commits first: 1 to 9.
        let wanted = 1 + (k * 7) % 9;
        let mut commits = 0;
        while commits < wanted {
            match cluster[i].next_line(BOUND) {
                Ok(line) if line.starts_with("applied ") => commits += 1,
                Ok(line) if line.starts_with("failed ") => panic!("runner {i}: {line}"),
                Ok(_) => {}
                Err(WaitError::Closed { lines }) => {
                    let status = cluster[i].wait_timeout(BOUND);
                    panic!("runner {i} exited ({status:?}); lines: {lines:?}");
                }
                Err(e) => panic!("runner {i} applied nothing: {e}"),
            }
        }
        cluster[i].kill();
        let status = cluster[i]
            .wait_timeout(BOUND)
            .expect("the killed runner exits");
        assert_eq!(status.signal(), Some(9), "runner {i}: {status}");
        if rt
            .block_on(applied_past_checkpoint(pool, variant.perspective, ids[i]))
            .unwrap()
            > 0
        {
            mid_batch += 1;
        }
        let seen = cluster[i]
            .read_to_end(BOUND)
            .expect("stdout closes")
            .to_vec();
        lines.push((format!("runner {i}#{}", generation[i]), seen));
        generation[i] += 1;
        cluster.respawn(i, command());
        ids[i] = ready(&mut cluster, i);
    }
    Kills {
        cluster,
        labels: (0..RUNNERS)
            .map(|i| format!("runner {i}#{}", generation[i]))
            .collect(),
        mid_batch,
        lines,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_runner_processes_mid_batch_loses_nothing_and_applies_nothing_twice() {
    kill_runners(REALTIME).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_runners_of_a_batch_perspective_loses_nothing_and_applies_nothing_twice() {
    kill_runners(HELD_BACK).await;
}

/// Kills runners of `variant` while events flow, then checks the store,
/// the models and the runners' reports.
async fn kill_runners(variant: Variant) {
    let _serial = SERIAL.lock().await;
    let db = bounded(FreshDb::create()).await;
    let streams: Vec<Uuid> = (0..STREAMS).map(|_| Uuid::now_v7()).collect();

    // Events flow until the kills are over.
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

    let (pool, url) = (db.pool.clone(), db.url.clone());
    let handle = tokio::runtime::Handle::current();
    let started = std::time::Instant::now();
    let kills = tokio::time::timeout(
        BOUND * 3,
        tokio::task::spawn_blocking(move || kill_loop(&handle, &pool, &url, variant)),
    )
    .await
    .expect("the kills finished within their bound")
    .expect("the kill loop panicked");
    let (rounds, _) = appender.stop("the kills", BOUND).await;
    runners::wait_applied(&db.pool, variant.perspective, BOUND)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{KILLS} kills ({} mid-batch) while {} events were appended; all applied after {:?}",
        kills.mid_batch,
        rounds * STREAMS as u64,
        started.elapsed()
    );

    let Kills {
        cluster,
        labels,
        mid_batch,
        mut lines,
    } = kills;
    let last = bounded(tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        for i in 0..RUNNERS {
            cluster[i].close_stdin();
        }
        let statuses = cluster
            .wait_all(BOUND)
            .unwrap_or_else(|running| panic!("runners {running:?} did not stop"));
        assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
        (0..RUNNERS)
            .map(|i| {
                cluster[i]
                    .read_to_end(BOUND)
                    .expect("stdout closes")
                    .to_vec()
            })
            .collect::<Vec<_>>()
    }))
    .await
    .expect("stopping the runners panicked");
    lines.extend(labels.into_iter().zip(last));

    // The store: every event once, versions gap-free.
    let expected = bounded(ledger::assert_stored_once_and_folded(
        &db.pool,
        &streams,
        rounds,
        variant.perspective,
        fold_totals,
    ))
    .await;

    // The reports: no version applied by two commits. (A killed runner may
    // take the line of a commit it made with it: those are not counted.)
    let mut log = AppliedLog::new();
    for (label, lines) in &lines {
        log.record(label, lines);
    }
    assert!(log.failures().is_empty(), "{:?}", log.failures());
    let twice = log.twice();
    assert!(twice.is_empty(), "applied twice: {twice:?}");
    let tally = log.tally(expected);
    assert!(tally.unexpected.is_empty(), "{tally}");
    eprintln!(
        "reports: {} of {} versions reported applied ({} lines lost with killed runners);          per runner: {:?}",
        log.len(),
        tally.expected,
        tally.lost.len(),
        log.by_process()
    );
    if variant.cut_required {
        assert!(
            mid_batch >= 1,
            "no kill cut a batch in the middle (applied events past the checkpoint)"
        );
    } else {
        eprintln!("{mid_batch} kills left applied events past a checkpoint");
    }
}

//! A zombie runner: a runner process frozen (SIGSTOP) past its lease while
//! it holds an open claim, whose partitions another runner takes over, and
//! which then resumes (SIGCONT).
//!
//! Two `pg_appender runner` children, A and B (2 s leases), split the
//! partitions while the test appends a round of one event on each of 100
//! streams every 100 ms. The test freezes A right after one of its commits,
//! at a moment A has a transaction open (one of A's sessions, found by its
//! client port, is `idle in transaction`; otherwise it lets A go and tries
//! again). While A is frozen: the server ends A's open transactions (the
//! pool's `idle_in_transaction_session_timeout` is the lease), B takes over
//! all sixteen partitions, each with a fence above the one A held, and B
//! applies events on
//! streams of A's former partitions. Then A continues: whatever it was about
//! to commit fails or is fenced out, it rejoins (takes its share of the
//! partitions back) and applies again.
//!
//! At the end: every event stored once, every model equal to a fresh fold
//! (nothing applied twice or out of order), and no (stream, version)
//! reported by two commits.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use uuid::Uuid;
use whizbang_postgres::PgEventStore;
use whizbang_tests::pg::cluster::{Cluster, Member};
use whizbang_tests::pg::db::FreshDb;
use whizbang_tests::pg::ledger;
use whizbang_tests::pg::runners::{self, AppendPace, AppliedLog, BackgroundAppender};

whizbang_tests::pg_totals!();

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(60);
const STREAMS: usize = 100;
const PER_TX: usize = 50;
const PACE: Duration = Duration::from_millis(100);
const MAX_ROUNDS: u64 = 400;
const LEASE: Duration = Duration::from_secs(2);
const BATCH: u32 = 50;
/// Tries at freezing A with a transaction open.
const TRIES: usize = 50;
const PROGRAM: &str = env!("CARGO_BIN_EXE_pg_appender");
const A: usize = 0;
const B: usize = 1;

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

/// The local TCP ports of the sockets process `pid` has open: its
/// connections' client ports as the server sees them.
fn client_ports(pid: u32) -> Vec<i32> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().into_owned();
                    let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
                    Some(inode.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for row in text.lines().skip(1) {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let (Some(local), Some(inode)) = (fields.get(1), fields.get(9)) else {
                continue;
            };
            if !inodes.contains(*inode) {
                continue;
            }
            if let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, hex)| i32::from_str_radix(hex, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}

/// The server pids of the sessions on `ports` that are idle in a transaction.
async fn open_transactions(pool: &sqlx::PgPool, ports: &[i32]) -> Vec<i32> {
    sqlx::query_scalar(
        "select pid from pg_stat_activity
          where datname = current_database() and client_port = any($1)
            and state = 'idle in transaction'",
    )
    .bind(ports)
    .fetch_all(pool)
    .await
    .expect("read pg_stat_activity")
}

/// Which of `pids` are still server sessions.
async fn alive(pool: &sqlx::PgPool, pids: &[i32]) -> Vec<i32> {
    sqlx::query_scalar("select pid from pg_stat_activity where pid = any($1)")
        .bind(pids)
        .fetch_all(pool)
        .await
        .expect("read pg_stat_activity")
}

/// Polls `check` every 20 ms until it holds, within [`BOUND`].
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the zombie scenario saw.
struct Seen {
    cluster: Cluster,
    /// Tries it took to freeze A with a transaction open.
    tries: usize,
    /// A's transactions the server ended while A was frozen.
    ended: usize,
    /// How long A stayed frozen.
    frozen_for: Duration,
    /// B's commits on streams of A's former partitions while A was frozen.
    b_took_over: usize,
    /// A's commits after it continued.
    a_after: usize,
}

/// Reads `member`'s lines that arrived so far (without blocking) and
/// returns how many of them satisfy `want`.
fn count_new(member: &mut Member, from: &mut usize, want: impl Fn(&str) -> bool) -> usize {
    let lines = member.lines();
    let n = lines[*from..].iter().filter(|l| want(l)).count();
    *from = lines.len();
    n
}

/// The scenario, blocking: runs on its own thread, with `rt` for the
/// database checks.
fn zombie(rt: &tokio::runtime::Handle, pool: &sqlx::PgPool, url: &str) -> Seen {
    let mut cluster = Cluster::spawn(2, |_| runners::runner_command(PROGRAM, url, LEASE, BATCH));
    let ids: Vec<Uuid> = (0..2)
        .map(|i| {
            let line = cluster[i]
                .wait_line(|l| l.starts_with("ready "), BOUND)
                .unwrap_or_else(|e| panic!("runner {i} never started: {e}"));
            runners::ready_instance(&line).expect("ready carries the instance id")
        })
        .collect();
    until("A and B split the partitions", || {
        let owners = rt.block_on(runners::lease_owners(pool, TOTALS)).unwrap();
        ids.iter().all(|id| owners.get(id) == Some(&8))
    });

    // Freeze A right after a commit, at a moment it has a transaction open.
    let mut tries = 0;
    let (open, a_partitions) = loop {
        tries += 1;
        assert!(tries <= TRIES, "A never had a transaction open when frozen");
        cluster[A]
            .wait_line(|l| l.starts_with("applied "), BOUND)
            .unwrap_or_else(|e| panic!("A applied nothing: {e}"));
        cluster[A].stop();
        let open = rt.block_on(open_transactions(pool, &client_ports(cluster[A].id())));
        if !open.is_empty() {
            let partitions: Vec<(i16, i64)> = rt
                .block_on(
                    sqlx::query_as(
                        "select partition, fence from wh_partition_leases
                          where perspective = $1 and owner = $2",
                    )
                    .bind(TOTALS)
                    .bind(ids[A])
                    .fetch_all(pool),
                )
                .unwrap();
            break (open, partitions);
        }
        cluster[A].cont();
    };
    let frozen_at = Instant::now();
    assert!(!a_partitions.is_empty(), "A held no partition when frozen");

    // While A is frozen: the server ends its transactions, B takes
    // everything over and applies on A's former partitions.
    until("the server ended A's open transactions", || {
        rt.block_on(alive(pool, &open)).is_empty()
    });
    until("B took over all sixteen partitions", || {
        let owners = rt.block_on(runners::lease_owners(pool, TOTALS)).unwrap();
        owners.get(&ids[B]) == Some(&16)
    });
    // Each take-over bumped the fence: a statement fenced on A's lease
    // matches no row any more.
    let fences: BTreeMap<i16, i64> = rt
        .block_on(
            sqlx::query_as(
                "select partition, fence from wh_partition_leases where perspective = $1",
            )
            .bind(TOTALS)
            .fetch_all(pool),
        )
        .unwrap()
        .into_iter()
        .collect();
    for (partition, fence) in &a_partitions {
        assert!(
            fences[partition] > *fence,
            "partition {partition}: fence {} after the take-over, A held it at {fence}",
            fences[partition]
        );
    }
    let a_partitions: Vec<i16> = a_partitions.iter().map(|(p, _)| *p).collect();
    let partition_of: BTreeMap<Uuid, i16> = rt
        .block_on(sqlx::query_as("select stream_id, partition from wh_streams").fetch_all(pool))
        .unwrap()
        .into_iter()
        .collect();
    let in_a = |line: &str| {
        line.strip_prefix("applied ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|s| s.parse::<Uuid>().ok())
            .and_then(|s| partition_of.get(&s))
            .is_some_and(|p| a_partitions.contains(p))
    };
    let mut b_from = cluster[B].lines().len();
    let mut b_took_over = 0;
    until("B applied on streams of A's former partitions", || {
        b_took_over += count_new(&mut cluster[B], &mut b_from, in_a);
        b_took_over > 0
    });
    // Past the lease in any case.
    std::thread::sleep((LEASE * 2).saturating_sub(frozen_at.elapsed()));
    let frozen_for = frozen_at.elapsed();
    let mut a_from = cluster[A].lines().len();
    cluster[A].cont();

    // A rejoins: it leases partitions again and applies.
    until("A rejoined (holds partitions again)", || {
        let owners = rt.block_on(runners::lease_owners(pool, TOTALS)).unwrap();
        owners.get(&ids[A]).is_some_and(|n| *n > 0)
    });
    let mut a_after = 0;
    until("A applied again", || {
        a_after += count_new(&mut cluster[A], &mut a_from, |l| l.starts_with("applied "));
        a_after > 0
    });
    Seen {
        cluster,
        tries,
        ended: open.len(),
        frozen_for,
        b_took_over,
        a_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_frozen_past_its_lease_is_taken_over_and_its_late_commits_change_nothing() {
    let db = bounded(FreshDb::create()).await;
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

    let (pool, url) = (db.pool.clone(), db.url.clone());
    let handle = tokio::runtime::Handle::current();
    let seen = tokio::time::timeout(
        BOUND * 2,
        tokio::task::spawn_blocking(move || zombie(&handle, &pool, &url)),
    )
    .await
    .expect("the scenario finished within its bound")
    .expect("the scenario panicked");
    let (rounds, _) = appender.stop("the scenario", BOUND).await;
    runners::wait_applied(&db.pool, TOTALS, BOUND)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "A frozen on try {} with {} transactions open, for {:?}; B committed {} times on A's \
         former partitions meanwhile; A committed {} times after it continued; {} events",
        seen.tries,
        seen.ended,
        seen.frozen_for,
        seen.b_took_over,
        seen.a_after,
        rounds * STREAMS as u64
    );

    let lines = bounded(tokio::task::spawn_blocking(move || {
        let mut cluster = seen.cluster;
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
    }))
    .await
    .expect("stopping the runners panicked");

    let expected = bounded(ledger::assert_stored_once_and_folded(
        &db.pool,
        &streams,
        rounds,
        TOTALS,
        fold_totals,
    ))
    .await;

    // Nobody was killed: every commit was reported, each version once.
    let mut log = AppliedLog::new();
    log.record("A", &lines[A]);
    log.record("B", &lines[B]);
    assert!(log.failures().is_empty(), "{:?}", log.failures());
    log.tally(expected).assert_exact();
}

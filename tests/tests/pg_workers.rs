//! Inbox workers as real OS processes on a real PostgreSQL: `pg_worker`
//! children (each an `InboxWorker` on the database's queue, one queue round
//! trip per tick) consume jobs the test puts in the queue, while the test
//! kills, freezes and stops them.
//!
//! # How "exactly once in effect" is proven
//! A job's effect is its event: handling a job appends one event whose id is
//! the message id, and the inline `BucketTotals` perspective counts it into
//! its bucket's model in the same transaction. `complete` is a separate
//! statement after that commit, so the effect is **made idempotent by the
//! event's unique id**, not committed together with `complete`: a worker that
//! dies between the two leaves the message leased; its lease expires, another
//! worker handles it again, the store refuses the duplicate event id, and the
//! inbox completes the message without a second effect. So at the end, for
//! every job: one processed record (the queue's idempotency record), one
//! stored event, and the bucket models' counts (a counted side effect)
//! summing to exactly the number of jobs, each bucket's count equal to its
//! number of events. A job applied twice would show in the counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;
use whizbang_tests::pg::cluster::{Cluster, Member};
use whizbang_tests::pg::db::FreshDb;

/// The longest any test here may take to drain its queue.
const DRAIN_BOUND: Duration = Duration::from_secs(120);
/// The longest a child may take to start or stop.
const CHILD_BOUND: Duration = Duration::from_secs(30);

/// What a worker child runs with.
#[derive(Clone, Copy)]
struct WorkerSpec {
    lease_ms: u64,
    max_attempts: u32,
    backoff_ms: u64,
}

const FAST: WorkerSpec = WorkerSpec {
    lease_ms: 1_000,
    max_attempts: 5,
    backoff_ms: 20,
};

fn worker(url: &str, name: &str, spec: WorkerSpec) -> std::process::Command {
    let mut cmd = Cluster::command(env!("CARGO_BIN_EXE_pg_worker"));
    cmd.args([
        url,
        name,
        &spec.lease_ms.to_string(),
        &spec.max_attempts.to_string(),
        &spec.backoff_ms.to_string(),
    ]);
    cmd
}

/// The instance a worker announced (`ready <instance>`).
fn ready(member: &mut Member) -> Uuid {
    let line = member
        .wait_line(|l| l.starts_with("ready "), CHILD_BOUND)
        .unwrap_or_else(|e| panic!("a worker did not start: {e}"));
    line["ready ".len()..].parse().expect("ready <uuid>")
}

/// The `stopped ...` line's field `name`.
fn stat(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// Puts jobs `from..to` in the queue, waiting (not leased), spread over
/// `buckets`, and returns their message ids.
async fn enqueue_jobs(
    pool: &sqlx::PgPool,
    buckets: &[Uuid],
    from: i64,
    to: i64,
    extra: serde_json::Value,
) -> Vec<Uuid> {
    sqlx::query_scalar(
        "insert into wh_message_queue
             (message_id, message_type, payload, correlation_id, enqueued_at, status,
              available_at, attempts)
         select id, 'pg_workers.job',
                jsonb_build_object('bucket', ($1::uuid[])[(i % cardinality($1)) + 1], 'n', i)
                    || $4::jsonb,
                id, now(), 'queued', now(), 0
           from (select gen_random_uuid() as id, i from generate_series($2::int8, $3::int8 - 1) i) s
         returning message_id",
    )
    .bind(buckets)
    .bind(from)
    .bind(to)
    .bind(extra)
    .fetch_all(pool)
    .await
    .expect("enqueue jobs")
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `done` messages are processed or dead and nothing is queued.
async fn drained(pool: &sqlx::PgPool, done: i64, bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        let processed = count(pool, "select count(*) from wh_processed_messages").await;
        let dead = count(pool, "select count(*) from wh_dead_letters").await;
        let queued = count(pool, "select count(*) from wh_message_queue").await;
        if processed + dead >= done && queued == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not drained within {bound:?}: {processed} processed, {dead} dead, {queued} still queued \
             (of {done})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every job of `ids` has one processed record and one stored event, and
/// the bucket models count exactly the stored events (see the module docs).
async fn assert_each_handled_once_in_effect(pool: &sqlx::PgPool, ids: &[Uuid]) {
    let n = i64::try_from(ids.len()).unwrap();
    let processed: i64 =
        sqlx::query_scalar("select count(*) from wh_processed_messages where message_id = any($1)")
            .bind(ids)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(processed, n, "every job has its processed record");
    let events: i64 = sqlx::query_scalar(
        "select count(*) from wh_events where event_type = 'pg_workers.job' and event_id = any($1)",
    )
    .bind(ids)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(events, n, "every job stored its event once");
    let all_events = count(
        pool,
        "select count(*) from wh_events where event_type = 'pg_workers.job'",
    )
    .await;
    assert_eq!(all_events, n, "no event but the jobs'");
    let counted = count(
        pool,
        "select coalesce(sum((data->>'count')::int8), 0)::int8 from wh_perspective_rows
          where perspective = 'pg_workers.buckets'",
    )
    .await;
    assert_eq!(counted, n, "the bucket models counted each job once");
    let mismatched = count(
        pool,
        "select count(*) from wh_perspective_rows r
           join (select stream_id, count(*) as n from wh_events group by stream_id) e
             on e.stream_id = r.model_key
          where r.perspective = 'pg_workers.buckets' and (r.data->>'count')::int8 <> e.n",
    )
    .await;
    assert_eq!(mismatched, 0, "each bucket counted exactly its events");
    assert_eq!(
        count(pool, "select count(*) from wh_message_queue").await,
        0,
        "nothing is left queued or leased"
    );
}

/// Processed records per handler (`worker-<name>`).
async fn by_handler(pool: &sqlx::PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "select handler, count(*) from wh_processed_messages group by handler",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

fn buckets(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::now_v7()).collect()
}

/// Four worker processes consume 20,000 jobs: each handled exactly once in
/// effect, and each worker did a share of them (at least 5 %).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_worker_processes_handle_20000_jobs_exactly_once_and_share_them() {
    const JOBS: i64 = 20_000;
    let db = FreshDb::create().await;
    let ids = enqueue_jobs(&db.pool, &buckets(200), 0, JOBS, serde_json::json!({})).await;
    let started = Instant::now();
    let mut cluster = Cluster::spawn(4, |i| worker(&db.url, &format!("w{i}"), FAST));
    tokio::task::block_in_place(|| {
        for m in cluster.members() {
            ready(m);
        }
    });
    drained(&db.pool, JOBS, DRAIN_BOUND).await;
    let took = started.elapsed();
    let stats: Vec<String> = tokio::task::block_in_place(|| {
        cluster
            .members()
            .iter_mut()
            .map(|m| {
                m.close_stdin();
                m.wait_line(|l| l.starts_with("stopped "), CHILD_BOUND)
                    .unwrap_or_else(|e| panic!("a worker did not stop: {e}"))
            })
            .collect()
    });
    assert_each_handled_once_in_effect(&db.pool, &ids).await;
    let shares = by_handler(&db.pool).await;
    eprintln!("20,000 jobs in {took:?} by 4 workers: {shares:?}; {stats:?}");
    assert_eq!(shares.len(), 4, "all four workers processed jobs: {shares:?}");
    for (handler, n) in &shares {
        assert!(*n >= JOBS / 20, "{handler} did only {n} of {JOBS}: {shares:?}");
    }
    let processed: u64 = stats.iter().map(|l| stat(l, "processed")).sum();
    assert_eq!(processed, 20_000, "the workers' counters add up: {stats:?}");
    for line in &stats {
        assert_eq!(stat(line, "dead"), 0, "{line}");
    }
}

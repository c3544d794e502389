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

/// The longest any test here may take to drain its queue (20,000 jobs take
/// 30 to 90 s on 2 busy cores with debug builds).
const DRAIN_BOUND: Duration = Duration::from_secs(240);

/// The tests here run one at a time: each loads both cores with its workers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
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
    let _serial = SERIAL.lock().await;
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
    assert_eq!(
        shares.len(),
        4,
        "all four workers processed jobs: {shares:?}"
    );
    for (handler, n) in &shares {
        assert!(
            *n >= JOBS / 20,
            "{handler} did only {n} of {JOBS}: {shares:?}"
        );
    }
    let processed: u64 = stats.iter().map(|l| stat(l, "processed")).sum();
    assert_eq!(processed, 20_000, "the workers' counters add up: {stats:?}");
    for line in &stats {
        assert_eq!(stat(line, "dead"), 0, "{line}");
    }
}

/// SIGKILL random workers at least 20 times while 20,000 jobs flow (each
/// killed worker restarted at once): none is lost and none is handled twice
/// in effect. A killed worker's leased jobs wait for their lease (1 s) to
/// expire and are taken over; a job whose event it stored before dying is
/// completed by the next worker without a second effect (module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_random_workers_20_times_while_20000_jobs_flow_loses_and_doubles_nothing() {
    const JOBS: i64 = 20_000;
    const KILLS: usize = 20;
    const WORKERS: usize = 4;
    let _serial = SERIAL.lock().await;
    let db = FreshDb::create().await;
    let ids = enqueue_jobs(&db.pool, &buckets(200), 0, JOBS, serde_json::json!({})).await;
    let mut cluster = Cluster::spawn(WORKERS, |i| worker(&db.url, &format!("w{i}"), FAST));
    tokio::task::block_in_place(|| {
        for m in cluster.members() {
            ready(m);
        }
    });
    // A fixed pseudo-random order of victims and pauses (reproducible).
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut kills = 0;
    let mut processed_at_kills = Vec::new();
    // The kills spread over the flow: kill k comes once about
    // (k + 1) / (KILLS + 5) of the jobs are done (so the last comes at about
    // 80 %), a random worker each time.
    let deadline = Instant::now() + DRAIN_BOUND;
    while kills < KILLS {
        let threshold = JOBS * (i64::try_from(kills).unwrap() + 1) / (KILLS as i64 + 5);
        let processed = loop {
            let processed = count(&db.pool, "select count(*) from wh_processed_messages").await;
            if processed >= threshold {
                break processed;
            }
            assert!(Instant::now() < deadline, "no progress after {kills} kills");
            tokio::time::sleep(Duration::from_millis(20 + next() % 60)).await;
        };
        assert!(
            processed < JOBS,
            "all jobs finished after only {kills} kills: the kills must happen while jobs flow"
        );
        let victim = usize::try_from(next() % WORKERS as u64).unwrap();
        tokio::task::block_in_place(|| {
            let member = &mut cluster.members()[victim];
            member.kill();
            let status = member
                .wait_timeout(CHILD_BOUND)
                .expect("the killed worker exits");
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9),
                "worker {victim} died of SIGKILL: {status}"
            );
            cluster.respawn(victim, worker(&db.url, &format!("w{victim}"), FAST));
            ready(&mut cluster.members()[victim]);
        });
        processed_at_kills.push(processed);
        kills += 1;
    }
    drained(&db.pool, JOBS, DRAIN_BOUND).await;
    eprintln!("{kills} kills at processed counts {processed_at_kills:?}");
    assert_each_handled_once_in_effect(&db.pool, &ids).await;
    assert_eq!(
        count(&db.pool, "select count(*) from wh_dead_letters").await,
        0,
        "no job used up its attempts"
    );
    tokio::task::block_in_place(|| {
        for m in cluster.members() {
            m.close_stdin();
            m.wait_line(|l| l.starts_with("stopped "), CHILD_BOUND)
                .unwrap_or_else(|e| panic!("a worker did not stop: {e}"));
        }
    });
}

/// Poison messages: one whose handler always fails and one whose payload
/// does not deserialize reach the dead letters after the attempt limit (3)
/// with their errors, retried after a backoff meanwhile; the 2,000 others
/// are all handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_jobs_reach_the_dead_letters_with_their_errors_and_the_others_flow() {
    const JOBS: i64 = 2_000;
    let spec = WorkerSpec {
        lease_ms: 5_000,
        max_attempts: 3,
        backoff_ms: 50,
    };
    let _serial = SERIAL.lock().await;
    let db = FreshDb::create().await;
    let bucket = buckets(20);
    let poison = enqueue_jobs(
        &db.pool,
        &bucket,
        JOBS,
        JOBS + 1,
        serde_json::json!({"poison": true}),
    )
    .await;
    let garbage: Uuid = sqlx::query_scalar(
        "insert into wh_message_queue
             (message_id, message_type, payload, correlation_id, enqueued_at, status,
              available_at, attempts)
         values ($1, 'pg_workers.job', '{\"bucket\": \"not a uuid\", \"n\": \"x\"}', $1, now(),
                 'queued', now(), 0)
         returning message_id",
    )
    .bind(Uuid::now_v7())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let ids = enqueue_jobs(&db.pool, &bucket, 0, JOBS, serde_json::json!({})).await;
    let mut cluster = Cluster::spawn(2, |i| worker(&db.url, &format!("w{i}"), spec));
    tokio::task::block_in_place(|| {
        for m in cluster.members() {
            ready(m);
        }
    });
    drained(&db.pool, JOBS + 2, DRAIN_BOUND).await;
    assert_each_handled_once_in_effect(&db.pool, &ids).await;
    let dead: Vec<(Uuid, i32, String)> = sqlx::query_as(
        "select message_id, attempts, error from wh_dead_letters order by message_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(dead.len(), 2, "both poison jobs are dead letters: {dead:?}");
    let find = |id: Uuid| {
        dead.iter()
            .find(|(d, _, _)| *d == id)
            .unwrap_or_else(|| panic!("{id} is not a dead letter: {dead:?}"))
    };
    let (_, attempts, error) = find(poison[0]);
    assert_eq!(*attempts, 3, "after the attempt limit");
    assert!(
        error.contains("always fails"),
        "with the handler's error: {error}"
    );
    let (_, attempts, error) = find(garbage);
    assert_eq!(*attempts, 3, "after the attempt limit");
    assert!(
        error.contains("pg_workers.job") || error.contains("deserializ"),
        "with the decoding error: {error}"
    );
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
    let (retried, dead_lettered) = stats.iter().fold((0, 0), |(r, d), l| {
        (r + stat(l, "retried"), d + stat(l, "dead"))
    });
    assert_eq!(
        (retried, dead_lettered),
        (4, 2),
        "two retries and one dead letter each, counted: {stats:?}"
    );
}

/// A zombie: worker A is SIGSTOPped while it handles a slow job, past its
/// lease; worker B takes the job over and completes it; A resumes (SIGCONT),
/// its handling finishes, and its completion is refused as a lost lease
/// (counted in A's `lost`) and changes nothing: the processed record stays
/// B's, one event, the bucket counts one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_worker_past_its_lease_is_fenced_after_another_completes_its_job() {
    let spec = WorkerSpec {
        lease_ms: 1_500,
        max_attempts: 5,
        backoff_ms: 20,
    };
    let _serial = SERIAL.lock().await;
    let db = FreshDb::create().await;
    let ids = enqueue_jobs(
        &db.pool,
        &buckets(1),
        0,
        1,
        serde_json::json!({"sleep_ms": 2_000}),
    )
    .await;
    let mut a = Member::spawn(worker(&db.url, "a", spec));
    tokio::task::block_in_place(|| {
        ready(&mut a);
        a.wait_line(|l| l == "handling 0", CHILD_BOUND)
            .unwrap_or_else(|e| panic!("A never handled the job: {e}"));
        a.stop();
    });
    let mut b = Member::spawn(worker(&db.url, "b", spec));
    tokio::task::block_in_place(|| {
        ready(&mut b);
        b.wait_line(|l| l == "handling 0", CHILD_BOUND)
            .unwrap_or_else(|e| panic!("B never took the job over: {e}"));
    });
    drained(&db.pool, 1, Duration::from_secs(30)).await;
    let (handler, at): (String, i64) = sqlx::query_as(
        "select handler, (extract(epoch from processed_at) * 1000000)::int8
           from wh_processed_messages where message_id = $1",
    )
    .bind(ids[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(handler, "worker-b", "B completed the job");

    let a_stats = tokio::task::block_in_place(|| {
        a.cont();
        // A's handling sleeps out its 2 s, then its tick reports it.
        std::thread::sleep(Duration::from_millis(3_000));
        a.close_stdin();
        a.wait_line(|l| l.starts_with("stopped "), CHILD_BOUND)
            .unwrap_or_else(|e| panic!("A did not stop: {e}"))
    });
    assert_eq!(
        stat(&a_stats, "lost"),
        1,
        "A's complete was refused: {a_stats}"
    );
    assert_eq!(
        stat(&a_stats, "processed"),
        0,
        "A completed nothing: {a_stats}"
    );
    let (handler_after, at_after): (String, i64) = sqlx::query_as(
        "select handler, (extract(epoch from processed_at) * 1000000)::int8
           from wh_processed_messages where message_id = $1",
    )
    .bind(ids[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (handler_after.as_str(), at_after),
        ("worker-b", at),
        "A's refused complete changed nothing"
    );
    assert_each_handled_once_in_effect(&db.pool, &ids).await;
    tokio::task::block_in_place(|| {
        b.close_stdin();
        b.wait_line(|l| l.starts_with("stopped "), CHILD_BOUND)
            .unwrap_or_else(|e| panic!("B did not stop: {e}"));
    });
}

/// A graceful shutdown under load (SIGTERM: the worker stops leasing,
/// finishes and reports what it holds) loses nothing and leaves no row
/// leased to it; the other workers finish the rest, each job once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_under_load_finishes_what_the_worker_holds_and_loses_nothing() {
    const JOBS: i64 = 4_000;
    let _serial = SERIAL.lock().await;
    let db = FreshDb::create().await;
    let ids = enqueue_jobs(&db.pool, &buckets(100), 0, JOBS, serde_json::json!({})).await;
    let mut cluster = Cluster::spawn(3, |i| worker(&db.url, &format!("w{i}"), FAST));
    let instances: Vec<Uuid> =
        tokio::task::block_in_place(|| cluster.members().iter_mut().map(ready).collect());
    // Under load: wait until a quarter is done, then stop worker 0.
    let deadline = Instant::now() + DRAIN_BOUND;
    while count(&db.pool, "select count(*) from wh_processed_messages").await < JOBS / 4 {
        assert!(Instant::now() < deadline, "the workers made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leased_before: i64 =
        sqlx::query_scalar("select count(*) from wh_message_queue where lease_owner = $1")
            .bind(instances[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    // Under load means work was left when the signal went out (the other
    // workers may well drain the rest before worker 0 has stopped).
    let remaining_at_stop = count(&db.pool, "select count(*) from wh_message_queue").await;
    let line = tokio::task::block_in_place(|| {
        let member = &mut cluster.members()[0];
        whizbang_tests::process::signal("-TERM", member.id()).expect("run kill -TERM");
        let line = member
            .wait_line(|l| l.starts_with("stopped "), CHILD_BOUND)
            .unwrap_or_else(|e| panic!("worker 0 did not stop gracefully: {e}"));
        let status = member.wait_timeout(CHILD_BOUND).expect("worker 0 exits");
        assert!(status.success(), "a graceful stop exits 0: {status}");
        line
    });
    let leased_after: i64 =
        sqlx::query_scalar("select count(*) from wh_message_queue where lease_owner = $1")
            .bind(instances[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        leased_after, 0,
        "the stopped worker left no row leased (it held {leased_before} before)"
    );
    assert!(
        remaining_at_stop > 0,
        "the stop came under load ({line}, {remaining_at_stop} queued at the signal)"
    );
    drained(&db.pool, JOBS, DRAIN_BOUND).await;
    assert_each_handled_once_in_effect(&db.pool, &ids).await;
    assert!(stat(&line, "processed") > 0, "{line}");
    assert_eq!(stat(&line, "lost"), 0, "{line}");
    tokio::task::block_in_place(|| {
        for m in &mut cluster.members()[1..] {
            m.close_stdin();
            m.wait_line(|l| l.starts_with("stopped "), CHILD_BOUND)
                .unwrap_or_else(|e| panic!("a worker did not stop: {e}"));
        }
    });
}

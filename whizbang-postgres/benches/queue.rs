//! Message queue costs (issue 9), each against a baseline measured in the
//! same run, a fresh database per case.
//!
//! Run: `cargo bench -p whizbang-postgres --bench queue` (add `-- --quick`
//! for a short run, `-- --only NAME` for one case). Needs PostgreSQL at
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! Cases (NAME):
//! - `throughput`: 8 concurrent workers each `enqueue_and_lease` a new
//!   message and `complete` it (two statements a message), against a raw
//!   queue in the same database (a table of the same shape): the same rows
//!   INSERTed one autocommit statement each, then dequeued by
//!   `DELETE .. WHERE id = (SELECT .. FOR UPDATE SKIP LOCKED LIMIT 1)`, by 8
//!   concurrent workers. Ratio = whizbang messages/s over raw (goal >= 0.8x).
//! - `batch`: messages waiting in the queue, consumed by 8 workers through
//!   `tick`: one message a tick (lease 1, its completion in the next tick)
//!   against 100 a tick. Ratio batched / single (goal >= 5x).
//! - `latency`: a message made leasable by another connection (INSERT and
//!   `pg_notify('wh_queue')` in one autocommit statement, as a transport
//!   would) until
//!   an `InboxWorker` (woken by `PgMessageQueue::wakeups`, polling only once
//!   a second) starts its handler: p50 / p99 (goal p50 5 ms), against a raw
//!   LISTEN/NOTIFY round (the floor) in the same run.
//! - `idle`: an `InboxWorker` with nothing to do for 10 s (poll 1 s, and
//!   poll 50 ms): queries per second (the database's committed transactions)
//!   and CPU time per second, in this process and in its PostgreSQL backends.

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection as _, PgPool};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;
use whizbang_core::inbox::{Inbox, InboxWorker, InboxWorkerOptions};
use whizbang_core::queue::{EnqueueOutcome, MessageQueue, QueuedMessage, TickRequest};
use whizbang_core::{
    receptor, Context, Event, FromServices, InstanceId, Receptor, Registry, Result, Runtime,
    Services,
};
use whizbang_postgres::PgMessageQueue;

// -------------------------------------------------------------- helpers

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(slash) => &head[..scheme_end + slash],
        None => head,
    };
    format!("{base}/{name}{query}")
}

/// A fresh, migrated database for one case, with the raw baseline's queue
/// table; dropped by [`Db::drop_now`].
struct Db {
    admin_url: String,
    name: String,
    pool: PgPool,
}

impl Db {
    async fn fresh(case: &str) -> Db {
        let admin_url = database_url();
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot reach PostgreSQL at {admin_url} ({e}): start it, or set DATABASE_URL"
                )
            });
        let name = format!("whizbang_bench_queue_{case}_{}", std::process::id());
        sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(&mut admin)
            .await
            .expect("drop an old bench database");
        sqlx::query(&format!("create database {name}"))
            .execute(&mut admin)
            .await
            .expect("create the bench database");
        let url = with_database(&admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(12)
            .connect(&url)
            .await
            .expect("connect");
        whizbang_postgres::migrate(&pool).await.expect("migrate");
        sqlx::query(
            "create table raw_queue (
                 id uuid primary key, message_type text not null, payload jsonb not null,
                 available_at timestamptz not null default now())",
        )
        .execute(&pool)
        .await
        .expect("create the raw queue");
        sqlx::query("create index raw_queue_available_idx on raw_queue (available_at, id)")
            .execute(&pool)
            .await
            .expect("index the raw queue");
        Db {
            admin_url,
            name,
            pool,
        }
    }

    async fn drop_now(self) {
        self.pool.close().await;
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "drop database if exists {} with (force)",
                self.name
            ))
            .execute(&mut admin)
            .await;
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn message(n: usize) -> QueuedMessage {
    QueuedMessage::from_json("bench.queue.job", &format!("{{\"n\":{n}}}")).expect("JSON")
}

const WORKERS: usize = 8;

/// Runs `WORKERS` tasks of `work(i)` and waits for all.
async fn concurrently<F, Fut>(work: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..WORKERS).map(|i| tokio::spawn(work(i))).collect();
    for t in tasks {
        t.await.expect("a bench worker panicked");
    }
}

// ------------------------------------------------------------ throughput

async fn throughput(n: usize) {
    let db = Db::fresh("throughput").await;
    let queue = Arc::new(PgMessageQueue::new(db.pool.clone()));
    let mut rounds = Vec::new();
    for round in 0..3 {
        // whizbang: enqueue-and-lease + complete, 8 at once.
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        concurrently(|_| {
            let (queue, next) = (Arc::clone(&queue), Arc::clone(&next));
            async move {
                let me = InstanceId::new();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let m = message(round);
                    let id = m.id;
                    let outcome = queue
                        .enqueue_and_lease(m, me, Duration::from_secs(30))
                        .await
                        .expect("enqueue and lease");
                    assert!(matches!(outcome, EnqueueOutcome::Leased(_)));
                    queue.complete(id, me, "bench").await.expect("complete");
                }
            }
        })
        .await;
        let ours = n as f64 / started.elapsed().as_secs_f64();

        // raw: INSERT each, then DELETE .. SKIP LOCKED each, 8 at once.
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        concurrently(|_| {
            let (pool, next) = (db.pool.clone(), Arc::clone(&next));
            async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    sqlx::query(
                        "insert into raw_queue (id, message_type, payload) values ($1, $2, $3::jsonb)",
                    )
                    .bind(Uuid::now_v7())
                    .bind("bench.queue.job")
                    .bind(format!("{{\"n\":{round}}}"))
                    .execute(&pool)
                    .await
                    .expect("raw insert");
                }
            }
        })
        .await;
        let taken = Arc::new(AtomicUsize::new(0));
        concurrently(|_| {
            let (pool, taken) = (db.pool.clone(), Arc::clone(&taken));
            async move {
                loop {
                    let row: Option<(Uuid, String)> = sqlx::query_as(
                        "delete from raw_queue where id = (
                             select id from raw_queue where available_at <= now()
                              order by available_at, id limit 1 for update skip locked)
                         returning id, payload::text",
                    )
                    .fetch_optional(&pool)
                    .await
                    .expect("raw dequeue");
                    if row.is_none() {
                        // Empty, or every row locked by the others: stop
                        // when all are taken.
                        if taken.load(Ordering::Relaxed) >= n {
                            return;
                        }
                        tokio::task::yield_now().await;
                        continue;
                    }
                    taken.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
        let raw = n as f64 / started.elapsed().as_secs_f64();
        println!(
            "throughput round {round}: whizbang {ours:.0} msg/s, raw {raw:.0} msg/s, ratio {:.2}x",
            ours / raw
        );
        rounds.push((ours, raw));
    }
    let ours: f64 = rounds.iter().map(|r| r.0).sum::<f64>() / rounds.len() as f64;
    let raw: f64 = rounds.iter().map(|r| r.1).sum::<f64>() / rounds.len() as f64;
    println!(
        "throughput: enqueue_and_lease + complete {ours:.0} msg/s vs raw INSERT + DELETE SKIP \
         LOCKED {raw:.0} msg/s with {WORKERS} workers, {n} messages a round: {:.2}x (goal >= 0.8x)",
        ours / raw
    );
    db.drop_now().await;
}

// ----------------------------------------------------------------- batch

/// Puts `n` messages in the queue, waiting.
async fn fill(pool: &PgPool, n: usize) {
    sqlx::query(
        "insert into wh_message_queue
             (message_id, message_type, payload, correlation_id, enqueued_at, status,
              available_at, attempts)
         select id, 'bench.queue.job', jsonb_build_object('n', i), id, now(), 'queued',
                now() - interval '1 second', 0
           from (select gen_random_uuid() as id, i from generate_series(1, $1::int8) i) s",
    )
    .bind(i64::try_from(n).unwrap_or(i64::MAX))
    .execute(pool)
    .await
    .expect("fill the queue");
}

/// Consumes everything with `WORKERS` workers, `per_tick` leases a tick,
/// each tick completing what the last leased. Messages per second.
async fn consume(queue: &Arc<PgMessageQueue>, n: usize, per_tick: usize) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    concurrently(|_| {
        let (queue, done) = (Arc::clone(queue), Arc::clone(&done));
        async move {
            let me = InstanceId::new();
            let mut held = Vec::new();
            loop {
                let mut request = TickRequest::lease(per_tick, Duration::from_secs(30));
                for id in held.drain(..) {
                    request = request.complete(id, "bench");
                }
                let response = queue.tick(me, request).await.expect("tick");
                done.fetch_add(response.completed.len(), Ordering::Relaxed);
                if response.leased.is_empty() && done.load(Ordering::Relaxed) >= n {
                    return;
                }
                if response.leased.is_empty() {
                    tokio::task::yield_now().await;
                }
                held.extend(response.leased.iter().map(|l| l.message.id));
            }
        }
    })
    .await;
    n as f64 / started.elapsed().as_secs_f64()
}

async fn batch(n: usize) {
    let db = Db::fresh("batch").await;
    let queue = Arc::new(PgMessageQueue::new(db.pool.clone()));
    let mut ratios = Vec::new();
    for round in 0..3 {
        fill(&db.pool, n).await;
        let single = consume(&queue, n, 1).await;
        sqlx::query("truncate wh_processed_messages")
            .execute(&db.pool)
            .await
            .expect("truncate");
        fill(&db.pool, n).await;
        let batched = consume(&queue, n, 100).await;
        sqlx::query("truncate wh_processed_messages")
            .execute(&db.pool)
            .await
            .expect("truncate");
        println!(
            "batch round {round}: 1 a tick {single:.0} msg/s, 100 a tick {batched:.0} msg/s, {:.1}x",
            batched / single
        );
        ratios.push((single, batched));
    }
    let single: f64 = ratios.iter().map(|r| r.0).sum::<f64>() / ratios.len() as f64;
    let batched: f64 = ratios.iter().map(|r| r.1).sum::<f64>() / ratios.len() as f64;
    println!(
        "batch: tick leasing 100 {batched:.0} msg/s vs 1 {single:.0} msg/s with {WORKERS} \
         workers, {n} messages a round: {:.1}x (goal >= 5x)",
        batched / single
    );
    db.drop_now().await;
}

// --------------------------------------------------------------- latency

#[derive(Event, Serialize, Deserialize, Clone)]
#[event(name = "bench.queue.ping")]
struct Ping {
    #[stream_key]
    stream: Uuid,
}

/// Where handler starts are reported.
struct Starts(tokio::sync::mpsc::UnboundedSender<(Uuid, Instant)>);

struct Timer(Arc<Starts>);

impl FromServices for Timer {
    fn from_services(s: &Services) -> Result<Self> {
        Ok(Timer(s.require::<Starts>("Timer")?))
    }
}

#[receptor]
impl Receptor<Ping> for Timer {
    async fn handle(&self, e: Ping, _: &mut Context) -> Result<()> {
        let _ = self.0 .0.send((e.stream, Instant::now()));
        Ok(())
    }
}

async fn latency(n: usize) {
    let db = Db::fresh("latency").await;
    let (tx, mut starts) = tokio::sync::mpsc::unbounded_channel();
    let registry = Registry::builder()
        .receptors_of::<Timer>()
        .build()
        .expect("registry");
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .shared_service(Arc::new(Starts(tx)))
        .build()
        .expect("an in-memory runtime: the handler's scope is not what is measured");
    let queue = PgMessageQueue::new(db.pool.clone());
    let inbox = Inbox::builder(rt, Arc::new(queue.clone()))
        .event::<Ping>()
        .build();
    let worker = InboxWorker::start(
        inbox,
        InboxWorkerOptions::default().poll_interval(Duration::from_secs(1)),
    );
    let mut wakeups = queue.wakeups(worker.waker());
    wakeups.listening().await;

    // The floor: a raw NOTIFY to a LISTEN on another connection.
    let mut listener = PgListener::connect_with(&db.pool).await.expect("listen");
    listener.listen("bench_floor").await.expect("listen");
    let mut floor = Vec::with_capacity(n);
    let mut ours = Vec::with_capacity(n);
    let mut after_commit = Vec::with_capacity(n);
    let sender = db.pool.clone();
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the first poll
    for i in 0..n {
        let started = Instant::now();
        sqlx::query("select pg_notify('bench_floor', '')")
            .execute(&sender)
            .await
            .expect("notify");
        listener.recv().await.expect("a notification");
        floor.push(started.elapsed().as_secs_f64() * 1e3);

        let stream = Uuid::now_v7();
        let id = Uuid::now_v7();
        let started = Instant::now();
        // One autocommit statement: the row and its NOTIFY commit together.
        sqlx::query(
            "with queued as (
                 insert into wh_message_queue
                     (message_id, message_type, payload, correlation_id, enqueued_at, status,
                      available_at, attempts)
                 values ($1, 'bench.queue.ping', jsonb_build_object('stream', $2::uuid), $1,
                         now(), 'queued', now(), 0)
                 returning 1)
             select pg_notify('wh_queue', '') from queued",
        )
        .bind(id)
        .bind(stream)
        .execute(&sender)
        .await
        .expect("enqueue and notify");
        let committed = Instant::now();
        let (got, at) = tokio::time::timeout(Duration::from_secs(5), starts.recv())
            .await
            .expect("the handler started within 5 s")
            .expect("a start");
        assert_eq!(got, stream);
        ours.push(at.duration_since(started).as_secs_f64() * 1e3);
        after_commit.push(at.duration_since(committed).as_secs_f64() * 1e3);
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    floor.sort_by(f64::total_cmp);
    ours.sort_by(f64::total_cmp);
    after_commit.sort_by(f64::total_cmp);
    println!(
        "latency: enqueue (one autocommit insert + notify) -> handler start p50 {:.2} ms, p99 \
         {:.2} ms (goal p50 5 ms); of which after the enqueue returned p50 {:.2} ms, p99 {:.2} \
         ms; raw NOTIFY -> LISTEN p50 {:.2} ms, p99 {:.2} ms; {n} messages",
        pct(&ours, 0.5),
        pct(&ours, 0.99),
        pct(&after_commit, 0.5),
        pct(&after_commit, 0.99),
        pct(&floor, 0.5),
        pct(&floor, 0.99)
    );
    drop(wakeups);
    worker.shutdown().await.expect("shutdown");
    db.drop_now().await;
}

// ------------------------------------------------------------------ idle

/// This process's CPU time (all its threads), from /proc (nanoseconds).
fn cpu_time() -> Duration {
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    tasks
        .flatten()
        .map(|t| schedstat(&t.path().join("schedstat")))
        .sum()
}

/// A process's CPU time (its main thread: a PostgreSQL backend has one), from
/// /proc (nanoseconds; zero if unreadable).
fn cpu_time_of(pid: &str) -> Duration {
    schedstat(std::path::Path::new(&format!("/proc/{pid}/schedstat")))
}

/// The time on CPU a `schedstat` file reports (its first field, in ns).
fn schedstat(path: &std::path::Path) -> Duration {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// The CPU time of the server processes serving database `name` (readable
/// when the server runs on this machine as a user we may read), by pid.
async fn backend_cpu(pool: &PgPool, name: &str) -> std::collections::HashMap<i32, Duration> {
    let pids: Vec<i32> = sqlx::query_scalar(
        "select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .expect("read pg_stat_activity");
    pids.into_iter()
        .map(|pid| (pid, cpu_time_of(&pid.to_string())))
        .collect()
}

async fn commits(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar("select xact_commit from pg_stat_database where datname = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("read pg_stat_database")
}

async fn idle(seconds: u64) {
    for poll_ms in [1_000u64, 50] {
        let db = Db::fresh("idle").await;
        let (tx, _starts) = tokio::sync::mpsc::unbounded_channel();
        let registry = Registry::builder()
            .receptors_of::<Timer>()
            .build()
            .expect("registry");
        let rt = Runtime::builder()
            .registry(Arc::new(registry))
            .shared_service(Arc::new(Starts(tx)))
            .build()
            .expect("runtime");
        let queue = PgMessageQueue::new(db.pool.clone());
        let inbox = Inbox::builder(rt, Arc::new(queue.clone()))
            .event::<Ping>()
            .build();
        let worker = InboxWorker::start(
            inbox,
            InboxWorkerOptions::default().poll_interval(Duration::from_millis(poll_ms)),
        );
        let mut wakeups = queue.wakeups(worker.waker());
        wakeups.listening().await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        // The bench's own two reads between the counts (pg_stat_activity,
        // then the first pg_stat_database) are one commit each: subtracted.
        let before = commits(&db.pool, &db.name).await;
        let server_before = backend_cpu(&db.pool, &db.name).await;
        let ticks_before = worker.stats().ticks;
        let cpu_before = cpu_time();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = (cpu_time().saturating_sub(cpu_before)).as_secs_f64();
        let ticks = worker.stats().ticks - ticks_before;
        let server_after = backend_cpu(&db.pool, &db.name).await;
        let server: f64 = server_after
            .iter()
            .filter_map(|(pid, after)| {
                server_before
                    .get(pid)
                    .map(|before| after.saturating_sub(*before).as_secs_f64())
            })
            .sum();
        tokio::time::sleep(Duration::from_millis(1_000)).await; // stats are sent lazily
        let after = commits(&db.pool, &db.name).await;
        println!(
            "idle (poll {poll_ms} ms): {:.1} queries/s (the worker's ticks: {ticks} in \
             {elapsed:.1} s; the database counted {} transactions), CPU {:.2} ms/s in this \
             process, {:.2} ms/s in its PostgreSQL backends",
            ticks as f64 / elapsed,
            after - before - 2,
            cpu * 1e3 / elapsed,
            server * 1e3 / elapsed
        );
        drop(wakeups);
        worker.shutdown().await.expect("shutdown");
        db.drop_now().await;
    }
}

// ------------------------------------------------------------------ main

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    // `cargo test --all-targets` runs benches with no `--bench`: a smoke run.
    let smoke = !args.iter().any(|a| a == "--bench");
    let scale = |full: usize| {
        if smoke {
            (full / 1000).max(2)
        } else if quick {
            full / 10
        } else {
            full
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    runtime.block_on(async {
        if run("throughput") {
            throughput(scale(10_000)).await;
        }
        if run("batch") {
            batch(scale(20_000)).await;
        }
        if run("latency") {
            latency(scale(1_000)).await;
        }
        if run("idle") {
            idle(if smoke { 1 } else { 10 }).await;
        }
    });
}

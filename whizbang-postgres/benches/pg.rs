//! PostgreSQL costs (issue 8), each against a baseline measured in the same
//! run, rounds of the two variants interleaved, a fresh database per case.
//!
//! Run: `cargo bench -p whizbang-postgres --bench pg` (add `-- --quick` for a
//! short run, `-- --only NAME` for one case). Needs PostgreSQL at
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! Cases (NAME):
//! - `append`: `PgEventStore::append` of one event (a new stream), and of a
//!   batch of 100 events (a new stream), against raw sqlx INSERTs of the same
//!   rows into a copy of `wh_events` (one autocommit statement each). Ratio = raw time /
//!   whizbang time (goal >= 0.8x).
//! - `perspectives`: `scope.send` + `complete()` of a one-event command with 1
//!   and with 10 async perspectives registered (runner paused while timed,
//!   so what is timed is the append and the bookkeeping per perspective; the
//!   queued applies run between rounds, untimed). Ratio 10 / 1 (goal <= 1.2x).
//! - `e2e`: a one-client appender (a runtime with no perspective) appends
//!   batches of 100 events over 1,000 streams; a second runtime (its own
//!   backend, the partitioned runner) applies an async perspective; timed
//!   until every cursor is committed. Against raw batched INSERTs of the same
//!   rows (goal >= 0.5x).
//! - `ryw`: read-your-writes with the runner in another process (this binary
//!   re-executed in child mode): `send_and_sync` p50 / p99 (goal 3 / 10 ms)
//!   against a 100 ms polling awaiter in the same run (goal >= 15x at p50),
//!   and a breakdown from a traced variant (send, then wait), with stamps the
//!   child takes at apply and after its commit.
//! - `strategy`: the same load (8 clients sending commands of 1, then of
//!   10 events, over 1,000 streams) applied by a realtime perspective and by a
//!   `batch(100, "50ms")` one, each on a fresh database, timed from the
//!   first send until every event is applied; events per second and
//!   PostgreSQL transactions per event (`pg_stat_database.xact_commit`
//!   before and after, read once the runtime's connections closed). Ratio
//!   batch / realtime throughput (goal >= 3x).
//! - `strategy_feed`: the same comparison on a load the appends do not
//!   bound. Another process (this binary re-executed with `--child-append`,
//!   no runtime) appends one event per append over 1,000 streams at a steady
//!   rate (`WHIZBANG_BENCH_FEED_RATE`, default 300/s, in bursts every
//!   10 ms) while this process runs a runtime holding only the perspective
//!   and its partitioned runner; then a backlog of ten times as many events
//!   (appends of 100 first, the runtime started after). Per variant: events per second, the runner's
//!   CPU (this process and its PostgreSQL backends, from `/proc`; above a
//!   floor run that only listens), transactions per event (the database's,
//!   minus one per append) and the runner's own statements counted from its
//!   spans (feed reads, claim transactions, checkpoint moves). Ratio batch /
//!   realtime events per runner CPU second (goal >= 3x).

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgPool};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use uuid::Uuid;
use whizbang_core::backend::{ApplyReport, EventMetadata, EventStore as _, NewEvent, StreamAppend};
use whizbang_core::{
    perspective, receptor, Command, Context, Event, EventId, ExpectedVersion, MessageId, Metadata,
    Perspective as _, Receptor, Registry, Result, Runtime, StreamId, SyncFilter, SyncOutcome,
};
use whizbang_postgres::{PgEventStore, Postgres, PostgresOptions};

// ------------------------------------------------------------- messages

#[derive(Event, Serialize, Deserialize, Clone)]
#[event(name = "bench.pg.noted")]
struct Noted {
    #[stream_key]
    stream: Uuid,
    n: u64,
}

/// One event on `stream`.
#[derive(Command, Serialize, Deserialize, Clone)]
struct Note {
    stream: Uuid,
}

/// One event per stream, in one append.
#[derive(Command, Serialize, Deserialize, Clone)]
struct NoteMany {
    streams: Vec<Uuid>,
}

#[derive(Default)]
struct Desk;

#[receptor]
impl Receptor<Note> for Desk {
    async fn handle(&self, cmd: Note, cx: &mut Context) -> Result<()> {
        cx.emit(Noted {
            stream: cmd.stream,
            n: 1,
        })?;
        Ok(())
    }
}

#[receptor]
impl Receptor<NoteMany> for Desk {
    async fn handle(&self, cmd: NoteMany, cx: &mut Context) -> Result<()> {
        for stream in cmd.streams {
            cx.emit(Noted { stream, n: 1 })?;
        }
        Ok(())
    }
}

#[derive(Event, Serialize, Deserialize, Clone)]
#[event(name = "bench.pg.pinged")]
struct Pinged {
    #[stream_key]
    stream: Uuid,
}

#[derive(Command, Serialize, Deserialize, Clone)]
struct Ping {
    stream: Uuid,
}

#[derive(Default)]
struct Pinger;

#[receptor]
impl Receptor<Ping> for Pinger {
    async fn handle(&self, cmd: Ping, cx: &mut Context) -> Result<()> {
        cx.emit(Pinged { stream: cmd.stream })?;
        Ok(())
    }
}

// --------------------------------------------------------- perspectives

#[derive(Default, Clone, Serialize, Deserialize)]
struct Count {
    n: u64,
}

macro_rules! counters {
    ($($ty:ident = $name:literal),* $(,)?) => {$(
        struct $ty;

        #[perspective(model = Count, name = $name)]
        impl $ty {
            fn noted(c: &mut Count, e: &Noted) {
                c.n += e.n;
            }
        }
    )*};
}

counters!(
    C0 = "bench.pg.c0",
    C1 = "bench.pg.c1",
    C2 = "bench.pg.c2",
    C3 = "bench.pg.c3",
    C4 = "bench.pg.c4",
    C5 = "bench.pg.c5",
    C6 = "bench.pg.c6",
    C7 = "bench.pg.c7",
    C8 = "bench.pg.c8",
    C9 = "bench.pg.c9",
);

/// When the read-your-writes perspective applied each stream (wall clock,
/// microseconds), in the runner process.
static PING_APPLIED: OnceLock<Mutex<HashMap<Uuid, u64>>> = OnceLock::new();

struct Pings;

#[perspective(model = Count, name = "bench.pg.pings")]
impl Pings {
    fn pinged(c: &mut Count, e: &Pinged) {
        c.n += 1;
        PING_APPLIED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(e.stream, wall_us());
    }
}

// -------------------------------------------------------------- helpers

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

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

/// A fresh, migrated database for one case; dropped by [`Db::drop_now`].
struct Db {
    admin_url: String,
    name: String,
    url: String,
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
        let name = format!("whizbang_bench_pg_{case}_{}", std::process::id());
        sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(&mut admin)
            .await
            .expect("drop an old bench database");
        sqlx::query(&format!("create database {name}"))
            .execute(&mut admin)
            .await
            .expect("create the bench database");
        let url = with_database(&admin_url, &name);
        let pool = whizbang_postgres::connect(&url).await.expect("connect");
        whizbang_postgres::migrate(&pool).await.expect("migrate");
        // The raw baselines write the same rows into a copy of the event
        // table (same columns, defaults, identity, indexes), where no runner
        // reads them.
        sqlx::query("create table wh_events_raw (like wh_events including all)")
            .execute(&pool)
            .await
            .expect("create the raw baseline's table");
        pool.close().await;
        Db {
            admin_url,
            name,
            url,
        }
    }

    async fn drop_now(self) {
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

/// A pool like the backend's (same defaults), for the raw baselines.
async fn raw_pool(url: &str, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .connect(url)
        .await
        .expect("connect the raw pool")
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

struct Row {
    what: String,
    value: String,
    goal: &'static str,
}

fn row(rows: &mut Vec<Row>, what: impl Into<String>, value: impl Into<String>, goal: &'static str) {
    rows.push(Row {
        what: what.into(),
        value: value.into(),
        goal,
    });
}

fn new_event(stream: StreamId, n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        stream_id: stream,
        event_type: "bench.pg.noted",
        data: serde_json::value::to_raw_value(&serde_json::json!({ "stream": stream, "n": n }))
            .expect("JSON"),
        metadata: EventMetadata {
            correlation_id: MessageId::new(),
            causation_id: None,
            timestamp: SystemTime::now(),
            extra: Metadata::default(),
        },
        typed: None,
        outbound: false,
    }
}

/// The metadata document the store writes, for the raw rows.
fn raw_metadata() -> String {
    serde_json::json!({
        "correlation_id": Uuid::now_v7(),
        "causation_id": null,
        "timestamp_us": wall_us(),
        "extra": {},
    })
    .to_string()
}

/// The partition the store writes (the same function as the store's).
fn partition(stream: Uuid) -> i16 {
    whizbang_postgres::__private::partition_of(StreamId::from(stream))
}

/// Raw rows of `streams[i]` at `versions[i]`, one INSERT (autocommit).
async fn raw_insert(pool: &PgPool, streams: &[Uuid], versions: &[i64]) {
    let n = streams.len();
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let parts: Vec<i16> = streams.iter().map(|s| partition(*s)).collect();
    let types = vec!["bench.pg.noted"; n];
    let data: Vec<String> = streams
        .iter()
        .map(|s| serde_json::json!({ "stream": s, "n": 1 }).to_string())
        .collect();
    let meta: Vec<String> = (0..n).map(|_| raw_metadata()).collect();
    if n == 1 {
        sqlx::query(
            "insert into wh_events_raw
                 (event_id, stream_id, stream_version, partition, event_type, data, metadata)
             values ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)",
        )
        .bind(ids[0])
        .bind(streams[0])
        .bind(versions[0])
        .bind(parts[0])
        .bind(types[0])
        .bind(&data[0])
        .bind(&meta[0])
        .execute(pool)
        .await
        .expect("raw insert");
    } else {
        sqlx::query(
            "insert into wh_events_raw
                 (event_id, stream_id, stream_version, partition, event_type, data, metadata)
             select e.event_id, e.stream_id, e.stream_version, e.partition, e.event_type,
                    e.data::jsonb, e.metadata::jsonb
               from unnest($1::uuid[], $2::uuid[], $3::int8[], $4::int2[], $5::text[],
                           $6::text[], $7::text[])
                    as e(event_id, stream_id, stream_version, partition, event_type, data, metadata)",
        )
        .bind(&ids)
        .bind(streams)
        .bind(versions)
        .bind(&parts)
        .bind(&types)
        .bind(&data)
        .bind(&meta)
        .execute(pool)
        .await
        .expect("raw batch insert");
    }
}

struct Plan {
    quick: bool,
    smoke: bool,
}

impl Plan {
    /// `full`, or a tenth of it with `--quick`, or 2 in a smoke run.
    fn n(&self, full: usize) -> usize {
        if self.smoke {
            2
        } else if self.quick {
            (full / 10).max(2)
        } else {
            full
        }
    }
}

// -------------------------------------------------------------- 1. append

async fn append(plan: &Plan, rows: &mut Vec<Row>) {
    let db = Db::fresh("append").await;
    let pool = whizbang_postgres::connect(&db.url).await.expect("connect");
    let store = PgEventStore::new(pool.clone());
    let raw = raw_pool(&db.url, 10).await;
    let rounds = plan.n(21).max(3);
    for (label, batch, per_round) in [
        ("one event", 1usize, plan.n(1_000)),
        ("batch of 100", 100, plan.n(100)),
    ] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..=rounds {
            let start = Instant::now();
            for _ in 0..per_round {
                let stream = StreamId::new();
                let events = (0..batch).map(|i| new_event(stream, i as u64)).collect();
                store
                    .append(vec![StreamAppend {
                        stream_id: stream,
                        expected: ExpectedVersion::NoStream,
                        events,
                    }])
                    .await
                    .expect("append");
            }
            let w = start.elapsed().as_secs_f64() / per_round as f64;
            let start = Instant::now();
            for _ in 0..per_round {
                let stream = Uuid::now_v7();
                let streams = vec![stream; batch];
                let versions: Vec<i64> = (1..=batch as i64).collect();
                raw_insert(&raw, &streams, &versions).await;
            }
            let r = start.elapsed().as_secs_f64() / per_round as f64;
            if round > 0 {
                ours.push(w * 1e6);
                theirs.push(r * 1e6);
            }
        }
        let (o, t) = (sorted(ours), sorted(theirs));
        let (om, tm) = (pct(&o, 0.5), pct(&t, 0.5));
        row(
            rows,
            format!("append, {label}: raw INSERT / PgEventStore::append, medians"),
            format!("{tm:.0} / {om:.0} us = {:.2}x", tm / om),
            ">= 0.8x",
        );
    }
    pool.close().await;
    raw.close().await;
    db.drop_now().await;
}

// -------------------------------------------------------- 2. perspectives

async fn runtime_on(
    url: &str,
    registry: Registry,
    options: PostgresOptions,
) -> (Runtime, Postgres) {
    let pg = Postgres::connect_with(url, options)
        .await
        .expect("connect the backend");
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .expect("build the runtime");
    (rt, pg)
}

async fn perspectives(plan: &Plan, rows: &mut Vec<Row>) {
    let db = Db::fresh("perspectives").await;
    let one = Registry::builder()
        .receptors_of::<Desk>()
        .perspective::<C0>()
        .build()
        .expect("registry");
    let ten = Registry::builder()
        .receptors_of::<Desk>()
        .perspective::<C0>()
        .perspective::<C1>()
        .perspective::<C2>()
        .perspective::<C3>()
        .perspective::<C4>()
        .perspective::<C5>()
        .perspective::<C6>()
        .perspective::<C7>()
        .perspective::<C8>()
        .perspective::<C9>()
        .build()
        .expect("registry");
    let options = PostgresOptions::default().runner(false);
    let (rt1, pg1) = runtime_on(&db.url, one, options.clone()).await;
    let (rt10, pg10) = runtime_on(&db.url, ten, options).await;
    rt1.runner().pause();
    rt10.runner().pause();
    let rounds = plan.n(21).max(3);
    let per_round = plan.n(200);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        let mut times = [0.0f64; 2];
        for (i, rt) in [&rt1, &rt10].into_iter().enumerate() {
            // What the previous round queued is applied outside the timing,
            // so paused work does not pile up across rounds.
            rt.runner().resume();
            rt.wait_idle().await;
            rt.runner().pause();
            let start = Instant::now();
            for _ in 0..per_round {
                let scope = rt.scope();
                scope
                    .send(Note {
                        stream: Uuid::now_v7(),
                    })
                    .await
                    .expect("send");
                scope.complete().await.expect("complete");
            }
            times[i] = start.elapsed().as_secs_f64() * 1e6 / per_round as f64;
        }
        if round > 0 {
            a.push(times[0]);
            b.push(times[1]);
        }
    }
    let (a, b) = (sorted(a), sorted(b));
    let (am, bm) = (pct(&a, 0.5), pct(&b, 0.5));
    row(
        rows,
        "perspectives: send + complete with 1 / with 10 registered, medians",
        format!("{am:.0} / {bm:.0} us = {:.2}x", bm / am),
        "<= 1.2x",
    );
    drop((rt1, rt10));
    pg1.close().await;
    pg10.close().await;
    db.drop_now().await;
}

// ---------------------------------------------------------------- 3. e2e

/// Sum of the cursors of `perspective` (= events applied, one per version).
async fn applied(pool: &PgPool, perspective: &str) -> i64 {
    sqlx::query_scalar(
        "select coalesce(sum(version), 0)::int8 from wh_perspective_cursors where perspective = $1",
    )
    .bind(perspective)
    .fetch_one(pool)
    .await
    .expect("count applied")
}

async fn e2e(plan: &Plan, rows: &mut Vec<Row>) {
    const BATCH: usize = 100;
    const STREAMS: usize = 1_000;
    let db = Db::fresh("e2e").await;
    let appender_registry = Registry::builder()
        .receptors_of::<Desk>()
        .build()
        .expect("registry");
    let runner_registry = Registry::builder()
        .perspective::<C0>()
        .build()
        .expect("registry");
    let (appender, pg_a) = runtime_on(
        &db.url,
        appender_registry,
        PostgresOptions::default().runner(false),
    )
    .await;
    let (runner, pg_r) = runtime_on(&db.url, runner_registry, PostgresOptions::default()).await;
    let raw = raw_pool(&db.url, 10).await;
    let probe = raw_pool(&db.url, 1).await;
    let streams: Vec<Uuid> = (0..STREAMS).map(|_| Uuid::now_v7()).collect();
    let mut raw_versions = vec![0i64; STREAMS];
    let raw_streams: Vec<Uuid> = (0..STREAMS).map(|_| Uuid::now_v7()).collect();
    let events = plan.n(10_000).max(BATCH * 2) / BATCH * BATCH;
    let rounds = plan.n(5).max(2);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut target = 0i64;
    let mut next = 0usize;
    let mut raw_next = 0usize;
    for round in 0..=rounds {
        let start = Instant::now();
        for _ in 0..events / BATCH {
            let batch: Vec<Uuid> = (0..BATCH).map(|i| streams[(next + i) % STREAMS]).collect();
            next += BATCH;
            let scope = appender.scope();
            scope.send(NoteMany { streams: batch }).await.expect("send");
            scope.complete().await.expect("complete");
        }
        let appended = start.elapsed();
        target += events as i64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while applied(&probe, C0::NAME).await < target {
            assert!(
                Instant::now() < deadline,
                "the runner did not apply {target} events within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let all = start.elapsed();
        let start = Instant::now();
        for _ in 0..events / BATCH {
            let idx: Vec<usize> = (0..BATCH).map(|i| (raw_next + i) % STREAMS).collect();
            raw_next += BATCH;
            let s: Vec<Uuid> = idx.iter().map(|i| raw_streams[*i]).collect();
            let v: Vec<i64> = idx
                .iter()
                .map(|i| {
                    raw_versions[*i] += 1;
                    raw_versions[*i]
                })
                .collect();
            raw_insert(&raw, &s, &v).await;
        }
        let raw_took = start.elapsed();
        if round > 0 {
            ours.push((
                events as f64 / all.as_secs_f64(),
                events as f64 / appended.as_secs_f64(),
            ));
            theirs.push(events as f64 / raw_took.as_secs_f64());
        }
    }
    let o = sorted(ours.iter().map(|x| x.0).collect());
    let oa = sorted(ours.iter().map(|x| x.1).collect());
    let t = sorted(theirs);
    let (om, tm) = (pct(&o, 0.5), pct(&t, 0.5));
    row(
        rows,
        format!(
            "e2e: {events} events (batches of {BATCH}, {STREAMS} streams): applied+committed / raw INSERT, events/s, medians"
        ),
        format!("{om:.0} / {tm:.0} = {:.2}x", om / tm),
        ">= 0.5x",
    );
    row(
        rows,
        "e2e context: the appends alone (before the runner finished), events/s, median",
        format!("{:.0} ({:.2}x raw)", pct(&oa, 0.5), pct(&oa, 0.5) / tm),
        "",
    );
    drop((appender, runner));
    pg_a.close().await;
    pg_r.close().await;
    raw.close().await;
    probe.close().await;
    db.drop_now().await;
}

// ---------------------------------------------------------------- 4. ryw

fn ryw_registry() -> Registry {
    Registry::builder()
        .receptors_of::<Pinger>()
        .perspective::<Pings>()
        .build()
        .expect("registry")
}

/// Child mode: the runner for `ryw`. Prints `ready`, then one line per
/// commit: `applied <stream> <apply stamp us> <after-commit stamp us>`.
/// Exits when its stdin closes (the parent is done or gone).
async fn ryw_child(url: String) {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let printer = Arc::clone(&out);
    let pg = Postgres::connect_with(&url, PostgresOptions::default())
        .await
        .expect("child: connect");
    let rt = Runtime::builder()
        .registry(Arc::new(ryw_registry()))
        .backend(pg.clone())
        .apply_listener(move |report: &ApplyReport| {
            let committed = wall_us();
            let stream = report.stream.as_uuid();
            let applied = PING_APPLIED
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&stream)
                .unwrap_or(0);
            let mut o = printer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = writeln!(o, "applied {stream} {applied} {committed}");
            let _ = o.flush();
        })
        .build()
        .expect("child: runtime");
    {
        let mut o = out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(o, "ready");
        let _ = o.flush();
    }
    // Until stdin closes.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await;
    drop(rt);
    pg.close().await;
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stamps from the child: stream -> (apply, after commit), wall-clock us.
type Stamps = mpsc::Receiver<(Uuid, u64, u64)>;

fn spawn_child(url: &str) -> (ChildGuard, Stamps) {
    let exe = std::env::current_exe().expect("the bench binary's path");
    let mut child = Process::new(exe)
        .args(["--child-ryw", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the runner process");
    let stdout = child.stdout.take().expect("child stdout");
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["ready"] => {
                    let _ = ready_tx.send(());
                }
                ["applied", stream, applied, committed] => {
                    if let (Ok(s), Ok(a), Ok(c)) =
                        (stream.parse(), applied.parse(), committed.parse())
                    {
                        let _ = tx.send((s, a, c));
                    }
                }
                _ => {}
            }
        }
    });
    let guard = ChildGuard(child);
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the runner process started within 60 s");
    (guard, rx)
}

async fn ryw(plan: &Plan, rows: &mut Vec<Row>) {
    let db = Db::fresh("ryw").await;
    let (_child, stamps) = spawn_child(&db.url);
    let probe = raw_pool(&db.url, 2).await;
    // The child holds every partition of the perspective before we measure.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held: i64 = sqlx::query_scalar(
            "select count(*) from wh_partition_leases
              where perspective = $1 and owner is not null and expires_at > now()",
        )
        .bind(Pings::NAME)
        .fetch_one(&probe)
        .await
        .expect("count leases");
        if held == 16 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the runner process leased no partitions"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // This process only appends and waits: no partitioned runner, and its
    // in-process runner paused so the child applies everything.
    let (rt, pg) = runtime_on(
        &db.url,
        ryw_registry(),
        PostgresOptions::default().runner(false),
    )
    .await;
    rt.runner().pause();

    let rounds = plan.n(50).max(3);
    let (per_sync, per_poll) = (10usize, 2usize);
    let mut synced = Vec::new();
    let mut polled = Vec::new();
    // Traced: (append, to apply, apply+commit, commit -> woken, total).
    let mut traced: Vec<[f64; 5]> = Vec::new();
    let mut missed = 0usize;
    let mut early: HashMap<Uuid, (u64, u64)> = HashMap::new();
    for round in 0..=rounds {
        let warm = round == 0;
        for _ in 0..per_sync {
            // send_and_sync, as a user writes it.
            let scope = rt.scope();
            let start = Instant::now();
            let sent = scope
                .send_and_sync(Ping {
                    stream: Uuid::now_v7(),
                })
                .await
                .expect("send_and_sync");
            let took = start.elapsed();
            if !sent.is_synced() {
                missed += 1;
            }
            scope.complete().await.expect("complete");
            if !warm {
                synced.push(ms(took));
            }

            // Traced: send, then wait, with the child's stamps.
            let stream = Uuid::now_v7();
            let scope = rt.scope();
            let (t0, w0) = (Instant::now(), wall_us());
            scope.send(Ping { stream }).await.expect("send");
            let t1 = Instant::now();
            let r = scope
                .sync_awaiter()
                .wait::<Pings>(SyncFilter::current_scope().with_timeout(Duration::from_secs(5)))
                .await
                .expect("wait");
            let t2 = Instant::now();
            let w2 = wall_us();
            scope.complete().await.expect("complete");
            if r.outcome != SyncOutcome::Synced {
                missed += 1;
                continue;
            }
            let stamp = loop {
                if let Some(s) = early.remove(&stream) {
                    break Some(s);
                }
                match stamps.recv_timeout(Duration::from_secs(2)) {
                    Ok((s, a, c)) if s == stream => break Some((a, c)),
                    Ok((s, a, c)) => {
                        early.insert(s, (a, c));
                    }
                    Err(_) => break None,
                }
            };
            let Some((applied_us, committed_us)) = stamp else {
                continue;
            };
            if !warm && applied_us > 0 {
                let append = ms(t1 - t0);
                let w1 = w0 + u64::try_from((t1 - t0).as_micros()).unwrap_or(0);
                let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e3;
                traced.push([
                    append,
                    d(w1, applied_us),
                    d(applied_us, committed_us),
                    d(committed_us, w2),
                    ms(t2 - t0),
                ]);
            }
        }
        for _ in 0..per_poll {
            // A 100 ms polling awaiter: send, then look at the cursor, and
            // sleep 100 ms between looks.
            let stream = Uuid::now_v7();
            let scope = rt.scope();
            let start = Instant::now();
            scope.send(Ping { stream }).await.expect("send");
            scope.complete().await.expect("complete");
            loop {
                let version: Option<i64> = sqlx::query_scalar(
                    "select version from wh_perspective_cursors
                      where perspective = $1 and model_key = $2",
                )
                .bind(Pings::NAME)
                .bind(stream)
                .fetch_optional(&probe)
                .await
                .expect("poll");
                if version.unwrap_or(0) >= 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !warm {
                polled.push(ms(start.elapsed()));
            }
        }
    }
    // The floor: a NOTIFY from one connection to a listener on another.
    let mut notify = Vec::new();
    {
        let mut listener = sqlx::postgres::PgListener::connect(&db.url)
            .await
            .expect("listen");
        listener.listen("bench_floor").await.expect("listen");
        for _ in 0..plan.n(200) {
            let start = Instant::now();
            sqlx::query("select pg_notify('bench_floor', 'x')")
                .execute(&probe)
                .await
                .expect("notify");
            listener.recv().await.expect("recv");
            notify.push(ms(start.elapsed()));
        }
    }
    let s = sorted(synced);
    let p = sorted(polled);
    let n = sorted(notify);
    let (s50, s99, p50) = (pct(&s, 0.5), pct(&s, 0.99), pct(&p, 0.5));
    row(
        rows,
        format!(
            "ryw: send_and_sync, runner in another process, p50 / p99 ({} samples)",
            s.len()
        ),
        format!("{s50:.2} / {s99:.2} ms"),
        "p50 <= 3 ms, p99 <= 10 ms",
    );
    row(
        rows,
        format!(
            "ryw: baseline 100 ms polling awaiter, p50 / p99 ({} samples)",
            p.len()
        ),
        format!("{p50:.1} / {:.1} ms", pct(&p, 0.99)),
        "",
    );
    row(
        rows,
        "ryw: poller p50 / send_and_sync p50",
        format!("{:.1}x", p50 / s50),
        ">= 15x",
    );
    let col = |i: usize| sorted(traced.iter().map(|t| t[i]).collect::<Vec<_>>());
    let names = [
        "append (send: the append's round trips)",
        "append returned -> child applies (NOTIFY to the runner, feed read, claim, read stream)",
        "apply + commit in the child (apply fn -> after COMMIT)",
        "child committed -> wait returns (NOTIFY back, re-ask, wake)",
        "total send + wait",
    ];
    for (i, name) in names.iter().enumerate() {
        let c = col(i);
        row(
            rows,
            format!("ryw breakdown: {name}, p50 / p99"),
            format!("{:.2} / {:.2} ms", pct(&c, 0.5), pct(&c, 0.99)),
            "",
        );
    }
    row(
        rows,
        "ryw floor: NOTIFY -> listener receives (same run), p50 / p99",
        format!("{:.2} / {:.2} ms", pct(&n, 0.5), pct(&n, 0.99)),
        "",
    );
    row(
        rows,
        "ryw: waits that did not end Synced",
        missed.to_string(),
        "0",
    );
    drop(rt);
    pg.close().await;
    probe.close().await;
    drop(_child);
    db.drop_now().await;
}

// ------------------------------------------------------------ 5. strategy

/// The realtime counter's twin, applied in batches.
struct BatchedCount;

#[perspective(model = Count, name = "bench.pg.batched", strategy = batch(100, "50ms"))]
impl BatchedCount {
    fn noted(c: &mut Count, e: &Noted) {
        c.n += e.n;
    }
}

/// Committed transactions in database `name` so far (every session's
/// counts are in once it closed).
async fn xact_commit(admin_url: &str, name: &str) -> i64 {
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("admin connection");
    let n: i64 = sqlx::query_scalar("select xact_commit from pg_stat_database where datname = $1")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .expect("read pg_stat_database");
    let _ = admin.close().await;
    n
}

/// One variant on a fresh database: (events per second, transactions per
/// event). With `apply` off, `P` is not registered: the appends alone.
async fn strategy_run<P: whizbang_core::Perspective>(
    case: &str,
    events: usize,
    per_command: usize,
    apply: bool,
) -> (f64, f64) {
    const CLIENTS: usize = 8;
    let db = Db::fresh(case).await;
    let registry = Registry::builder().receptors_of::<Desk>();
    let registry = if apply {
        registry.perspective::<P>()
    } else {
        registry
    };
    let registry = registry.build().expect("registry");
    // Let the setup sessions' counts land before the first reading.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = xact_commit(&db.admin_url, &db.name).await;
    let (rt, pg) = runtime_on(&db.url, registry, PostgresOptions::default()).await;
    let streams: Arc<Vec<Uuid>> = Arc::new((0..1000).map(|_| Uuid::now_v7()).collect());
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (rt, streams) = (rt.clone(), Arc::clone(&streams));
        clients.spawn(async move {
            let commands = events / per_command;
            for i in (c..commands).step_by(CLIENTS) {
                let scope = rt.scope();
                let at = i * per_command;
                if per_command == 1 {
                    let stream = streams[at % streams.len()];
                    scope.send(Note { stream }).await.expect("send");
                } else {
                    let streams = (at..at + per_command)
                        .map(|j| streams[j % streams.len()])
                        .collect();
                    scope.send(NoteMany { streams }).await.expect("send");
                }
                scope.complete().await.expect("complete");
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("a client");
    }
    if apply {
        let options = SyncFilter::all().with_timeout(Duration::from_secs(120));
        let synced = rt
            .sync_awaiter()
            .wait::<P>(options)
            .await
            .expect("wait for every apply");
        assert!(
            synced.is_synced(),
            "{case}: not every event applied: {synced:?}"
        );
    }
    let elapsed = started.elapsed();
    drop(rt);
    pg.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = xact_commit(&db.admin_url, &db.name).await;
    db.drop_now().await;
    let n = events as f64;
    (n / elapsed.as_secs_f64(), (after - before) as f64 / n)
}

async fn strategy(plan: &Plan, rows: &mut Vec<Row>) {
    let events = plan.n(10_000);
    let rounds = if plan.smoke { 1 } else { 3 };
    for per_command in [1, 10] {
        let (mut realtime, mut batch, mut appends) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let k = per_command;
            realtime.push(strategy_run::<C0>("strategy_realtime", events, k, true).await);
            batch.push(strategy_run::<BatchedCount>("strategy_batch", events, k, true).await);
            appends.push(strategy_run::<C0>("strategy_appends", events, k, false).await);
        }
        let median = |v: &mut Vec<(f64, f64)>| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v[v.len() / 2]
        };
        let (r, b, a) = (
            median(&mut realtime),
            median(&mut batch),
            median(&mut appends),
        );
        let load = format!("{events} events, {per_command}/command, 8 clients");
        row(
            rows,
            format!("strategy, {load}: appends alone events/s, xact/event"),
            format!("{:.0}/s, {:.2}", a.0, a.1),
            "",
        );
        row(
            rows,
            format!("strategy, {load}: realtime events/s, xact/event"),
            format!("{:.0}/s, {:.2}", r.0, r.1),
            "",
        );
        row(
            rows,
            format!("strategy, {load}: batch(100, 50ms) events/s, xact/event"),
            format!("{:.0}/s, {:.2}", b.0, b.1),
            "",
        );
        row(
            rows,
            format!("strategy, {load}: batch / realtime throughput"),
            format!("{:.2}x", b.0 / r.0),
            ">= 3x",
        );
        row(
            rows,
            format!("strategy, {load}: applying's own xact/event, realtime / batch"),
            format!("{:.3} / {:.3}", r.1 - a.1, b.1 - a.1),
            "",
        );
    }
}

// ------------------------------------------------------- 6. strategy_feed

/// Count and wall time of the runner's spans, by name: feed reads, the
/// catch-ups of a feed batch, the claim transactions inside them, the
/// checkpoint moves. A subscriber of its own (no tracing-subscriber in the
/// workspace), enabled for those four spans only.
mod spans {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, MutexGuard, OnceLock};
    use std::time::{Duration, Instant};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// Feed reads (one statement over the perspective's partitions).
    pub(crate) const FEED_READ: &str = "whizbang.postgres.feed_read";
    /// Every catch-up of one feed batch (tasks at the runner concurrency).
    pub(crate) const CATCH_UP: &str = "whizbang.postgres.batch";
    /// One claim transaction over many streams (`catch_up_together`).
    pub(crate) const CLAIM: &str = "whizbang.perspective.apply_batch";
    /// One claim transaction over one stream (`catch_up`).
    pub(crate) const APPLY: &str = "whizbang.perspective.apply";
    /// One fenced checkpoint move (every partition of a batch).
    pub(crate) const CHECKPOINT: &str = "whizbang.postgres.checkpoint";
    const NAMES: [&str; 5] = [FEED_READ, CATCH_UP, CLAIM, APPLY, CHECKPOINT];

    #[derive(Default)]
    struct Timer {
        next: AtomicU64,
        open: Mutex<HashMap<u64, (&'static str, Instant, usize)>>,
        totals: Mutex<HashMap<&'static str, (u64, Duration)>>,
    }

    static TIMER: OnceLock<Timer> = OnceLock::new();

    fn timer() -> &'static Timer {
        TIMER.get_or_init(Timer::default)
    }

    fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Installs the subscriber (once per process).
    pub(crate) fn install() {
        let _ = tracing::subscriber::set_global_default(Spans);
    }

    /// The totals since the last call: (spans closed, their summed wall time).
    pub(crate) fn take() -> HashMap<&'static str, (u64, Duration)> {
        std::mem::take(&mut *locked(&timer().totals))
    }

    struct Spans;

    impl Subscriber for Spans {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.is_span() && NAMES.contains(&metadata.name())
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            let t = timer();
            let id = t.next.fetch_add(1, Ordering::Relaxed) + 1;
            locked(&t.open).insert(id, (span.metadata().name(), Instant::now(), 1));
            Id::from_u64(id)
        }
        fn clone_span(&self, id: &Id) -> Id {
            if let Some(open) = locked(&timer().open).get_mut(&id.into_u64()) {
                open.2 += 1;
            }
            id.clone()
        }
        fn try_close(&self, id: Id) -> bool {
            let t = timer();
            let closed = {
                let mut open = locked(&t.open);
                match open.get_mut(&id.into_u64()) {
                    Some(o) if o.2 > 1 => {
                        o.2 -= 1;
                        None
                    }
                    Some(_) => open.remove(&id.into_u64()),
                    None => None,
                }
            };
            let Some((name, started, _)) = closed else {
                return false;
            };
            let mut totals = locked(&t.totals);
            let total = totals.entry(name).or_default();
            total.0 += 1;
            total.1 += started.elapsed();
            true
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

/// CPU time (user + system, clock ticks) of process `pid` (`"self"` for
/// this one), from `/proc`; 0 when it is gone.
fn cpu_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command's closing parenthesis start at field 3;
    // utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

/// Clock ticks per second of `/proc`'s CPU times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks of this process and of the PostgreSQL backends serving the
/// runner's runtime (its pool and LISTEN connections, `application_name`
/// `whizbang...`) in database `name`, by backend pid (the server is on this
/// machine).
async fn runner_cpu(admin_url: &str, name: &str) -> (u64, HashMap<i32, u64>) {
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("admin connection");
    let pids: Vec<i32> = sqlx::query_scalar(
        "select pid from pg_stat_activity where datname = $1 and application_name like 'whizbang%'",
    )
    .bind(name)
    .fetch_all(&mut admin)
    .await
    .expect("read pg_stat_activity");
    let _ = admin.close().await;
    let backends = pids
        .into_iter()
        .map(|pid| (pid, cpu_ticks(&pid.to_string())))
        .collect();
    (cpu_ticks("self"), backends)
}

/// CPU seconds between two [`runner_cpu`] readings: (this process, its
/// backends). A backend opened in between counts from zero.
fn cpu_between(before: &(u64, HashMap<i32, u64>), after: &(u64, HashMap<i32, u64>)) -> (f64, f64) {
    let own = after.0.saturating_sub(before.0) as f64 / TICKS_PER_SECOND;
    let backends: u64 = after
        .1
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.1.get(pid).copied().unwrap_or(0)))
        .sum();
    (own, backends as f64 / TICKS_PER_SECOND)
}

/// The appender process (`--child-append URL EVENTS RATE`): no runtime and
/// no perspective, `PgEventStore::append` on a pool of 8 over 1,000 streams,
/// one event per stream per append. `RATE` > 0: every 10 ms a burst of
/// `RATE / 100` appends of one event each, sent at once; `RATE` 0: appends of
/// 100 events on 100 streams, back to back (a backlog). Prints
/// `appended APPENDS SECONDS` (each append is one transaction).
async fn append_child(url: String, events: usize, rate: usize) {
    const STREAMS: usize = 1_000;
    let pool = raw_pool(&url, 8).await;
    let store = Arc::new(PgEventStore::new(pool.clone()));
    let streams: Arc<Vec<StreamId>> = Arc::new((0..STREAMS).map(|_| StreamId::new()).collect());
    let one = |at: usize| StreamAppend {
        stream_id: streams[at % STREAMS],
        expected: ExpectedVersion::Any,
        events: vec![new_event(streams[at % STREAMS], at as u64)],
    };
    let started = Instant::now();
    let mut appends = 0u64;
    if rate == 0 {
        for at in (0..events).step_by(100) {
            let batch = (at..(at + 100).min(events)).map(one).collect();
            store.append(batch).await.expect("append");
            appends += 1;
        }
    } else {
        let per_tick = (rate / 100).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next = 0;
        while next < events {
            tick.tick().await;
            let burst = per_tick.min(events - next);
            let mut sent = tokio::task::JoinSet::new();
            for at in next..next + burst {
                let (store, append) = (Arc::clone(&store), one(at));
                sent.spawn(async move { store.append(vec![append]).await.map(drop) });
            }
            while let Some(done) = sent.join_next().await {
                done.expect("an append task").expect("append");
                appends += 1;
            }
            next += burst;
        }
    }
    let took = started.elapsed().as_secs_f64();
    pool.close().await;
    println!("appended {appends} {took}");
}

/// Events this runtime's runner committed for one perspective; `done`
/// once `target` are in.
#[derive(Default)]
struct AppliedCount {
    n: AtomicU64,
    target: AtomicU64,
    done: tokio::sync::Notify,
}

/// One run of the `strategy_feed` case.
#[derive(Clone, Copy, Default)]
struct FeedRun {
    /// Events applied per second, from the first append (trickle) or the
    /// runner's start (backlog) until the last is committed.
    wall_eps: f64,
    /// Appends' own rate (trickle), events per second.
    offered_eps: f64,
    /// Seconds from the appender's end until the last event is committed.
    lag_s: f64,
    /// Runner CPU seconds: this process and its PostgreSQL backends.
    cpu_own: f64,
    cpu_backends: f64,
    /// Transactions per event: the database's, minus the appender's one
    /// per append (so including the LISTEN backends' own, one per
    /// notification they take in).
    xact: f64,
    /// The runner's statements and transactions per event, from its spans:
    /// feed reads, claim transactions (many streams or one), checkpoint
    /// moves.
    work: f64,
    /// Per 1,000 events: feed reads, claim transactions over many streams,
    /// over one stream, checkpoint moves.
    reads: f64,
    claims: f64,
    singles: f64,
    checkpoints: f64,
    /// Milliseconds per 1,000 events of span wall time: feed reads,
    /// catch-ups, checkpoint moves.
    read_ms: f64,
    catch_up_ms: f64,
    checkpoint_ms: f64,
}

/// One variant of `strategy_feed` on a fresh database: the appender is
/// another process; this one runs a runtime whose registry holds only `P`,
/// with the partitioned runner. `rate` > 0: the appender trickles at that
/// rate while the runner applies; `rate` 0: it appends everything first and
/// the runtime starts after. With `apply` off the registry holds nothing:
/// the runtime only listens (the floor every variant pays per append), and
/// the run ends with the appender.
async fn strategy_feed_run<P: whizbang_core::Perspective>(
    case: &str,
    events: usize,
    rate: usize,
    apply: bool,
) -> FeedRun {
    let db = Db::fresh(case).await;
    let backlog = rate == 0;
    let spawn_appender = || {
        let exe = std::env::current_exe().expect("the bench binary's path");
        tokio::process::Command::new(exe)
            .args([
                "--child-append",
                &db.url,
                &events.to_string(),
                &rate.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the appender process")
    };
    let finished = |out: std::process::Output| -> (u64, f64) {
        assert!(
            out.status.success(),
            "the appender failed: {:?}",
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("appended "))
            .expect("the appender's report");
        let mut parts = line.split_whitespace();
        let appends = parts.next().and_then(|p| p.parse().ok()).expect("appends");
        let took = parts.next().and_then(|p| p.parse().ok()).expect("seconds");
        (appends, took)
    };
    let mut appended = None;
    if backlog {
        let out = tokio::time::timeout(
            Duration::from_secs(300),
            spawn_appender().wait_with_output(),
        )
        .await
        .expect("the backlog appended within 300 s")
        .expect("the appender's output");
        appended = Some(finished(out));
    }
    let registry = if apply {
        Registry::builder().perspective::<P>()
    } else {
        // A receptor only: a registry must hold something.
        Registry::builder().receptors_of::<Desk>()
    };
    let registry = registry.build().expect("registry");
    let applied = Arc::new(AppliedCount::default());
    applied.target.store(events as u64, Ordering::Relaxed);
    let listener = {
        let applied = Arc::clone(&applied);
        move |report: &ApplyReport| {
            if report.perspective == P::NAME {
                let n = report.applied.len() as u64;
                let now = applied.n.fetch_add(n, Ordering::Relaxed) + n;
                if now >= applied.target.load(Ordering::Relaxed) {
                    applied.done.notify_one();
                }
            }
        }
    };
    let start_runtime = || async {
        let pg = Postgres::connect_with(&db.url, PostgresOptions::default())
            .await
            .expect("connect the backend");
        let rt = Runtime::builder()
            .registry(Arc::new(registry))
            .backend(pg.clone())
            .apply_listener(listener)
            .build()
            .expect("build the runtime");
        (rt, pg)
    };
    let (rt, pg, before, cpu_before, started, child);
    if backlog {
        tokio::time::sleep(Duration::from_millis(200)).await;
        before = xact_commit(&db.admin_url, &db.name).await;
        cpu_before = (cpu_ticks("self"), HashMap::new());
        started = Instant::now();
        (rt, pg) = start_runtime().await;
        child = None;
    } else {
        (rt, pg) = start_runtime().await;
        // Every partition leased before the appends start.
        let probe = raw_pool(&db.url, 1).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        if apply {
            loop {
                let held: i64 = sqlx::query_scalar(
                    "select count(*) from wh_partition_leases where perspective = $1 and owner is not null and expires_at > now()",
                )
                .bind(P::NAME)
                .fetch_one(&probe)
                .await
                .expect("count leases");
                if held >= 16 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{case}: partitions not leased in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        probe.close().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        before = xact_commit(&db.admin_url, &db.name).await;
        cpu_before = runner_cpu(&db.admin_url, &db.name).await;
        started = Instant::now();
        child = Some(spawn_appender());
    }
    let _ = spans::take();
    let mut child = child;
    if !apply {
        // Nothing applies: the run is the appends.
        let out = tokio::time::timeout(
            Duration::from_secs(300),
            child.take().expect("a trickle").wait_with_output(),
        )
        .await
        .expect("the appender ended")
        .expect("the appender's output");
        appended = Some(finished(out));
    }
    let waited = tokio::time::timeout(Duration::from_secs(300), async {
        while apply && applied.n.load(Ordering::Relaxed) < events as u64 {
            applied.done.notified().await;
        }
    })
    .await;
    let synced = started.elapsed();
    let cpu_after = runner_cpu(&db.admin_url, &db.name).await;
    let split = spans::take();
    assert!(
        waited.is_ok(),
        "{case}: {} of {events} events applied in 300 s",
        applied.n.load(Ordering::Relaxed)
    );
    if let Some(child) = child {
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("the appender ended")
            .expect("the appender's output");
        appended = Some(finished(out));
    }
    let (appends, append_s) = appended.expect("the appender reported");
    drop(rt);
    pg.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = xact_commit(&db.admin_url, &db.name).await;
    db.drop_now().await;
    let n = events as f64;
    let (cpu_own, cpu_backends) = cpu_between(&cpu_before, &cpu_after);
    let per_k = |name: &str| split.get(name).map_or(0.0, |s| s.0 as f64 * 1e3 / n);
    let ms_k = |name: &str| split.get(name).map_or(0.0, |s| ms(s.1) * 1e3 / n);
    let runner_xacts = if backlog {
        after - before
    } else {
        after - before - appends as i64
    };
    FeedRun {
        wall_eps: n / synced.as_secs_f64(),
        offered_eps: if backlog { 0.0 } else { n / append_s },
        lag_s: if backlog {
            0.0
        } else {
            (synced.as_secs_f64() - append_s).max(0.0)
        },
        cpu_own,
        cpu_backends,
        xact: runner_xacts as f64 / n,
        work: [
            spans::FEED_READ,
            spans::CLAIM,
            spans::APPLY,
            spans::CHECKPOINT,
        ]
        .iter()
        .map(|s| per_k(s))
        .sum::<f64>()
            / 1e3,
        reads: per_k(spans::FEED_READ),
        claims: per_k(spans::CLAIM),
        singles: per_k(spans::APPLY),
        checkpoints: per_k(spans::CHECKPOINT),
        read_ms: ms_k(spans::FEED_READ),
        catch_up_ms: ms_k(spans::CATCH_UP),
        checkpoint_ms: ms_k(spans::CHECKPOINT),
    }
}

/// The median of each field over the runs (each field on its own).
fn median_run(runs: &[FeedRun]) -> FeedRun {
    let m = |f: fn(&FeedRun) -> f64| pct(&sorted(runs.iter().map(f).collect()), 0.5);
    FeedRun {
        wall_eps: m(|r| r.wall_eps),
        offered_eps: m(|r| r.offered_eps),
        lag_s: m(|r| r.lag_s),
        cpu_own: m(|r| r.cpu_own),
        cpu_backends: m(|r| r.cpu_backends),
        xact: m(|r| r.xact),
        work: m(|r| r.work),
        reads: m(|r| r.reads),
        claims: m(|r| r.claims),
        singles: m(|r| r.singles),
        checkpoints: m(|r| r.checkpoints),
        read_ms: m(|r| r.read_ms),
        catch_up_ms: m(|r| r.catch_up_ms),
        checkpoint_ms: m(|r| r.checkpoint_ms),
    }
}

async fn strategy_feed(plan: &Plan, rows: &mut Vec<Row>) {
    spans::install();
    let events = plan.n(4_000);
    let rounds = if plan.smoke { 1 } else { 3 };
    let rate = std::env::var("WHIZBANG_BENCH_FEED_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(300);
    for rate in [rate, 0] {
        let trickle = rate != 0;
        // A backlog ten times the trickle: long enough to time.
        let events = if trickle { events } else { events * 10 };
        let (mut realtime, mut batch, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            realtime.push(strategy_feed_run::<C0>("feed_realtime", events, rate, true).await);
            batch.push(strategy_feed_run::<BatchedCount>("feed_batch", events, rate, true).await);
            if trickle {
                floor.push(strategy_feed_run::<C0>("feed_floor", events, rate, false).await);
            }
        }
        let load = if trickle {
            format!("strategy_feed, {events} at {rate}/s (appends of 1)")
        } else {
            format!("strategy_feed, backlog of {events} (appends of 100)")
        };
        let cpu = |runs: &[FeedRun]| {
            pct(
                &sorted(runs.iter().map(|x| x.cpu_own + x.cpu_backends).collect()),
                0.5,
            )
        };
        let floor_cpu = if trickle { cpu(&floor) } else { 0.0 };
        if trickle {
            let f = median_run(&floor);
            row(
                rows,
                format!("{load}: floor (listening, nothing registered): CPU s (process + backends); xact/event"),
                format!(
                    "{:.2} ({:.2} + {:.2}); {:.3}",
                    floor_cpu, f.cpu_own, f.cpu_backends, f.xact
                ),
                "",
            );
        }
        for (name, runs) in [("realtime", &realtime), ("batch(100, 50ms)", &batch)] {
            let v = median_run(runs);
            row(
                rows,
                format!("{load}: {name}: events/s wall; offered; lag after the last append"),
                format!(
                    "{:.0}/s; {:.0}/s; {:.2} s",
                    v.wall_eps, v.offered_eps, v.lag_s
                ),
                "",
            );
            let total = cpu(runs);
            row(
                rows,
                format!("{load}: {name}: runner CPU s (process + backends); above the floor: events per CPU s"),
                format!(
                    "{total:.2} ({:.2} + {:.2}); {:.0}/s",
                    v.cpu_own,
                    v.cpu_backends,
                    events as f64 / (total - floor_cpu).max(0.01)
                ),
                "",
            );
            row(
                rows,
                format!("{load}: {name}: xact/event (all; runner's work); per 1k events: feed reads, claims of many, of one, checkpoints"),
                format!(
                    "{:.3}; {:.3}; {:.0}, {:.0}, {:.0}, {:.0}",
                    v.xact, v.work, v.reads, v.claims, v.singles, v.checkpoints
                ),
                "",
            );
            row(
                rows,
                format!("{load}: {name}: ms per 1k events in feed reads, catch-ups, checkpoints"),
                format!(
                    "{:.0}, {:.0}, {:.0}",
                    v.read_ms, v.catch_up_ms, v.checkpoint_ms
                ),
                "",
            );
        }
        let (r, b) = (median_run(&realtime), median_run(&batch));
        let own = |runs: &[FeedRun]| (cpu(runs) - floor_cpu).max(0.01);
        row(
            rows,
            format!("{load}: batch / realtime events per runner CPU s, above the floor (all)"),
            format!(
                "{:.2}x ({:.2}x)",
                own(&realtime) / own(&batch),
                cpu(&realtime) / cpu(&batch)
            ),
            ">= 3x",
        );
        row(
            rows,
            format!("{load}: batch / realtime: wall events/s; runner's work xact/event"),
            format!(
                "{:.2}x; {:.3} / {:.3} = {:.2}x fewer",
                b.wall_eps / r.wall_eps,
                r.work,
                b.work,
                r.work / b.work.max(1e-9)
            ),
            "",
        );
    }
}

// ----------------------------------------------------------------- main

static CASES: AtomicU64 = AtomicU64::new(0);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(i) = args.iter().position(|a| a == "--child-append") {
        let arg = |k: usize| {
            args.get(i + k)
                .cloned()
                .expect("--child-append URL EVENTS RATE")
        };
        let events = arg(2).parse().expect("EVENTS");
        let rate = arg(3).parse().expect("RATE");
        tokio.block_on(append_child(arg(1), events, rate));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child-ryw") {
        let url = args.get(i + 1).cloned().expect("--child-ryw URL");
        tokio.block_on(ryw_child(url));
        return;
    }
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this
    // runs as a smoke test (tiny counts, unoptimised): not measurements.
    let smoke = !args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let runs = |case: &str| only.as_deref().is_none_or(|n| n == case);
    if smoke {
        println!("pg bench: smoke run (not under `cargo bench`): figures are not measurements");
    }
    let plan = Plan { quick, smoke };
    let load_before = load();
    let mut rows = Vec::new();
    tokio.block_on(async {
        if runs("append") {
            append(&plan, &mut rows).await;
            CASES.fetch_add(1, Ordering::Relaxed);
        }
        if runs("perspectives") {
            perspectives(&plan, &mut rows).await;
            CASES.fetch_add(1, Ordering::Relaxed);
        }
        if runs("e2e") {
            e2e(&plan, &mut rows).await;
            CASES.fetch_add(1, Ordering::Relaxed);
        }
        if runs("ryw") {
            ryw(&plan, &mut rows).await;
            CASES.fetch_add(1, Ordering::Relaxed);
        }
        if runs("strategy") {
            strategy(&plan, &mut rows).await;
            CASES.fetch_add(1, Ordering::Relaxed);
        }
        if runs("strategy_feed") {
            strategy_feed(&plan, &mut rows).await;
            CASES.fetch_add(1, Ordering::Relaxed);
        }
    });
    assert!(
        CASES.load(Ordering::Relaxed) > 0,
        "no case named {only:?}: use append, perspectives, e2e, ryw, strategy or strategy_feed"
    );
    println!(
        "whizbang PostgreSQL bench ({}; 2-worker tokio runtime; load {load_before} before, {} after)",
        if quick { "--quick" } else { "full" },
        load()
    );
    let w0 = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
    println!("{:w0$}  {:w1$}  goal", "measure", "value");
    println!("{}", "-".repeat(w0 + w1 + 16));
    for r in &rows {
        println!("{:w0$}  {:w1$}  {}", r.what, r.value, r.goal);
    }
}

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

// ----------------------------------------------------------------- main

static CASES: AtomicU64 = AtomicU64::new(0);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
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
    });
    assert!(
        CASES.load(Ordering::Relaxed) > 0,
        "no case named {only:?}: use append, perspectives, e2e, ryw or strategy"
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

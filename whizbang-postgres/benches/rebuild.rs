//! Rebuild throughput (issue 10): `Runtime::rebuild_named` of a perspective
//! over N events, against a raw replay loop over the same rows in the same
//! run, on a fresh database.
//!
//! Run: `cargo bench -p whizbang-postgres --bench rebuild` (1,000,000
//! events); `-- --quick` for 100,000; `-- --events N` for N; `--chunk N`
//! and `--parallel N` set the rebuild's options; `--pairs N` runs N pairs
//! (default 2) and adds their median ratio; `--raw-sorted-scan` plans the
//! raw loop's select without index scans (the table scanned and sorted,
//! which PostgreSQL picks itself below about a million rows). Needs
//! PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! - Raw replay: one `select` of every event row (the columns the event
//!   store reads) ordered by stream and version, streamed, each payload
//!   decoded with serde and folded into a `HashMap` of models in a plain
//!   loop. Nothing is written.
//! - Rebuild: the whole rebuild beside live (stream listing, chunked batch
//!   claims of the shadow, decode, fold, model writes, the fenced swap),
//!   live models absent, runner off.
//!
//! The two run alternately (raw, rebuild, raw, rebuild); the ratio is
//! rebuild events/s over raw events/s per pair (goal >= 0.7x), and with
//! more than two pairs their median (the machine's load moves single pairs).

use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use sqlx::{Connection as _, PgPool};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;
use whizbang_core::perspective::rebuild::RebuildOptions;
use whizbang_core::{perspective, Event, Registry, Runtime};
use whizbang_postgres::{Postgres, PostgresOptions};

/// Events per stream.
const PER_STREAM: u64 = 100;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "bench_rebuild.deposited")]
struct Deposited {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Totals {
    cents: i64,
    deposits: u64,
}

struct BenchTotals;

#[perspective(model = Totals, name = "bench_rebuild.totals")]
impl BenchTotals {
    fn deposited(t: &mut Totals, e: &Deposited) {
        t.cents += e.cents;
        t.deposits += 1;
    }
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn with_database(url: &str, name: &str) -> String {
    let (head, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let (base, _) = head
        .rsplit_once('/')
        .expect("DATABASE_URL names a database");
    format!("{base}/{name}{query}")
}

/// Fills `wh_events` and `wh_streams` with `events` deposits, `PER_STREAM` a stream.
async fn fill(pool: &PgPool, events: u64) {
    let streams = i64::try_from(events / PER_STREAM).expect("fits");
    sqlx::query(
        "with s as (select gen_random_uuid() as id from generate_series(1, $1)),
         heads as (
             insert into wh_streams (stream_id, version, partition) select id, $2, 0 from s
             returning stream_id)
         insert into wh_events (partition, event_id, stream_id, stream_version, event_type, data, metadata)
         select 0, gen_random_uuid(), h.stream_id, v, 'bench_rebuild.deposited',
                jsonb_build_object('account', h.stream_id, 'cents', v),
                jsonb_build_object('correlation_id', gen_random_uuid(), 'causation_id', null,
                                   'timestamp_us', 0, 'extra', '{}'::jsonb)
           from heads h, generate_series(1, $2) v",
    )
    .bind(streams)
    .bind(i64::try_from(PER_STREAM).expect("fits"))
    .execute(pool)
    .await
    .expect("fill the event store");
    // Vacuumed as well as analysed: the first read of freshly inserted rows
    // sets their hint bits (writes), which would burden the first pair's
    // raw loop alone.
    sqlx::query("vacuum analyze wh_events")
        .execute(pool)
        .await
        .expect("vacuum analyze");
}

/// The raw replay loop: events/s. `sorted_scan`: the select is planned
/// without index scans (a scan of the table and a sort), whatever the
/// planner would pick.
async fn raw_replay(pool: &PgPool, events: u64, sorted_scan: bool) -> f64 {
    // In a transaction of its own: `set local` ends with it, so the pooled
    // connection goes back to the rebuild with the planner as it was.
    let mut tx = pool.begin().await.expect("a transaction");
    if sorted_scan {
        for setting in ["enable_indexscan", "enable_bitmapscan"] {
            sqlx::query(&format!("set local {setting} = off"))
                .execute(&mut *tx)
                .await
                .expect("set the planner");
        }
    }
    let started = Instant::now();
    let mut models: HashMap<Uuid, Totals> = HashMap::new();
    let mut rows = sqlx::query_as::<_, (i64, Uuid, Uuid, i64, String, String, String)>(
        "select global_position, event_id, stream_id, stream_version, event_type,
                data::text, metadata::text
           from wh_events order by stream_id, stream_version",
    )
    .fetch(&mut *tx);
    let mut n = 0;
    while let Some((_, _, stream, _, event_type, data, _)) = rows.try_next().await.expect("row") {
        if event_type == "bench_rebuild.deposited" {
            let e: Deposited = serde_json::from_str(&data).expect("decodes");
            let m = models.entry(stream).or_default();
            m.cents += e.cents;
            m.deposits += 1;
        }
        n += 1;
    }
    assert_eq!(n, events);
    assert_eq!(models.len() as u64, events / PER_STREAM);
    events as f64 / started.elapsed().as_secs_f64()
}

/// A full rebuild: events/s.
async fn rebuild(rt: &Runtime, events: u64, options: RebuildOptions) -> f64 {
    let started = Instant::now();
    let report = rt
        .rebuild_named("bench_rebuild.totals", options)
        .await
        .expect("rebuild");
    assert_eq!(report.events, events);
    events as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = match args.iter().position(|a| a == "--events") {
        Some(i) => args[i + 1].parse().expect("--events N"),
        None if args.iter().any(|a| a == "--quick") => 100_000,
        None => 1_000_000,
    };
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].parse::<u64>().expect("a number"))
    };
    let mut options = RebuildOptions::default();
    if let Some(chunk) = arg("--chunk") {
        options = options.chunk_events(chunk);
    }
    if let Some(parallel) = arg("--parallel") {
        options = options.parallel(usize::try_from(parallel).expect("fits"));
    }
    let pairs = arg("--pairs").unwrap_or(2).max(1);
    let sorted_scan = args.iter().any(|a| a == "--raw-sorted-scan");
    println!(
        "chunks of {} events, {} in flight",
        options.chunk_events, options.parallel
    );
    let url = database_url();
    let name = format!("wh_bench_rebuild_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url} ({e}): start it"));
    sqlx::query(&format!("create database {name}"))
        .execute(&mut admin)
        .await
        .expect("create the bench database");
    let db_url = with_database(&url, &name);
    let pg = Postgres::connect_with(&db_url, PostgresOptions::default().runner(false))
        .await
        .expect("connect");
    pg.migrate().await.expect("migrate");
    let pool = pg.pool().clone();
    let fill_started = Instant::now();
    fill(&pool, events).await;
    println!(
        "filled {events} events ({} streams) in {:.1}s",
        events / PER_STREAM,
        fill_started.elapsed().as_secs_f64()
    );
    let registry = Registry::builder()
        .perspective::<BenchTotals>()
        .build()
        .expect("registry");
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .expect("runtime");
    println!("| pair | raw replay events/s | rebuild events/s | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    let mut ratios = Vec::new();
    for pair in 1..=pairs {
        let raw = raw_replay(&pool, events, sorted_scan).await;
        let rebuilt = rebuild(&rt, events, options.clone()).await;
        println!(
            "| {pair} | {raw:.0} | {rebuilt:.0} | {:.2}x |",
            rebuilt / raw
        );
        ratios.push(rebuilt / raw);
    }
    if ratios.len() > 2 {
        ratios.sort_by(f64::total_cmp);
        println!("| median | | | {:.2}x |", ratios[ratios.len() / 2]);
    }
    drop(rt);
    pg.close().await;
    sqlx::query(&format!("drop database {name} with (force)"))
        .execute(&mut admin)
        .await
        .expect("drop the bench database");
}

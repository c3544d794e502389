//! Keyed (multi-stream) perspective catch-up on PostgreSQL against the
//! per-stream perspective of the same events, in the same run.
//!
//! Run: `cargo bench -p whizbang-postgres --bench keyed` (100,000 events);
//! `-- --quick` for 20,000; `-- --events N` for N; `-- --rounds N` (3).
//! Needs PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); creates and drops its
//! own database.
//!
//! The events: orders placed on `events / 5` order streams (5 each), for
//! 100 customers, appended once (500 streams per transaction, untimed).
//! Each round times, one after the other on the same events:
//!
//! - per-stream, partitioned runner: a perspective with one model per order
//!   stream, applied by a fresh runtime's partitioned runner (leases, the
//!   partition feeds, 100 streams caught up per transaction), from a start
//!   with no cursor until every stream's cursor is at its head (polled
//!   every 5 ms);
//! - keyed, partitioned runner: the keyed perspective (one model per
//!   customer, one cursor over the global order), applied by a fresh
//!   runtime's partitioned runner, from nothing numbered and no cursor until
//!   the cursor stands on the last event (polled every 5 ms);
//! - keyed, one call: the same from `Runtime::catch_up(name, KEYED_CURSOR)`
//!   with the runner off: the sequencer and the engine's batches alone.
//!
//! Between rounds each variant's cursors, models and feed checkpoints are
//! deleted, and so is the global order (so each keyed round numbers the
//! events again). Reported: events/s of each round's median and the
//! ratios to the per-stream runner.

use serde::{Deserialize, Serialize};
use sqlx::{Connection as _, PgPool};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;
use whizbang_core::backend::{EventMetadata, EventStore as _, NewEvent, StreamAppend};
use whizbang_core::perspective::KEYED_CURSOR;
use whizbang_core::{
    perspective, Event, EventId, ExpectedVersion, MessageId, Metadata, Perspective, Registry,
    Runtime, StreamId,
};
use whizbang_postgres::{PgEventStore, Postgres, PostgresOptions};

/// Events per order stream.
const PER_STREAM: u64 = 5;
const CUSTOMERS: usize = 100;
/// Streams per append transaction while filling.
const FILL_TX: usize = 500;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "bench_keyed.order_placed")]
struct OrderPlaced {
    #[stream_key]
    order: Uuid,
    customer: Uuid,
    amount: i64,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Totals {
    amount: i64,
    orders: u64,
}

/// One model per order stream.
struct PerOrder;

#[perspective(model = Totals, name = "bench_keyed.per_order")]
impl PerOrder {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.amount += e.amount;
        t.orders += 1;
    }
}

/// One model per customer, over every order stream.
struct PerCustomer;

#[perspective(model = Totals, key = customer, name = "bench_keyed.per_customer")]
impl PerCustomer {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.amount += e.amount;
        t.orders += 1;
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

fn order_placed(order: Uuid, customer: Uuid, amount: i64) -> NewEvent {
    let data = serde_json::json!({ "order": order, "customer": customer, "amount": amount });
    NewEvent {
        event_id: EventId::new(),
        stream_id: StreamId::from(order),
        event_type: "bench_keyed.order_placed",
        data: serde_json::value::to_raw_value(&data).expect("serialises"),
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

/// Appends `PER_STREAM` orders to each of `events / PER_STREAM` order
/// streams, a version of every stream per round, `FILL_TX` streams per
/// transaction.
async fn fill(pool: &PgPool, events: u64) {
    let store = PgEventStore::new(pool.clone());
    let customers: Vec<Uuid> = (0..CUSTOMERS).map(|_| Uuid::now_v7()).collect();
    let streams = usize::try_from(events / PER_STREAM).expect("fits");
    let orders: Vec<(Uuid, Uuid)> = (0..streams)
        .map(|i| (Uuid::now_v7(), customers[i % CUSTOMERS]))
        .collect();
    let mut amount = 0;
    for version in 0..PER_STREAM {
        for chunk in orders.chunks(FILL_TX) {
            let appends = chunk
                .iter()
                .map(|&(order, customer)| {
                    amount += 1;
                    StreamAppend {
                        stream_id: StreamId::from(order),
                        expected: match version {
                            0 => ExpectedVersion::NoStream,
                            v => ExpectedVersion::Exact(v),
                        },
                        events: vec![order_placed(order, customer, amount)],
                    }
                })
                .collect();
            store.append(appends).await.expect("append");
        }
    }
    sqlx::query("analyze").execute(pool).await.expect("analyze");
}

/// Forgets everything `perspective` applied (and the global order).
async fn reset(pool: &PgPool, perspective: &str) {
    for sql in [
        "delete from wh_perspective_cursors where perspective = $1",
        "delete from wh_perspective_rows where perspective = $1",
        "delete from wh_feed_checkpoints where perspective = $1",
    ] {
        sqlx::query(sql)
            .bind(perspective)
            .execute(pool)
            .await
            .expect("reset");
    }
    sqlx::query("truncate wh_event_order")
        .execute(pool)
        .await
        .expect("truncate the order");
    sqlx::query("vacuum analyze wh_perspective_cursors, wh_perspective_rows, wh_event_order")
        .execute(pool)
        .await
        .expect("vacuum");
}

async fn runtime_of<P: Perspective>(url: &str, runner: bool) -> (Runtime, Postgres) {
    let pg = Postgres::connect_with(url, PostgresOptions::default().runner(runner))
        .await
        .expect("connect");
    let registry = Registry::builder()
        .perspective::<P>()
        .build()
        .expect("registry");
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .expect("runtime");
    (rt, pg)
}

/// Polls every 5 ms until `sql` (one number, or no row) answers `want`
/// (at most ten minutes).
async fn until(pool: &PgPool, sql: &str, perspective: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let got: Option<i64> = sqlx::query_scalar::<_, Option<i64>>(sql)
            .bind(perspective)
            .fetch_optional(pool)
            .await
            .expect("progress")
            .flatten();
        if got == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "not applied in ten minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The keyed cursor's position (`KEYED_CURSOR` is the nil id).
const KEYED_AT: &str = "select version from wh_perspective_cursors
                         where perspective = $1
                           and model_key = '00000000-0000-0000-0000-000000000000'";

/// The per-stream perspective by the partitioned runner: seconds.
async fn per_stream_runner(url: &str, pool: &PgPool, events: u64) -> f64 {
    reset(pool, PerOrder::NAME).await;
    let started = Instant::now();
    let (rt, pg) = runtime_of::<PerOrder>(url, true).await;
    until(
        pool,
        "select sum(version)::bigint from wh_perspective_cursors where perspective = $1",
        PerOrder::NAME,
        i64::try_from(events).expect("fits"),
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    drop(rt);
    pg.close().await;
    secs
}

/// The keyed perspective by the partitioned runner: seconds.
async fn keyed_runner(url: &str, pool: &PgPool, events: u64) -> f64 {
    reset(pool, PerCustomer::NAME).await;
    let started = Instant::now();
    let (rt, pg) = runtime_of::<PerCustomer>(url, true).await;
    until(
        pool,
        KEYED_AT,
        PerCustomer::NAME,
        i64::try_from(events).expect("fits"),
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    drop(rt);
    pg.close().await;
    secs
}

/// The keyed perspective in one `catch_up` call, runner off: seconds.
async fn keyed_call(url: &str, pool: &PgPool, events: u64) -> f64 {
    reset(pool, PerCustomer::NAME).await;
    let (rt, pg) = runtime_of::<PerCustomer>(url, false).await;
    let started = Instant::now();
    rt.catch_up(PerCustomer::NAME, KEYED_CURSOR)
        .await
        .expect("catch up");
    let secs = started.elapsed().as_secs_f64();
    // Already there: the call returns once the feed is exhausted.
    until(
        pool,
        KEYED_AT,
        PerCustomer::NAME,
        i64::try_from(events).expect("fits"),
    )
    .await;
    drop(rt);
    pg.close().await;
    secs
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].parse::<u64>().expect("a number"))
    };
    let events = arg("--events").unwrap_or(if args.iter().any(|a| a == "--quick") {
        20_000
    } else {
        100_000
    });
    let events = events / PER_STREAM * PER_STREAM;
    let rounds = arg("--rounds").unwrap_or(3);
    let url = database_url();
    let name = format!("wh_bench_keyed_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url} ({e}): start it"));
    sqlx::query(&format!("create database {name}"))
        .execute(&mut admin)
        .await
        .expect("create the bench database");
    let db_url = with_database(&url, &name);
    let pool = PgPool::connect(&db_url).await.expect("connect");
    whizbang_postgres::MIGRATOR
        .run(&pool)
        .await
        .expect("migrate");
    let fill_started = Instant::now();
    fill(&pool, events).await;
    println!(
        "filled {events} events ({} order streams, {CUSTOMERS} customers) in {:.1}s",
        events / PER_STREAM,
        fill_started.elapsed().as_secs_f64()
    );
    let (mut per_stream, mut keyed, mut call) = (Vec::new(), Vec::new(), Vec::new());
    println!("| round | per-stream runner | keyed runner | keyed one call |");
    println!("| ---: | ---: | ---: | ---: |");
    for round in 1..=rounds {
        let p = per_stream_runner(&db_url, &pool, events).await;
        let k = keyed_runner(&db_url, &pool, events).await;
        let c = keyed_call(&db_url, &pool, events).await;
        println!("| {round} | {p:.2}s | {k:.2}s | {c:.2}s |");
        per_stream.push(p);
        keyed.push(k);
        call.push(c);
    }
    let rate = |secs: f64| events as f64 / secs;
    let (p, k, c) = (median(per_stream), median(keyed), median(call));
    println!();
    println!("| variant | median | events/s | against the per-stream runner |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| per-stream perspective, partitioned runner | {p:.2}s | {:.0} | 1x |",
        rate(p)
    );
    println!(
        "| keyed perspective, partitioned runner | {k:.2}s | {:.0} | {:.2}x |",
        rate(k),
        p / k
    );
    println!(
        "| keyed perspective, one `catch_up` call | {c:.2}s | {:.0} | {:.2}x |",
        rate(c),
        p / c
    );
    pool.close().await;
    sqlx::query(&format!("drop database {name} with (force)"))
        .execute(&mut admin)
        .await
        .expect("drop the bench database");
}

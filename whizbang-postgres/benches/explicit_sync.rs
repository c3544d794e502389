//! Explicit sync of many named streams in one call against one call per
//! stream, on PostgreSQL, rounds of the variants interleaved in one run.
//!
//! Run: `cargo bench -p whizbang-postgres --bench explicit_sync` (add
//! `-- --quick` for fewer rounds). Needs PostgreSQL at `DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`); works in a
//! schema of its own, dropped at the end.
//!
//! Each round appends one event to each of 1,000 streams (untimed), then
//! times one variant bringing the perspective up to date on all of them:
//! - `batched`: `runtime.sync::<P>().streams(ids).run()`, one call (chunks
//!   of 500 models claimed and committed per transaction);
//! - `single calls`: `runtime.sync::<P>().streams([id]).run()` per stream
//!   (each a run of its own, with its sync-log row);
//! - `catch_up calls`: `runtime.catch_up(name, id)` per stream (the
//!   engine's single-stream path, no run bookkeeping): the floor of any
//!   one-call-per-stream loop.
//!
//! Ratio = the per-stream variant's time / the batched time (goal >= 10x).

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;
use whizbang_core::backend::{EventMetadata, NewEvent, StreamAppend};
use whizbang_core::{
    perspective, Event, EventId, ExpectedVersion, MessageId, Metadata, Perspective as _, Registry,
    Runtime, StreamId,
};
use whizbang_postgres::{Postgres, PostgresOptions};

#[derive(Event, Serialize, Deserialize, Clone)]
#[event(name = "bench.xsync.added")]
struct Added {
    #[stream_key]
    stream: Uuid,
    n: u64,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Total {
    sum: u64,
    count: u64,
}

struct Totals;
#[perspective(model = Total, name = "bench.xsync.totals")]
impl Totals {
    fn added(t: &mut Total, e: &Added) {
        t.sum += e.n;
        t.count += 1;
    }
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// One event on each stream, in one append.
async fn append_round(rt: &Runtime, streams: &[StreamId], n: u64) {
    let appends = streams
        .iter()
        .map(|&stream| {
            let data = serde_json::json!({ "stream": stream, "n": n });
            StreamAppend {
                stream_id: stream,
                expected: ExpectedVersion::Any,
                events: vec![NewEvent {
                    event_id: EventId::new(),
                    stream_id: stream,
                    event_type: "bench.xsync.added",
                    data: serde_json::value::to_raw_value(&data).expect("JSON"),
                    metadata: EventMetadata {
                        correlation_id: MessageId::new(),
                        causation_id: None,
                        timestamp: SystemTime::now(),
                        extra: Metadata::default(),
                    },
                    typed: None,
                    outbound: false,
                }],
            }
        })
        .collect();
    rt.event_store().append(appends).await.expect("append");
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Batched,
    SingleCalls,
    CatchUpCalls,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Batched => "batched (1 call)",
            Variant::SingleCalls => "single calls (sync().streams([id]))",
            Variant::CatchUpCalls => "catch_up calls (engine floor)",
        }
    }
}

/// Brings every stream up to date the way `variant` does; the time taken.
async fn timed(rt: &Runtime, streams: &[StreamId], variant: Variant) -> Duration {
    let start = Instant::now();
    match variant {
        Variant::Batched => {
            let report = rt
                .sync::<Totals>()
                .streams(streams.iter().copied())
                .run()
                .await
                .expect("batched sync");
            assert_eq!(
                report.totals().applied,
                streams.len(),
                "every stream applied"
            );
        }
        Variant::SingleCalls => {
            for &id in streams {
                let report = rt
                    .sync::<Totals>()
                    .streams([id])
                    .run()
                    .await
                    .expect("single sync");
                assert_eq!(report.totals().applied, 1);
            }
        }
        Variant::CatchUpCalls => {
            for &id in streams {
                let applied = rt.catch_up(Totals::NAME, id).await.expect("catch_up");
                assert!(applied.is_some());
            }
        }
    }
    start.elapsed()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

async fn run(smoke: bool, quick: bool) {
    let streams_n = if smoke { 10 } else { 1000 };
    let rounds = if smoke {
        1
    } else if quick {
        3
    } else {
        7
    };
    let schema = format!("bench_xsync_{}", std::process::id());
    let url = database_url();
    let options = PostgresOptions::default()
        .runner(false)
        .schema(schema.clone());
    let pg = Postgres::connect_with_options(url.parse().expect("DATABASE_URL parses"), options)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach PostgreSQL at {url} ({e}): start it, or set DATABASE_URL")
        });
    pg.migrate().await.expect("migrate");
    let registry = Registry::builder()
        .perspective::<Totals>()
        .build()
        .expect("registry");
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .expect("runtime");
    let mut streams: Vec<StreamId> = (0..streams_n).map(|_| StreamId::new()).collect();
    streams.sort();

    let variants = [
        Variant::Batched,
        Variant::SingleCalls,
        Variant::CatchUpCalls,
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    let mut n = 0;
    // A warm-up round, untimed.
    n += 1;
    append_round(&rt, &streams, n).await;
    timed(&rt, &streams, Variant::Batched).await;
    for _ in 0..rounds {
        for (i, &variant) in variants.iter().enumerate() {
            n += 1;
            append_round(&rt, &streams, n).await;
            times[i].push(timed(&rt, &streams, variant).await);
        }
    }
    let batched = median(times[0].clone());
    println!(
        "explicit sync of {streams_n} named streams on PostgreSQL, {rounds} rounds per variant \
         interleaved ({}), medians:",
        if smoke {
            "smoke"
        } else if quick {
            "--quick"
        } else {
            "full"
        }
    );
    for (i, &variant) in variants.iter().enumerate() {
        let m = median(times[i].clone());
        println!(
            "  {:<40} {:>10.1} ms  {:>8.0} streams/s  ratio {:>6.1}x",
            variant.name(),
            m.as_secs_f64() * 1e3,
            streams_n as f64 / m.as_secs_f64(),
            m.as_secs_f64() / batched.as_secs_f64()
        );
    }
    drop(rt);
    if let Ok(mut admin) = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url()).await
    {
        let _ = sqlx::query(&format!("drop schema if exists {schema} cascade"))
            .execute(&mut admin)
            .await;
    }
    pg.close().await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this
    // runs as a smoke test (tiny counts, unoptimised): not measurements.
    let smoke = !args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run(smoke, quick));
}

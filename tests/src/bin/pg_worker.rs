//! An inbox worker process for the PostgreSQL worker tests (`tests/pg_workers.rs`).
//!
//! Usage: `pg_worker <url> <name> <lease_ms> <max_attempts> <backoff_ms>
//! [concurrency]` (default concurrency 8).
//!
//! A runtime on the PostgreSQL backend (runner off: its one perspective is
//! inline) with an inbox that receives `pg_workers.job` events, and an
//! `InboxWorker` (8 at once, polling every 50 ms) on the database's queue.
//! Handling a job receives it in a scope: the receptor fails a `poison` job,
//! prints `handling <n>` and sleeps `sleep_ms` for a slow one; the scope's
//! append stores the event (its id is the message id) and applies the inline
//! `BucketTotals` perspective in the same transaction. Processed records name
//! the handler `worker-<name>`.
//!
//! Prints `ready <instance>` once working. Stops gracefully on SIGTERM or at
//! the end of stdin (`InboxWorkerHandle::shutdown`: what it holds is finished
//! and reported), then prints `stopped processed=<n> retried=<n> dead=<n>
//! lost=<n> ticks=<n>` and exits 0.

use serde::{Deserialize, Serialize};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use whizbang_core::inbox::{Inbox, InboxWorker, InboxWorkerOptions};
use whizbang_core::queue::QueueOptions;
use whizbang_core::{
    perspective, receptor, Context, Error, Event, FromServices, InstanceId, Receptor, Registry,
    Result, Runtime, Services,
};
use whizbang_postgres::{Postgres, PostgresOptions};
use whizbang_tests::child::say;

/// A job the test enqueues (`payload` of a `pg_workers.job` message).
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_workers.job")]
struct Job {
    #[stream_key]
    bucket: uuid::Uuid,
    n: u64,
    #[serde(default)]
    poison: bool,
    #[serde(default)]
    sleep_ms: u64,
}

/// Jobs handled per bucket, applied inline with each job's event.
#[derive(Default, Clone, Serialize, Deserialize, Debug)]
struct Bucket {
    count: u64,
    sum: u64,
}

struct BucketTotals;

#[perspective(model = Bucket, mode = inline, name = "pg_workers.buckets")]
impl BucketTotals {
    fn job(m: &mut Bucket, e: &Job) {
        m.count += 1;
        m.sum += e.n;
    }
}

struct Working;

impl FromServices for Working {
    fn from_services(_: &Services) -> Result<Self> {
        Ok(Working)
    }
}

#[receptor]
impl Receptor<Job> for Working {
    async fn handle(&self, job: Job, _: &mut Context) -> Result<()> {
        if job.poison {
            return Err(Error::rejected(format!(
                "poison job {} always fails",
                job.n
            )));
        }
        if job.sleep_ms > 0 {
            say(&format!("handling {}", job.n));
            tokio::time::sleep(Duration::from_millis(job.sleep_ms)).await;
        }
        Ok(())
    }
}

fn number(name: &str, text: &str) -> std::result::Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{name} must be a number, not {text:?}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [url, name, lease_ms, max_attempts, backoff_ms, rest @ ..] if rest.len() <= 1 => {
            let concurrency = rest.first().map_or(Ok(8), |c| number("concurrency", c));
            match (
                number("lease_ms", lease_ms),
                number("max_attempts", max_attempts),
                number("backoff_ms", backoff_ms),
                concurrency,
            ) {
                (Ok(lease), Ok(max), Ok(backoff), Ok(concurrency)) => {
                    run(
                        url,
                        name,
                        Duration::from_millis(lease),
                        u32::try_from(max).unwrap_or(u32::MAX),
                        Duration::from_millis(backoff),
                        usize::try_from(concurrency).unwrap_or(8),
                    )
                    .await
                }
                (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => Err(e),
            }
        }
        _ => Err(
            "usage: pg_worker <url> <name> <lease_ms> <max_attempts> <backoff_ms> [concurrency]"
                .to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    url: &str,
    name: &str,
    lease: Duration,
    max_attempts: u32,
    backoff: Duration,
    concurrency: usize,
) -> std::result::Result<(), String> {
    let options = PostgresOptions::default()
        .pool_size(u32::try_from(concurrency + 4).unwrap_or(36))
        .runner(false);
    let pg = tokio::time::timeout(
        Duration::from_secs(30),
        Postgres::connect_with(url, options),
    )
    .await
    .map_err(|_| "connecting took longer than 30 s".to_owned())?
    .map_err(|e| e.to_string())?;
    let registry = Registry::builder()
        .perspective::<BucketTotals>()
        .receptors_of::<Working>()
        .build()
        .map_err(|e| e.to_string())?;
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let queue = pg.message_queue_with(
        QueueOptions::default()
            .max_attempts(max_attempts)
            .retry_backoff(backoff, backoff * 4),
    );
    let instance = InstanceId::new();
    let inbox = Inbox::builder(rt.clone(), Arc::new(queue))
        .event::<Job>()
        .instance(instance)
        .lease(lease)
        .handler(format!("worker-{name}"))
        .build();
    let worker = InboxWorker::start(
        inbox.clone(),
        InboxWorkerOptions::default()
            .concurrency(concurrency)
            .poll_interval(Duration::from_millis(50)),
    );
    say(&format!("ready {instance}"));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    // The end of stdin, read on a thread of its own (a blocked read there
    // does not hold up the exit, as one on tokio's blocking pool would).
    let (eof_tx, eof) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
        let _ = eof_tx.send(());
    });
    tokio::select! {
        _ = term.recv() => {}
        _ = eof => {}
    }
    tokio::time::timeout(Duration::from_secs(60), worker.shutdown())
        .await
        .map_err(|_| "the graceful shutdown took longer than 60 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let stats = inbox.stats();
    say(&format!(
        "stopped processed={} retried={} dead={} lost={} ticks={}",
        stats.processed, stats.retried, stats.dead_lettered, stats.lease_lost, stats.ticks
    ));
    drop(rt);
    let _ = tokio::time::timeout(Duration::from_secs(10), pg.close()).await;
    Ok(())
}

//! Child process for `tests/pg_sigkill.rs`: a runtime on the PostgreSQL
//! stores (event store, perspective store, sync backend; its runner applies
//! the `pg_totals!` perspective in this process) appends `Added` events to
//! the streams it is given until each holds `events` of them, round robin,
//! each at its exact expected version. It resumes where the store is: a
//! child killed and started again continues each stream after its last
//! stored event.
//!
//! Prints `appended <stream>:<seq>` after each acknowledged append and
//! `finished` once every stream is complete and its runner is idle.
//!
//! Usage: `pg_appender <url> <events> <stream>...`

use std::process::ExitCode;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::{ExpectedVersion, Runtime, StreamId};
use whizbang_postgres::{PgEventStore, PgPerspectiveStore, PgSyncBackend};
use whizbang_tests::child::say;

whizbang_tests::pg_totals!();

/// No step of the child may take longer than this.
const BOUND: Duration = Duration::from_secs(30);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [url, events, streams @ ..] if !streams.is_empty() => {
            let streams: Result<Vec<Uuid>, _> = streams.iter().map(|s| s.parse()).collect();
            match (events.parse::<u64>(), streams) {
                (Ok(events), Ok(streams)) => Ok((url.clone(), events, streams)),
                _ => Err("events must be a number and streams uuids".to_owned()),
            }
        }
        _ => Err("usage: pg_appender <url> <events> <stream>...".to_owned()),
    };
    let result = match parsed {
        Ok((url, events, streams)) => run(&url, events, &streams).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_appender: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(BOUND, f)
        .await
        .map_err(|_| format!("{what} took longer than {BOUND:?}"))
}

async fn run(url: &str, events: u64, streams: &[Uuid]) -> Result<(), String> {
    let pool = bounded("connect", whizbang_postgres::connect(url))
        .await?
        .map_err(|e| e.to_string())?;
    let rt = Runtime::builder()
        .event_store(PgEventStore::new(pool.clone()))
        .perspective_store(PgPerspectiveStore::new(pool.clone()))
        .sync_backend(PgSyncBackend::new(pool))
        .runner_concurrency(2)
        .build()
        .map_err(|e| e.to_string())?;

    let mut next = Vec::with_capacity(streams.len());
    for &stream in streams {
        let version = bounded(
            "read a stream version",
            rt.event_store().stream_version(StreamId::from(stream)),
        )
        .await?
        .map_err(|e| e.to_string())?;
        next.push(version + 1);
    }
    while next.iter().any(|&seq| seq <= events) {
        for (i, &stream) in streams.iter().enumerate() {
            let seq = next[i];
            if seq > events {
                continue;
            }
            let expected = if seq == 1 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(seq - 1)
            };
            let scope = rt.scope();
            let event = Added {
                account: stream,
                seq,
                amount: amount(stream, seq),
            };
            bounded("an append", scope.publish_expecting(event, expected))
                .await?
                .map_err(|e| format!("append {stream}:{seq}: {e}"))?;
            bounded("completing a scope", scope.complete())
                .await?
                .map_err(|e| e.to_string())?;
            say(&format!("appended {stream}:{seq}"));
            next[i] += 1;
        }
    }
    bounded("the runner going idle", rt.wait_idle()).await?;
    say("finished");
    Ok(())
}

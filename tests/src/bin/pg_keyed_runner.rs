//! Child process for `tests/pg_sigkill_keyed.rs`: the partitioned runner of
//! one keyed perspective (`pg_keyed_totals!`'s `KeyedTotals`, customer totals
//! over many order streams) and nothing else.
//!
//! Usage: `pg_keyed_runner <url> <lease_ms> <batch_size>`. Prints `ready
//! <instance id>` once started, then after each commit one line per order
//! stream whose events it applied: `applied <cursor> <event id>,...` (the
//! keyed cursor's global position after the commit and the stream's events
//! the commit applied), or `failed <cursor> <message>` when an apply failed.
//! Stops cleanly (releasing its leases) when its stdin closes, printing
//! `stopped`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use whizbang_core::backend::{ApplyListener, ApplyReport};
use whizbang_core::{Registry, Runtime};
use whizbang_postgres::{Postgres, PostgresOptions};
use whizbang_tests::child::say;

whizbang_tests::pg_keyed_totals!();

/// No step of the child may take longer than this.
const BOUND: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: pg_keyed_runner <url> <lease_ms> <batch_size>";

/// Prints what this process's runtime applied, one line per report.
struct Reporter;

impl ApplyListener for Reporter {
    fn on_apply(&self, report: &ApplyReport) {
        if let Some(failure) = &report.failure {
            say(&format!("failed {} {}", failure.version, failure.message));
        }
        if !report.applied.is_empty() {
            let ids: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
            say(&format!("applied {} {}", report.version, ids.join(",")));
        }
    }
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(BOUND, f)
        .await
        .map_err(|_| format!("{what} took longer than {BOUND:?}"))
}

async fn run(url: &str, lease: Duration, batch: u32) -> Result<(), String> {
    let options = PostgresOptions::default()
        .pool_size(6)
        .lease_duration(lease)
        .heartbeat_interval((lease / 10).max(Duration::from_millis(50)))
        .rescan_interval(Duration::from_millis(200))
        .batch_size(batch)
        .runner(true);
    let pg = bounded("connect", Postgres::connect_with(url, options))
        .await?
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    let registry = Registry::builder()
        .perspective::<KeyedTotals>()
        .build()
        .map_err(|e| e.to_string())?;
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .apply_listener(Reporter)
        .build()
        .map_err(|e| e.to_string())?;
    say(&format!("ready {}", pg.instance_id()));
    // Runs until the test closes stdin (or kills it).
    let eof = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink)
    });
    let _ = eof.await;
    drop(rt);
    bounded("closing the backend", pg.close()).await?;
    say("stopped");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [url, lease_ms, batch] => match (lease_ms.parse::<u64>(), batch.parse::<u32>()) {
            (Ok(lease), Ok(batch)) => Ok((url.clone(), Duration::from_millis(lease), batch)),
            _ => Err(format!("lease_ms and batch_size are numbers; {USAGE}")),
        },
        _ => Err(USAGE.to_owned()),
    };
    let result = match parsed {
        Ok((url, lease, batch)) => run(&url, lease, batch).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_keyed_runner: {e}");
            ExitCode::FAILURE
        }
    }
}

//! Child process for `tests/sync_starvation.rs`: waits on an async perspective
//! whose runner is paused (so the wait can only time out), debugger-aware, with
//! the timeout given, while its parent saturates every core. Prints
//! `outcome=<Synced|TimedOut|..> elapsed_ms=<active ms> wall_ms=<wall ms>`.
//!
//! Usage: `sync_starved_child <timeout_ms>`

use std::process::ExitCode;
use std::time::{Duration, Instant};
use whizbang_core::{PerspectiveSyncOptions, SyncFilter};
use whizbang_tests::child::{outcome_label, say};

whizbang_tests::child_ticks!();

/// No step of the child may take longer than this.
const BOUND: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let Some(timeout) = std::env::args()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
    else {
        eprintln!("usage: sync_starved_child <timeout_ms>");
        return ExitCode::from(2);
    };
    match run(timeout).await {
        Ok(line) => {
            say(&line);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sync_starved_child: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(timeout: Duration) -> Result<String, String> {
    let (_rt, scope) = one_unapplied_tick().await?;
    let options = PerspectiveSyncOptions::new(SyncFilter::current_scope())
        .timeout(timeout)
        .debugger_aware(true);
    let started = Instant::now();
    let result = tokio::time::timeout(BOUND, scope.sync_awaiter().wait::<Ticks>(options))
        .await
        .map_err(|_| "the wait never ended".to_owned())?
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    let outcome = outcome_label(&result.outcome);
    Ok(format!(
        "outcome={outcome} elapsed_ms={} wall_ms={}",
        result.elapsed.as_millis(),
        wall.as_millis()
    ))
}

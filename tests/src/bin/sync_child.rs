//! Child process for `tests/sync_sigstop.rs` and `tests/sync_starvation.rs`:
//! waits on an async perspective with a 2 s timeout (or `timeout_ms`) while its
//! runner is paused, is frozen by its parent (SIGSTOP), and resumes its runner
//! 500 ms (or `apply_delay_ms`) after the parent says on stdin that it was
//! continued. Prints `waiting` once the wait is registered, then
//! `outcome=<Synced|TimedOut|..> elapsed_ms=<active ms>`.
//!
//! Usage: `sync_child aware|unaware [timeout_ms apply_delay_ms]`

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;
use whizbang_core::{PerspectiveSyncOptions, SyncFilter};
use whizbang_tests::child::{outcome_label, say};

whizbang_tests::child_ticks!();

const WAIT_TIMEOUT_MS: u64 = 2_000;
const APPLY_DELAY_MS: u64 = 500;
/// No step of the child may take longer than this.
const BOUND: Duration = Duration::from_secs(30);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let aware = match std::env::args().nth(1).as_deref() {
        Some("aware") => true,
        Some("unaware") => false,
        _ => {
            eprintln!("usage: sync_child aware|unaware");
            return ExitCode::from(2);
        }
    };
    let arg = |n: usize, default: u64| match std::env::args().nth(n) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| format!("not a number of ms: {v:?}")),
    };
    let (timeout, delay) = match (arg(2, WAIT_TIMEOUT_MS), arg(3, APPLY_DELAY_MS)) {
        (Ok(t), Ok(d)) => (Duration::from_millis(t), Duration::from_millis(d)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("usage: sync_child aware|unaware [timeout_ms apply_delay_ms]: {e}");
            return ExitCode::from(2);
        }
    };
    match run(aware, timeout, delay).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sync_child: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(aware: bool, timeout: Duration, apply_delay: Duration) -> Result<(), String> {
    let (rt, scope) = one_unapplied_tick().await?;
    let options = PerspectiveSyncOptions::new(SyncFilter::current_scope())
        .timeout(timeout)
        .debugger_aware(aware);
    let awaiter = scope.sync_awaiter();
    let wait = tokio::spawn(async move { awaiter.wait::<Ticks>(options).await });

    // No signal exists for "the waiter registered": poll the tracker, bounded.
    tokio::time::timeout(BOUND, async {
        while rt.sync_tracker().waiter_count() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .map_err(|_| "the wait never registered".to_owned())?;

    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let _ = tx.send(line);
    });
    say("waiting");

    let told = tokio::time::timeout(BOUND, rx)
        .await
        .map_err(|_| "never told it was continued".to_owned())?
        .map_err(|_| "stdin reader vanished".to_owned())?;
    if told.trim() != "continued" {
        return Err(format!("unexpected line on stdin: {told:?}"));
    }
    tokio::time::sleep(apply_delay).await;
    rt.runner().resume();

    let result = tokio::time::timeout(BOUND, wait)
        .await
        .map_err(|_| "the wait never ended".to_owned())?
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let outcome = outcome_label(&result.outcome);
    say(&format!(
        "outcome={outcome} elapsed_ms={}",
        result.elapsed.as_millis()
    ));
    scope.complete().await.map_err(|e| e.to_string())?;
    Ok(())
}

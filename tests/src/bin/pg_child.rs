//! Child process for the PostgreSQL process tests (`tests/pg_infra.rs`).
//!
//! Usage:
//! - `pg_child sleep`: prints `ready`, then sleeps until killed (at most 10
//!   minutes, so a lost child cannot linger).
//! - `pg_child ledger <url> <prefix> <from> <to>`: for each `i` in
//!   `from..to`, records `<prefix>:<i>` in the ledger in a transaction of
//!   its own and prints `done <i>` after the commit; prints `finished` at
//!   the end.

use std::process::ExitCode;
use std::time::Duration;
use whizbang_tests::child::say;
use whizbang_tests::pg::ledger;

/// No step of the child may take longer than this.
const BOUND: Duration = Duration::from_secs(30);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["sleep"] => {
            say("ready");
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(())
        }
        ["ledger", url, prefix, from, to] => match (from.parse::<u64>(), to.parse::<u64>()) {
            (Ok(from), Ok(to)) => write_ledger(url, prefix, from, to).await,
            _ => Err(format!("not numbers: {from:?} {to:?}")),
        },
        _ => Err("usage: pg_child sleep | pg_child ledger <url> <prefix> <from> <to>".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_child: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn write_ledger(url: &str, prefix: &str, from: u64, to: u64) -> Result<(), String> {
    let pool = tokio::time::timeout(BOUND, whizbang_postgres::connect(url))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    for i in from..to {
        let key = format!("{prefix}:{i}");
        let work = async {
            let mut tx = pool.begin().await?;
            ledger::record(&mut tx, &key).await?;
            tx.commit().await
        };
        tokio::time::timeout(BOUND, work)
            .await
            .map_err(|_| format!("recording {key} timed out"))?
            .map_err(|e| format!("recording {key}: {e}"))?;
        say(&format!("done {i}"));
    }
    say("finished");
    Ok(())
}

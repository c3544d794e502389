//! Child process for `tests/pg_sigkill_rebuild.rs`: rebuilds one perspective
//! on a PostgreSQL database and reports as it goes.
//!
//! Usage: `pg_rebuilder <url> <chunk_events>`. Prints `progress <done>`
//! after each chunk the rebuild stored (the shadow's cursors reflect at
//! least `<done>` events), then `applies <n>` (apply calls this process
//! made), `resumed <true|false>`, `events <n>` and `finished`.

use serde::{Deserialize, Serialize};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::perspective::rebuild::RebuildOptions;
use whizbang_core::{perspective, Event, Registry, Runtime};
use whizbang_postgres::{Postgres, PostgresOptions};
use whizbang_tests::child::say;

/// No step of the child may take longer than this.
const BOUND: Duration = Duration::from_secs(120);

/// The event the parent appends (as JSON, under this name).
#[derive(Event, Serialize, Deserialize)]
#[event(name = "pg_rebuild_kill.deposited")]
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

static APPLIES: AtomicU64 = AtomicU64::new(0);

struct KillTotals;

#[perspective(model = Totals, name = "pg_rebuild_kill.totals")]
impl KillTotals {
    fn deposited(t: &mut Totals, e: &Deposited) {
        APPLIES.fetch_add(1, Ordering::Relaxed);
        t.cents += e.cents;
        t.deposits += 1;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [url, chunk] => match chunk.parse::<u64>() {
            Ok(chunk) => tokio::time::timeout(BOUND, rebuild(url, chunk))
                .await
                .unwrap_or_else(|_| Err("the rebuild timed out".to_owned())),
            Err(e) => Err(format!("not a number: {chunk:?}: {e}")),
        },
        _ => Err("usage: pg_rebuilder <url> <chunk_events>".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_rebuilder: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn rebuild(url: &str, chunk: u64) -> Result<(), String> {
    // No runner: only the rebuild touches the perspective here.
    let pg = Postgres::connect_with(url, PostgresOptions::default().runner(false))
        .await
        .map_err(|e| e.to_string())?;
    let registry = Registry::builder()
        .perspective::<KillTotals>()
        .build()
        .map_err(|e| e.to_string())?;
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let (options, mut progress) = RebuildOptions::default()
        .chunk_events(chunk)
        .fence_below(0)
        .watch();
    let reporter = tokio::spawn(async move {
        while progress.changed().await.is_ok() {
            let done = progress.borrow_and_update().done;
            say(&format!("progress {done}"));
        }
    });
    let report = rt
        .rebuild_named("pg_rebuild_kill.totals", options)
        .await
        .map_err(|e| e.to_string())?;
    let _ = reporter.await;
    say(&format!("applies {}", APPLIES.load(Ordering::Relaxed)));
    say(&format!("resumed {}", report.resumed));
    say(&format!("events {}", report.events));
    say("finished");
    drop(rt);
    pg.close().await;
    Ok(())
}

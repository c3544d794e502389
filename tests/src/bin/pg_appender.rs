//! Child process for the PostgreSQL process tests: a runtime on the whole
//! PostgreSQL backend (`Postgres::connect_with` + `Runtime::builder().backend(pg)`)
//! in one of four roles. Every role registers the `pg_totals!` perspective
//! (`AccountTotals`); leases are short (2 s unless given) so take-overs
//! happen within a test's bound.
//!
//! Usage:
//! - `pg_appender append <url> <events> <stream>...`: appends `Added` events
//!   to the streams until each holds `events` of them, round robin, each at
//!   its exact expected version, with the runner on (this process applies
//!   what it appends and takes its share of the partitions). It resumes where
//!   the store is: a child killed and started again continues each stream
//!   after its last stored event. Prints `appended <stream>:<seq>` after each
//!   acknowledged append and `finished` once every stream is complete and its
//!   in-process runner is idle. (`tests/pg_sigkill.rs`)
//! - `pg_appender append-only <url> <events> <stream>...`: the same with
//!   the runner off (`PostgresOptions::runner(false)`) and the runtime's
//!   in-process runner paused: this process applies nothing; another
//!   process's runner must.
//! - `pg_appender append-inline <url> <events> <stream>...`: the same with
//!   the runner off and the in-process runner paused, registering only the
//!   inline `InlineTotals` (`pg_inline_totals!`): the append applies it in
//!   its own transaction, nothing else does. (`tests/pg_sigkill_inline.rs`)
//! - `pg_appender runner <url> <lease_ms> <batch_size>`: only the runner
//!   (`PostgresOptions::runner(true)`), no appends. Prints `ready <instance
//!   id>` once started, `applied <stream> <from> <to>` after each commit that
//!   applied stream versions `from..=to` (`failed <stream> <version>
//!   <message>` when an apply failed), and stops cleanly (releasing its
//!   leases) when its stdin closes, printing `stopped`.
//! - `pg_appender runner-batched <url> <lease_ms> <batch_size>`: the same,
//!   registering only the held-back `BatchedTotals`
//!   (`pg_batched_totals!`). (`tests/pg_sigkill_runners.rs`)
//! - `pg_appender sync <url> <timeout_ms>`: process A of
//!   `tests/pg_cross_process_sync.rs`. The runner off and the in-process
//!   runner paused, with a second perspective (`AccountAudit`) that a runner
//!   child does not register. Prints `ready`, then one line per step:
//!   `sent totals=<outcome> audit=<outcome>` (`send_and_sync` of a command
//!   whose event both perspectives handle), `awaited outcome=<outcome>
//!   elapsed_ms=<n>` (a published event awaited on `AccountTotals` through the
//!   scope's awaiter), `unknown-id outcome=<outcome> elapsed_ms=<n>` (a wait
//!   on an event id never appended) and `lacking outcome=<outcome>
//!   elapsed_ms=<n>` (a wait on `AccountAudit`, which no runner runs), then
//!   `account <stream>` and `finished`. The three waits that cannot succeed
//!   use the timeout given; the one that can, 20 s.
//! - `pg_appender wait <url> <timeout_ms>`: the runner off and the
//!   in-process runner paused; publishes one event on a new stream, prints
//!   `appended <stream>`, waits on it through the scope's awaiter and prints
//!   `awaited outcome=<outcome> elapsed_ms=<n>`, then `finished`.

use serde::{Deserialize, Serialize};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::backend::{ApplyListener, ApplyReport};
use whizbang_core::{
    receptor, Command, Context, EventId, ExpectedVersion, PerspectiveSyncOptions, Receptor,
    Registry, Runtime, StreamId, SyncFilter,
};
use whizbang_postgres::{Postgres, PostgresOptions};
use whizbang_tests::child::{outcome_label, say};

whizbang_tests::pg_totals!();
whizbang_tests::pg_inline_totals!();
whizbang_tests::pg_batched_totals!();

/// A second view of the same events, registered only by the `sync` role:
/// no runner child runs it, so a wait on it cannot succeed.
#[derive(Default, Clone, Serialize, Deserialize, Debug)]
struct Audit {
    seen: u64,
}

struct AccountAudit;

#[whizbang_core::perspective(model = Audit, name = "pg_appender.audit")]
impl AccountAudit {
    fn added(m: &mut Audit, _: &Added) {
        m.seen += 1;
    }
}

/// Appends `Added { seq }` to `account` (the `sync` role's command).
#[derive(Command, Serialize, Deserialize)]
#[command(output = ())]
struct AddOne {
    account: Uuid,
    seq: u64,
}

#[derive(Default)]
struct Teller;

#[receptor]
impl Receptor<AddOne> for Teller {
    async fn handle(&self, cmd: AddOne, cx: &mut Context) -> whizbang_core::Result<()> {
        cx.emit(Added {
            account: cmd.account,
            seq: cmd.seq,
            amount: amount(cmd.account, cmd.seq),
        })?;
        Ok(())
    }
}

/// No step of the child may take longer than this.
const BOUND: Duration = Duration::from_secs(30);

/// The lease of the appending roles.
const APPEND_LEASE: Duration = Duration::from_secs(2);

const USAGE: &str = "usage: pg_appender append <url> <events> <stream>... | \
                     pg_appender append-only <url> <events> <stream>... | \
                     pg_appender append-inline <url> <events> <stream>... | \
                     pg_appender runner <url> <lease_ms> <batch_size> | \
                     pg_appender runner-batched <url> <lease_ms> <batch_size> | \
                     pg_appender sync <url> <timeout_ms> | \
                     pg_appender wait <url> <timeout_ms>";

/// What the command line asks for.
enum Role {
    Append {
        url: String,
        events: u64,
        streams: Vec<Uuid>,
        runner: bool,
        inline: bool,
    },
    Runner {
        url: String,
        lease: Duration,
        batch: u32,
        /// `BatchedTotals` instead of `AccountTotals`.
        batched: bool,
    },
    Sync {
        url: String,
        timeout: Duration,
    },
    Wait {
        url: String,
        timeout: Duration,
    },
}

fn parse(args: &[String]) -> Result<Role, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let number = |what: &str, s: &str| {
        s.parse::<u64>()
            .map_err(|e| format!("{what} must be a number, not {s:?} ({e}); {USAGE}"))
    };
    match args.as_slice() {
        [mode @ ("append" | "append-only" | "append-inline"), url, events, streams @ ..]
            if !streams.is_empty() =>
        {
            let streams = streams
                .iter()
                .map(|s| s.parse::<Uuid>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("streams must be uuids ({e}); {USAGE}"))?;
            Ok(Role::Append {
                url: (*url).to_owned(),
                events: number("events", events)?,
                streams,
                runner: *mode == "append",
                inline: *mode == "append-inline",
            })
        }
        [mode @ ("runner" | "runner-batched"), url, lease_ms, batch] => Ok(Role::Runner {
            url: (*url).to_owned(),
            lease: Duration::from_millis(number("lease_ms", lease_ms)?),
            batch: u32::try_from(number("batch_size", batch)?)
                .map_err(|_| format!("batch_size is too large; {USAGE}"))?,
            batched: *mode == "runner-batched",
        }),
        ["sync", url, timeout_ms] => Ok(Role::Sync {
            url: (*url).to_owned(),
            timeout: Duration::from_millis(number("timeout_ms", timeout_ms)?),
        }),
        ["wait", url, timeout_ms] => Ok(Role::Wait {
            url: (*url).to_owned(),
            timeout: Duration::from_millis(number("timeout_ms", timeout_ms)?),
        }),
        _ => Err(USAGE.to_owned()),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match parse(&args) {
        Ok(Role::Append {
            url,
            events,
            streams,
            runner,
            inline,
        }) => append(&url, events, &streams, runner, inline).await,
        Ok(Role::Runner {
            url,
            lease,
            batch,
            batched,
        }) => run_runner(&url, lease, batch, batched).await,
        Ok(Role::Sync { url, timeout }) => sync(&url, timeout).await,
        Ok(Role::Wait { url, timeout }) => wait(&url, timeout).await,
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

/// Short leases, fast heartbeats and rescans, a small pool.
fn options(lease: Duration) -> PostgresOptions {
    PostgresOptions::default()
        .pool_size(6)
        .lease_duration(lease)
        .heartbeat_interval((lease / 10).max(Duration::from_millis(50)))
        .rescan_interval(Duration::from_millis(200))
}

async fn connect(url: &str, options: PostgresOptions) -> Result<Postgres, String> {
    bounded("connect", Postgres::connect_with(url, options))
        .await?
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))
}

/// A registry of `AccountTotals` alone.
fn totals_only() -> Result<Arc<Registry>, String> {
    Registry::builder()
        .perspective::<AccountTotals>()
        .build()
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Drops the runtime (its runner releases its leases) and closes the
/// backend. A paused in-process runner stays paused (resuming it would apply
/// here what another process must); its queued work then holds the runtime
/// and `close` stops the background tasks after one lease.
async fn shut_down(rt: Runtime, pg: Postgres) -> Result<(), String> {
    drop(rt);
    bounded("closing the backend", pg.close()).await
}

async fn append(
    url: &str,
    events: u64,
    streams: &[Uuid],
    runner: bool,
    inline: bool,
) -> Result<(), String> {
    let pg = connect(url, options(APPEND_LEASE).runner(runner)).await?;
    let registry = if inline {
        Registry::builder()
            .perspective::<InlineTotals>()
            .build()
            .map(Arc::new)
            .map_err(|e| e.to_string())?
    } else {
        totals_only()?
    };
    let rt = Runtime::builder()
        .registry(registry)
        .backend(pg.clone())
        .build()
        .map_err(|e| e.to_string())?;
    if !runner {
        rt.runner().pause();
    }

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
    if runner {
        bounded("the runner going idle", rt.wait_idle()).await?;
    }
    say("finished");
    shut_down(rt, pg).await
}

/// Prints what this process's runtime applied, one line per commit.
struct Reporter;

impl ApplyListener for Reporter {
    fn on_apply(&self, report: &ApplyReport) {
        let stream = report.stream.as_uuid();
        if let Some(failure) = &report.failure {
            say(&format!(
                "failed {stream} {} {}",
                failure.version, failure.message
            ));
        }
        let n = report.applied.len() as u64;
        if n > 0 {
            let from = report.version.saturating_sub(n) + 1;
            say(&format!("applied {stream} {from} {}", report.version));
        }
    }
}

async fn run_runner(url: &str, lease: Duration, batch: u32, batched: bool) -> Result<(), String> {
    let pg = connect(url, options(lease).batch_size(batch).runner(true)).await?;
    let registry = if batched {
        Registry::builder()
            .perspective::<BatchedTotals>()
            .build()
            .map(Arc::new)
            .map_err(|e| e.to_string())?
    } else {
        totals_only()?
    };
    let rt = Runtime::builder()
        .registry(registry)
        .backend(pg.clone())
        .apply_listener(Reporter)
        .build()
        .map_err(|e| e.to_string())?;
    say(&format!("ready {}", pg.instance_id()));
    // Runs until the test closes stdin (or dies).
    let eof = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink)
    });
    let _ = eof.await;
    shut_down(rt, pg).await?;
    say("stopped");
    Ok(())
}

async fn sync(url: &str, timeout: Duration) -> Result<(), String> {
    let pg = connect(url, options(APPEND_LEASE).runner(false)).await?;
    let registry = Registry::builder()
        .receptors_of::<Teller>()
        .perspective::<AccountTotals>()
        .perspective::<AccountAudit>()
        .build()
        .map_err(|e| e.to_string())?;
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .map_err(|e| e.to_string())?;
    // Nothing is applied here: only another process's runner can.
    rt.runner().pause();
    say("ready");
    let can_sync = Duration::from_secs(20);
    let account = Uuid::now_v7();

    // send_and_sync: both perspectives handle the event; only one is run.
    let scope = rt.scope();
    let sent = bounded(
        "send_and_sync",
        scope.send_and_sync_with(
            AddOne { account, seq: 1 },
            PerspectiveSyncOptions::new(SyncFilter::current_scope()).timeout(timeout),
        ),
    )
    .await?
    .map_err(|e| format!("send_and_sync: {e}"))?;
    let label = |name: &str| {
        sent.results
            .iter()
            .find(|r| r.perspective == name)
            .map_or_else(|| "none".to_owned(), |r| outcome_label(&r.outcome))
    };
    say(&format!(
        "sent totals={} audit={}",
        label(TOTALS),
        label("pg_appender.audit")
    ));
    bounded("completing a scope", scope.complete())
        .await?
        .map_err(|e| e.to_string())?;

    // A published event, awaited through the scope's awaiter.
    let scope = rt.scope();
    let event = Added {
        account,
        seq: 2,
        amount: amount(account, 2),
    };
    bounded(
        "an append",
        scope.publish_expecting(event, ExpectedVersion::Exact(1)),
    )
    .await?
    .map_err(|e| format!("append {account}:2: {e}"))?;
    let waited = bounded(
        "a wait",
        scope
            .sync_awaiter()
            .wait::<AccountTotals>(SyncFilter::current_scope().with_timeout(can_sync)),
    )
    .await?
    .map_err(|e| e.to_string())?;
    say(&format!(
        "awaited outcome={} elapsed_ms={}",
        outcome_label(&waited.outcome),
        waited.elapsed.as_millis()
    ));

    // An id never appended.
    let unknown = bounded(
        "a wait",
        rt.sync_awaiter()
            .wait::<AccountTotals>(SyncFilter::event_ids([EventId::new()]).with_timeout(timeout)),
    )
    .await?
    .map_err(|e| e.to_string())?;
    say(&format!(
        "unknown-id outcome={} elapsed_ms={}",
        outcome_label(&unknown.outcome),
        unknown.elapsed.as_millis()
    ));

    // A perspective no runner runs.
    let lacking = bounded(
        "a wait",
        scope
            .sync_awaiter()
            .wait::<AccountAudit>(SyncFilter::current_scope().with_timeout(timeout)),
    )
    .await?
    .map_err(|e| e.to_string())?;
    say(&format!(
        "lacking outcome={} elapsed_ms={}",
        outcome_label(&lacking.outcome),
        lacking.elapsed.as_millis()
    ));
    bounded("completing a scope", scope.complete())
        .await?
        .map_err(|e| e.to_string())?;
    say(&format!("account {account}"));
    say("finished");
    shut_down(rt, pg).await
}

async fn wait(url: &str, timeout: Duration) -> Result<(), String> {
    let pg = connect(url, options(APPEND_LEASE).runner(false)).await?;
    let rt = Runtime::builder()
        .registry(totals_only()?)
        .backend(pg.clone())
        .build()
        .map_err(|e| e.to_string())?;
    // Nothing is applied here: only another process's runner can.
    rt.runner().pause();
    let account = Uuid::now_v7();
    let scope = rt.scope();
    let event = Added {
        account,
        seq: 1,
        amount: amount(account, 1),
    };
    bounded(
        "an append",
        scope.publish_expecting(event, ExpectedVersion::NoStream),
    )
    .await?
    .map_err(|e| format!("append {account}:1: {e}"))?;
    say(&format!("appended {account}"));
    let waited = tokio::time::timeout(
        timeout + BOUND,
        scope
            .sync_awaiter()
            .wait::<AccountTotals>(SyncFilter::current_scope().with_timeout(timeout)),
    )
    .await
    .map_err(|_| format!("a wait of {timeout:?} went on past {BOUND:?} more"))?
    .map_err(|e| e.to_string())?;
    say(&format!(
        "awaited outcome={} elapsed_ms={}",
        outcome_label(&waited.outcome),
        waited.elapsed.as_millis()
    ));
    bounded("completing a scope", scope.complete())
        .await?
        .map_err(|e| e.to_string())?;
    say("finished");
    shut_down(rt, pg).await
}

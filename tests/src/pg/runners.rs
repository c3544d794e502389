//! Runner processes as the tests see them: the command that starts one
//! (`pg_appender runner`), what each one reported applying ([`AppliedLog`]),
//! which instance holds which leases ([`lease_owners`]), waiting until every
//! stream is applied ([`wait_applied`]), and the test's own appender of
//! `pg_totals!` events ([`append_round`]), which runs in the test process
//! and applies nothing.
//!
//! A runner child prints `applied <stream> <from> <to>` after each commit
//! (see `src/bin/pg_appender.rs`): a line appears only once the commit is
//! durable, so a version reported by two commits was applied twice, while a
//! killed runner may take the line of its last commit with it.

use super::ledger::Tally;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime};
use uuid::Uuid;
use whizbang_core::backend::{EventMetadata, EventStore, NewEvent, StreamAppend};
use whizbang_core::{Error, EventId, ExpectedVersion, MessageId, Metadata, StreamId};

/// The command that starts a runner child: `<program> runner <url>
/// <lease_ms> <batch_size>` (`program` is `env!("CARGO_BIN_EXE_pg_appender")`).
pub fn runner_command(program: &str, url: &str, lease: Duration, batch: u32) -> Command {
    runner_command_as("runner", program, url, lease, batch)
}

/// [`runner_command`] for role `role` (`runner`, or `runner-batched` for
/// the held-back `BatchedTotals`).
pub fn runner_command_as(
    role: &str,
    program: &str,
    url: &str,
    lease: Duration,
    batch: u32,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg(role)
        .arg(url)
        .arg(lease.as_millis().to_string())
        .arg(batch.to_string());
    cmd
}

/// The instance id in a runner child's `ready <id>` line.
pub fn ready_instance(line: &str) -> Option<Uuid> {
    line.strip_prefix("ready ")?.trim().parse().ok()
}

/// Every `applied` line of every runner process, by (stream, version).
#[derive(Debug, Default)]
pub struct AppliedLog {
    /// (stream, version) -> the processes whose commits reported it, once
    /// per commit.
    seen: BTreeMap<(Uuid, u64), Vec<String>>,
    /// `failed` lines, with their process.
    failures: Vec<String>,
}

impl AppliedLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the lines of the process named `process` (read each process's
    /// lines once: a line recorded twice counts as applied twice).
    ///
    /// ```
    /// use whizbang_tests::pg::runners::AppliedLog;
    /// let s = uuid::Uuid::nil();
    /// let mut log = AppliedLog::new();
    /// log.record("a", &[format!("applied {s} 1 3"), "ready x".to_owned()]);
    /// log.record("b", &[format!("applied {s} 3 4")]);
    /// assert_eq!(log.by_process()["a"], 3);
    /// assert_eq!(log.twice().len(), 1); // version 3 was reported by a and b
    /// ```
    pub fn record(&mut self, process: &str, lines: &[String]) {
        for line in lines {
            if line.starts_with("failed ") {
                self.failures.push(format!("{process}: {line}"));
                continue;
            }
            let Some(rest) = line.strip_prefix("applied ") else {
                continue;
            };
            let parts: Vec<&str> = rest.split_whitespace().collect();
            let [stream, from, to] = parts[..] else {
                self.failures
                    .push(format!("{process}: unreadable line {line:?}"));
                continue;
            };
            match (
                stream.parse::<Uuid>(),
                from.parse::<u64>(),
                to.parse::<u64>(),
            ) {
                (Ok(stream), Ok(from), Ok(to)) => {
                    for version in from..=to {
                        self.seen
                            .entry((stream, version))
                            .or_default()
                            .push(process.to_owned());
                    }
                }
                _ => self
                    .failures
                    .push(format!("{process}: unreadable line {line:?}")),
            }
        }
    }

    /// How many event applications each process reported.
    pub fn by_process(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for processes in self.seen.values() {
            for p in processes {
                *counts.entry(p.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// Versions reported by more than one commit: `stream:version by [processes]`.
    pub fn twice(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|(_, ps)| ps.len() > 1)
            .map(|((s, v), ps)| format!("{s}:{v} by {ps:?}"))
            .collect()
    }

    /// The `failed` (and unreadable) lines.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// How many distinct (stream, version) were reported.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing was reported.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The reports tallied against `expected` keys (`stream:version`): lost
    /// are versions no commit reported, duplicated those reported twice.
    pub fn tally(&self, expected: impl IntoIterator<Item = String>) -> Tally {
        let seen = self
            .seen
            .iter()
            .map(|((s, v), ps)| (format!("{s}:{v}"), ps.len() as u64))
            .collect();
        Tally::of(expected, seen)
    }
}

/// How many unexpired leases of `perspective` each instance holds.
///
/// # Errors
/// The server's error.
pub async fn lease_owners(
    pool: &PgPool,
    perspective: &str,
) -> Result<BTreeMap<Uuid, i64>, sqlx::Error> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "select owner, count(*) from wh_partition_leases
          where perspective = $1 and owner is not null and expires_at > now()
          group by owner",
    )
    .bind(perspective)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Streams whose cursor for `perspective` is behind their head:
/// `(stream, head, cursor)`; and cursors marked failed.
///
/// # Errors
/// The server's error.
pub async fn behind(
    pool: &PgPool,
    perspective: &str,
) -> Result<(Vec<(Uuid, i64, i64)>, Vec<String>), sqlx::Error> {
    let behind: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "select s.stream_id, s.version, coalesce(c.version, 0)
           from wh_streams s
           left join wh_perspective_cursors c
                  on c.perspective = $1 and c.model_key = s.stream_id
          where coalesce(c.version, 0) < s.version
          order by s.stream_id",
    )
    .bind(perspective)
    .fetch_all(pool)
    .await?;
    let failed: Vec<(Uuid, i64, String)> = sqlx::query_as(
        "select model_key, failed_version, failure_message from wh_perspective_cursors
          where perspective = $1 and failed_version is not null",
    )
    .bind(perspective)
    .fetch_all(pool)
    .await?;
    Ok((
        behind,
        failed
            .into_iter()
            .map(|(s, v, m)| format!("{s} failed at {v}: {m}"))
            .collect(),
    ))
}

/// Waits until `perspective`'s cursor on every stream reached the stream's
/// head, polling every 50 ms (a query that fails, say while the server
/// restarts, is retried).
///
/// # Errors
/// A description of what is still behind (or failed) when `bound` passes
/// first, or at once when a cursor failed.
pub async fn wait_applied(pool: &PgPool, perspective: &str, bound: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let last = match behind(pool, perspective).await {
            Ok((_, failed)) if !failed.is_empty() => {
                return Err(format!("cursors failed: {failed:?}"));
            }
            Ok((behind, _)) if behind.is_empty() => return Ok(()),
            Ok((behind, _)) => {
                let shown: Vec<String> = behind
                    .iter()
                    .take(10)
                    .map(|(s, head, at)| format!("{s} at {at} of {head}"))
                    .collect();
                format!("{} streams behind, e.g. {shown:?}", behind.len())
            }
            Err(e) => format!("the check failed: {e}"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not applied within {bound:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One event of `pg_totals!` (`pg_totals.added`) as the store takes it.
fn added(stream: Uuid, seq: u64, amount: u64) -> NewEvent {
    let data = serde_json::json!({ "account": stream, "seq": seq, "amount": amount });
    NewEvent {
        event_id: EventId::new(),
        stream_id: StreamId::from(stream),
        event_type: "pg_totals.added",
        data: serde_json::value::to_raw_value(&data)
            .expect("an object of a string and two numbers serialises"),
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

/// How [`append_round`] went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Transactions that failed with a backend error and were tried again.
    pub retried: u64,
    /// Retries that found their events already stored (the acknowledgement
    /// of a committed transaction was lost with its connection).
    pub found_committed: u64,
}

/// Appends `seq` of `pg_totals!` to every stream of `streams` (`amount(stream,
/// seq)` each), at the exact version `seq - 1`, `per_tx` streams per
/// transaction. A backend error (the server went away) is retried every
/// 50 ms until `deadline`; a retry that conflicts because its transaction
/// did commit (all of its streams are at `seq`) counts as stored.
///
/// # Errors
/// Any other error, or a backend error that lasts past `deadline`.
pub async fn append_round(
    store: &dyn EventStore,
    streams: &[Uuid],
    seq: u64,
    amount: fn(Uuid, u64) -> u64,
    per_tx: usize,
    deadline: tokio::time::Instant,
) -> Result<RoundStats, Error> {
    let mut stats = RoundStats::default();
    for chunk in streams.chunks(per_tx.max(1)) {
        let mut retrying = false;
        loop {
            let appends = chunk
                .iter()
                .map(|&stream| StreamAppend {
                    stream_id: StreamId::from(stream),
                    expected: if seq == 1 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(seq - 1)
                    },
                    events: vec![added(stream, seq, amount(stream, seq))],
                })
                .collect();
            match store.append(appends).await {
                Ok(_) => break,
                Err(Error::Concurrency { .. }) if retrying => {
                    // All or nothing: the first stream tells for the whole chunk.
                    let head = store.stream_version(StreamId::from(chunk[0])).await?;
                    if head == seq {
                        stats.found_committed += 1;
                        break;
                    }
                    return Err(Error::InvalidInput(format!(
                        "stream {} is at {head}, neither {} nor {seq}: someone else appends to it",
                        chunk[0],
                        seq - 1
                    )));
                }
                Err(Error::Backend { .. }) if tokio::time::Instant::now() < deadline => {
                    stats.retried += 1;
                    retrying = true;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(stats)
}

/// [`append_round`] in a background task, one round after another (`pace`
/// apart), until [`stop`](Self::stop) or `max_rounds`: events that keep
/// flowing while a test kills, freezes or restarts something.
#[derive(Debug)]
pub struct BackgroundAppender {
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<(u64, RoundStats)>,
    max_rounds: u64,
}

/// How a [`BackgroundAppender`] appends.
#[derive(Clone, Copy, Debug)]
pub struct AppendPace {
    /// Streams per transaction.
    pub per_tx: usize,
    /// The pause between rounds.
    pub pace: Duration,
    /// At most this many rounds (reaching it fails [`BackgroundAppender::stop`]:
    /// the events stopped flowing before the test was done).
    pub max_rounds: u64,
    /// No round may take longer than this.
    pub bound: Duration,
}

impl BackgroundAppender {
    /// Starts appending `pg_totals!` events (`amount` each) to `streams`
    /// through `store`.
    pub fn start(
        store: impl EventStore,
        streams: Vec<Uuid>,
        amount: fn(Uuid, u64) -> u64,
        how: AppendPace,
    ) -> BackgroundAppender {
        use std::sync::atomic::Ordering;
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (go, count) = (running.clone(), done.clone());
        let task = tokio::spawn(async move {
            let mut stats = RoundStats::default();
            let mut rounds = 0;
            while go.load(Ordering::SeqCst) && rounds < how.max_rounds {
                let deadline = tokio::time::Instant::now() + how.bound;
                let round =
                    append_round(&store, &streams, rounds + 1, amount, how.per_tx, deadline)
                        .await
                        .unwrap_or_else(|e| panic!("append round {}: {e}", rounds + 1));
                stats.retried += round.retried;
                stats.found_committed += round.found_committed;
                rounds += 1;
                count.store(rounds, Ordering::SeqCst);
                tokio::time::sleep(how.pace).await;
            }
            (rounds, stats)
        });
        BackgroundAppender {
            running,
            done,
            task,
            max_rounds: how.max_rounds,
        }
    }

    /// Rounds fully appended so far.
    #[must_use]
    pub fn rounds_done(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops after the round in flight and returns the rounds appended and
    /// the retries seen. Panics when the appender panicked, or when it had
    /// reached `max_rounds` (the events stopped flowing before `what` was over).
    pub async fn stop(self, what: &str, bound: Duration) -> (u64, RoundStats) {
        self.running
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let (rounds, stats) = tokio::time::timeout(bound, self.task)
            .await
            .expect("the appender stopped within the bound")
            .expect("the appender panicked");
        assert!(
            rounds < self.max_rounds,
            "events stopped flowing before {what} was over"
        );
        (rounds, stats)
    }
}

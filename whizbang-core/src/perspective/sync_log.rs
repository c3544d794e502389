//! The sync log: a [`SyncRun`] record per sync run, kept by the runtime's
//! [`SyncLog`] (the memory ring by default; a database backend keeps a
//! table). Recording a run (and its metrics) is dispatch's
//! (`Runtime::record_sync_run`).

use crate::error::Result;
use crate::store::BoxFuture;
use crate::util::lock;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How many runs [`MemorySyncLog::default`] keeps.
pub const DEFAULT_SYNC_LOG_CAPACITY: usize = 100;

/// How a recorded run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SyncRunOutcome {
    /// Every item applied or was already up to date.
    Succeeded,
    /// Some items failed; the others went on.
    PartiallyFailed,
    /// The run as a whole failed (see [`SyncRun::error`]).
    Failed,
}

impl SyncRunOutcome {
    /// Its stable name: `succeeded`, `partially_failed`, `failed`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            SyncRunOutcome::Succeeded => "succeeded",
            SyncRunOutcome::PartiallyFailed => "partially_failed",
            SyncRunOutcome::Failed => "failed",
        }
    }

    /// The outcome called `name` (see [`as_str`](Self::as_str)).
    #[must_use]
    pub fn from_name(name: &str) -> Option<SyncRunOutcome> {
        [
            SyncRunOutcome::Succeeded,
            SyncRunOutcome::PartiallyFailed,
            SyncRunOutcome::Failed,
        ]
        .into_iter()
        .find(|o| o.as_str() == name)
    }
}

/// One recorded sync run: what [`SyncLog`] keeps. Public so that other
/// runs (a strategy's batch, a rebuild) record through the same hook.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncRun {
    /// The perspective.
    pub perspective: String,
    /// How it ran: a [`SyncMode`](crate::SyncMode) name for an explicit sync, or the kind of
    /// another run (e.g. `rebuild`).
    pub mode: String,
    /// What it covered, in short: the streams named (the first few and how
    /// many) or `all streams`.
    pub target: String,
    /// When it started.
    pub started_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// Streams that applied events.
    pub applied: u64,
    /// Streams already up to date.
    pub skipped: u64,
    /// Streams that failed.
    pub failed: u64,
    /// How it ended.
    pub outcome: SyncRunOutcome,
    /// Why the run failed as a whole, for [`SyncRunOutcome::Failed`].
    pub error: Option<String>,
}

impl SyncRun {
    /// A run record; the outcome follows from `failed` (use
    /// [`with_error`](Self::with_error) for a run that failed as a whole).
    #[must_use]
    pub fn new(
        perspective: impl Into<String>,
        mode: impl Into<String>,
        target: impl Into<String>,
        started_at: SystemTime,
        duration: Duration,
        (applied, skipped, failed): (u64, u64, u64),
    ) -> Self {
        SyncRun {
            perspective: perspective.into(),
            mode: mode.into(),
            target: target.into(),
            started_at,
            duration,
            applied,
            skipped,
            failed,
            outcome: if failed == 0 {
                SyncRunOutcome::Succeeded
            } else {
                SyncRunOutcome::PartiallyFailed
            },
            error: None,
        }
    }

    /// The same record, for a run that failed as a whole.
    #[must_use]
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.outcome = SyncRunOutcome::Failed;
        self.error = Some(error.into());
        self
    }
}

/// Where sync runs are recorded: the memory ring, or a backend's table
/// (PostgreSQL: `wh_sync_log`). Install one with
/// [`RuntimeBuilder::sync_log`](crate::RuntimeBuilder::sync_log).
///
/// Each recorded run is also a `whizbang.sync.run` tracing span (for an
/// explicit sync) and these `metrics` facade metrics, each labelled
/// `perspective` and `mode`:
/// - `whizbang_sync_runs_total` (also labelled `outcome`),
/// - `whizbang_sync_applied_total`, `whizbang_sync_skipped_total`,
///   `whizbang_sync_failed_total` (streams),
/// - `whizbang_sync_duration_seconds` (histogram).
pub trait SyncLog: Send + Sync + 'static {
    /// Records one run (pruning old ones to the log's retention).
    ///
    /// # Errors
    /// Backend errors (the run itself stands: a sync never fails because
    /// its record could not be written).
    fn record<'a>(&'a self, run: &'a SyncRun) -> BoxFuture<'a, Result<()>>;

    /// The most recent runs, newest first, at most `limit`.
    ///
    /// # Errors
    /// Backend errors.
    fn recent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<SyncRun>>>;
}

/// A [`SyncLog`] in memory: the last `capacity` runs in a ring. The default.
#[derive(Debug)]
pub struct MemorySyncLog {
    runs: Mutex<VecDeque<SyncRun>>,
    capacity: usize,
}

impl Default for MemorySyncLog {
    fn default() -> Self {
        MemorySyncLog::with_capacity(DEFAULT_SYNC_LOG_CAPACITY)
    }
}

impl MemorySyncLog {
    /// A log keeping the last `capacity` runs (0 keeps none).
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        MemorySyncLog {
            runs: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
        }
    }
}

impl SyncLog for MemorySyncLog {
    fn record<'a>(&'a self, run: &'a SyncRun) -> BoxFuture<'a, Result<()>> {
        let mut runs = lock(&self.runs);
        if self.capacity > 0 {
            while runs.len() >= self.capacity {
                runs.pop_front();
            }
            runs.push_back(run.clone());
        }
        drop(runs);
        Box::pin(async { Ok(()) })
    }

    fn recent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<SyncRun>>> {
        let runs: Vec<SyncRun> = lock(&self.runs).iter().rev().take(limit).cloned().collect();
        Box::pin(async move { Ok(runs) })
    }
}

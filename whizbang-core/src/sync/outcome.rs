//! How a wait ended: [`SyncOutcome`] and the [`SyncResult`] that reports it.

use crate::error::{Error, Result};
use crate::message::StreamId;
use std::time::Duration;

/// How a wait ended. More outcomes may come: match with a `_` arm.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncOutcome {
    /// Every awaited event is applied.
    Synced,
    /// The timeout passed first.
    TimedOut,
    /// There was nothing to wait for.
    NoPendingEvents,
    /// The perspective failed on an awaited event's stream.
    Failed {
        /// The stream.
        stream: StreamId,
        /// The version that failed.
        version: u64,
        /// The failure.
        message: String,
    },
}

/// How a wait met its perspective's
/// [strategy](crate::strategy): whether it waited for the runner's next
/// run or ran the perspective itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StrategyRun {
    /// The perspective applies as soon as work is seen (inline, or async
    /// with the realtime strategy): there was no schedule to wait for.
    #[default]
    Immediate,
    /// The strategy holds work back (batch, scheduled, custom) and the wait
    /// waited for its next run.
    NextRun,
    /// The wait asked for it
    /// ([`PerspectiveSyncOptions::trigger`](crate::PerspectiveSyncOptions::trigger))
    /// and ran the perspective on its events now, not waiting for the
    /// schedule.
    Triggered,
}

/// What a wait found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResult {
    /// How it ended.
    pub outcome: SyncOutcome,
    /// How many events it waited for (ids the perspective handles or that had not arrived).
    pub events_awaited: usize,
    /// Active time spent waiting (frozen periods excluded when debugger-aware).
    pub elapsed: Duration,
    /// Events the scope had emitted (0 without a scope).
    pub events_emitted: usize,
    /// Events the trackers knew about when the filter was applied.
    pub events_tracked: usize,
    /// The perspective waited on.
    pub perspective: &'static str,
    /// The wait's timeout (what [`into_result`](Self::into_result) reports).
    pub timeout: Duration,
    /// Whether it waited for the strategy's next run or triggered one.
    pub run: StrategyRun,
}

impl SyncResult {
    /// Whether the outcome is [`SyncOutcome::Synced`] or [`SyncOutcome::NoPendingEvents`].
    #[must_use]
    pub fn is_synced(&self) -> bool {
        matches!(
            self.outcome,
            SyncOutcome::Synced | SyncOutcome::NoPendingEvents
        )
    }

    /// `Ok(())` when synced, else the matching error
    /// ([`Error::PerspectiveSyncTimeout`] or [`Error::PerspectiveFailed`]).
    ///
    /// # Errors
    /// As described.
    ///
    /// ```
    /// # use whizbang_core::{Error, StrategyRun, SyncOutcome, SyncResult};
    /// # use std::time::Duration;
    /// let r = SyncResult {
    ///     outcome: SyncOutcome::TimedOut,
    ///     events_awaited: 1,
    ///     elapsed: Duration::from_millis(150),
    ///     events_emitted: 1,
    ///     events_tracked: 1,
    ///     perspective: "orders",
    ///     timeout: Duration::from_millis(150),
    ///     run: StrategyRun::Immediate,
    /// };
    /// assert!(matches!(r.into_result(), Err(Error::PerspectiveSyncTimeout { .. })));
    /// ```
    pub fn into_result(self) -> Result<()> {
        match self.outcome {
            SyncOutcome::Synced | SyncOutcome::NoPendingEvents => Ok(()),
            SyncOutcome::TimedOut => Err(Error::PerspectiveSyncTimeout {
                perspective: self.perspective,
                timeout: self.timeout,
            }),
            SyncOutcome::Failed {
                stream,
                version,
                message,
            } => Err(Error::PerspectiveFailed {
                perspective: self.perspective,
                stream,
                version,
                message,
            }),
        }
    }
}

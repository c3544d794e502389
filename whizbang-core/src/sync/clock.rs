//! A debugger-aware clock: counts the time a wait was *active*, leaving out
//! periods when the process was frozen (a breakpoint, SIGSTOP).
//!
//! A wait sleeps in slices. When a slice ends much later than planned, the
//! process was not running: only the planned slice counts. With awareness off,
//! the wall-clock gap counts. The clock is injectable ([`SyncClock`]) so tests
//! can drive time; the default reads tokio's clock, so paused-time tests work too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long one sleep slice of a waiting awaiter lasts at most.
pub(crate) const SLICE: Duration = Duration::from_millis(200);
/// A slice that overran its plan by more than this was a freeze.
pub(crate) const FREEZE_TOLERANCE: Duration = Duration::from_millis(250);

/// A monotonic clock for sync timeouts.
pub trait SyncClock: Send + Sync + 'static {
    /// Time since an arbitrary, fixed origin.
    fn now(&self) -> Duration;
}

/// The default clock: tokio's monotonic clock (follows `tokio::time::pause`).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl SyncClock for TokioClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to: for tests that simulate a freeze.
#[derive(Debug, Default, Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at zero.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let n = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(n, Ordering::SeqCst);
    }
}

impl SyncClock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// Measures the active time of one wait.
pub(crate) struct ActiveTimer {
    clock: Arc<dyn SyncClock>,
    debugger_aware: bool,
    last: Duration,
    active: Duration,
}

impl ActiveTimer {
    pub(crate) fn start(clock: Arc<dyn SyncClock>, debugger_aware: bool) -> Self {
        let last = clock.now();
        ActiveTimer {
            clock,
            debugger_aware,
            last,
            active: Duration::ZERO,
        }
    }

    /// Accounts for the time since the last observation; `planned` is how long
    /// the waiter meant to sleep (a gap far beyond it was a freeze).
    pub(crate) fn observe(&mut self, planned: Duration) {
        let now = self.clock.now();
        let gap = now.saturating_sub(self.last);
        self.last = now;
        self.active += if self.debugger_aware && gap > planned + FREEZE_TOLERANCE {
            tracing::debug!(
                ?gap,
                ?planned,
                "process was frozen; the freeze does not count"
            );
            planned
        } else {
            gap
        };
    }

    pub(crate) fn active(&self) -> Duration {
        self.active
    }

    /// How long to sleep next: a slice, or what is left of `timeout`.
    pub(crate) fn next_sleep(&self, timeout: Duration) -> Duration {
        let left = timeout.saturating_sub(self.active);
        if self.debugger_aware {
            left.min(SLICE)
        } else {
            left
        }
    }
}

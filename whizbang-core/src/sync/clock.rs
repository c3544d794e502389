//! A debugger-aware clock: counts the time a wait was *active*, leaving out
//! periods when the process was frozen (a breakpoint, SIGSTOP).
//!
//! A wait sleeps in slices. When a slice ends much later than planned, the
//! process was either frozen (only the planned slice counts) or starved of CPU
//! (the whole gap counts): see [`ActiveTimer`]. With awareness off, the
//! wall-clock gap counts. The clock is injectable ([`SyncClock`]) so tests
//! can drive time; the default reads tokio's clock, so paused-time tests work too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long one slice of a backend call (flush, inquiry) lasts at most before
/// the timer looks at the clock.
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

/// The run-queue wait of this process's threads, summed (Linux:
/// `/proc/self/task/*/schedstat`, second field, in nanoseconds): time spent
/// runnable but not running. A stopped process sits on no run queue, so this
/// grows when the process is starved of CPU, not when it is frozen.
/// `None` where it cannot be read.
fn read_run_queue_wait() -> Option<Duration> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut total: u64 = 0;
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue; // the thread exited meanwhile
        };
        if let Some(ns) = stat
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
        {
            total = total.saturating_add(ns);
            any = true;
        }
    }
    any.then(|| Duration::from_nanos(total))
}

/// How old a shared run-queue reading may be when a sleep slice starts.
const RUN_QUEUE_REUSE: Duration = Duration::from_millis(50);

/// The run-queue wait at about now: read at most every [`RUN_QUEUE_REUSE`] for
/// the whole process, however many waiters start a slice (lock-free; a racing
/// reader gets the previous sample). An older baseline only adds earlier
/// run-queue wait to a slice, which errs towards counting the time.
fn run_queue_wait_baseline() -> Option<Duration> {
    /// No sample (or /proc unreadable).
    const NONE: u64 = u64::MAX;
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    static TAKEN_AT: AtomicU64 = AtomicU64::new(0);
    static VALUE: AtomicU64 = AtomicU64::new(NONE);
    static READING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    let since_origin = |at: std::time::Instant| {
        let origin = *ORIGIN.get_or_init(|| at);
        // +1: zero means "never sampled".
        u64::try_from(at.saturating_duration_since(origin).as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    };
    let decode = |v: u64| (v != NONE).then(|| Duration::from_nanos(v));
    let now = since_origin(std::time::Instant::now());
    let taken = TAKEN_AT.load(Ordering::Acquire);
    let fresh = u64::try_from(RUN_QUEUE_REUSE.as_nanos()).unwrap_or(u64::MAX);
    if taken != 0 && now.saturating_sub(taken) < fresh {
        return decode(VALUE.load(Ordering::Acquire));
    }
    if READING.swap(true, Ordering::AcqRel) {
        return decode(VALUE.load(Ordering::Acquire)); // another waiter is reading
    }
    let value = read_run_queue_wait();
    let encoded = value.map_or(NONE, |d| {
        u64::try_from(d.as_nanos())
            .unwrap_or(NONE - 1)
            .min(NONE - 1)
    });
    VALUE.store(encoded, Ordering::Release);
    TAKEN_AT.store(now, Ordering::Release);
    READING.store(false, Ordering::Release);
    value
}

/// Measures the active time of one wait.
///
/// A wait sleeps (or awaits its backend) in slices. A slice that ends more than
/// [`FREEZE_TOLERANCE`] after its plan either found the process starved of CPU
/// (its threads waited on a run queue: the time counts) or frozen (a debugger,
/// SIGSTOP: the process was on no run queue, only the planned slice counts).
/// The run-queue wait is read from `/proc` (Linux) at the start of a slice,
/// shared by every waiter of the process, and again only when a slice overran;
/// where it cannot be read, every overrun counts as a freeze.
///
/// Times are kept as nanoseconds in `u64` (a timer lives in every sleeping
/// wait's registration, so it stays small).
pub(crate) struct ActiveTimer {
    clock: Arc<dyn SyncClock>,
    debugger_aware: bool,
    last: u64,
    active: u64,
    /// The run-queue wait at the start of the slice; [`NO_NANOS`] when unknown.
    run_queue_at_start: u64,
    backoff: u64,
    backoff_max: u64,
}

/// "No value" for an optional time in nanoseconds.
const NO_NANOS: u64 = u64::MAX;

/// A duration in nanoseconds, saturating (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

fn nanos_opt(d: Option<Duration>) -> u64 {
    d.map_or(NO_NANOS, nanos)
}

fn from_nanos_opt(n: u64) -> Option<Duration> {
    (n != NO_NANOS).then(|| Duration::from_nanos(n))
}

/// The default re-ask backoff of a wait: 5 ms, doubling up to 1 s.
pub(crate) const DEFAULT_REASK: (Duration, Duration) =
    (Duration::from_millis(5), Duration::from_secs(1));

impl ActiveTimer {
    /// A timer with the default re-ask backoff.
    #[cfg(test)]
    pub(crate) fn start(clock: Arc<dyn SyncClock>, debugger_aware: bool) -> Self {
        Self::with_backoff(clock, debugger_aware, DEFAULT_REASK.0, DEFAULT_REASK.1)
    }

    /// A timer whose re-ask pauses run from `min` doubling to `max`.
    pub(crate) fn with_backoff(
        clock: Arc<dyn SyncClock>,
        debugger_aware: bool,
        min: Duration,
        max: Duration,
    ) -> Self {
        let last = nanos(clock.now());
        ActiveTimer {
            clock,
            debugger_aware,
            last,
            active: 0,
            run_queue_at_start: if debugger_aware {
                nanos_opt(run_queue_wait_baseline())
            } else {
                NO_NANOS
            },
            backoff: nanos(min.max(Duration::from_millis(1))),
            backoff_max: nanos(max),
        }
    }

    /// Accounts for the time since the last observation; `planned` is how long
    /// the waiter meant to sleep (a gap far beyond it was a freeze, unless the
    /// process's threads spent the overrun waiting for a CPU).
    pub(crate) fn observe(&mut self, planned: Duration) {
        let now = nanos(self.clock.now());
        let gap = Duration::from_nanos(now.saturating_sub(self.last));
        self.last = now;
        let counted = if self.debugger_aware && gap > planned.saturating_add(FREEZE_TOLERANCE) {
            let overrun = gap - planned;
            let starved = match (
                from_nanos_opt(self.run_queue_at_start),
                read_run_queue_wait(),
            ) {
                (Some(before), Some(after)) => after.saturating_sub(before) >= overrun / 2,
                _ => false,
            };
            if starved {
                tracing::debug!(
                    ?gap,
                    ?planned,
                    "process was starved of CPU; the time counts"
                );
                gap
            } else {
                tracing::debug!(
                    ?gap,
                    ?planned,
                    "process was frozen; the freeze does not count"
                );
                planned
            }
        } else {
            gap
        };
        self.active = self.active.saturating_add(nanos(counted)).min(u64::MAX - 1);
        if self.debugger_aware {
            self.run_queue_at_start = nanos_opt(run_queue_wait_baseline());
        }
    }

    pub(crate) fn active(&self) -> Duration {
        Duration::from_nanos(self.active)
    }

    /// How long to sleep before asking again: the backoff (by default 5 ms
    /// doubling up to 1 s, whatever the debugger flag), or what is left of `timeout`.
    pub(crate) fn next_sleep(&mut self, timeout: Duration) -> Duration {
        let left = timeout.saturating_sub(self.active());
        let sleep = left.min(Duration::from_nanos(self.backoff));
        self.backoff = self
            .backoff
            .saturating_mul(2)
            .min(self.backoff_max)
            .max(self.backoff);
        sleep
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Runs `f` while more threads than cores are busy (they queue for a CPU).
    /// The threads live until `f` returns: an exited thread's run-queue wait
    /// leaves `/proc/self/task`.
    fn while_starved<T>(f: impl FnOnce() -> T) -> T {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let stop = Arc::new(AtomicBool::new(false));
        let hogs: Vec<_> = (0..cores * 2 + 2)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let out = f();
        stop.store(true, Ordering::Relaxed);
        for h in hogs {
            let _ = h.join();
        }
        out
    }

    #[test]
    fn an_overrun_spent_on_the_run_queue_counts_and_one_spent_stopped_does_not() {
        assert!(
            read_run_queue_wait().is_some(),
            "/proc/self/task/*/schedstat"
        );
        let planned = Duration::from_millis(5);
        let gap = Duration::from_secs(1);

        // Frozen: the clock jumped, the process waited on no run queue.
        let clock = ManualClock::new();
        let mut timer = ActiveTimer::start(Arc::new(clock.clone()), true);
        clock.advance(gap);
        timer.observe(planned);
        assert_eq!(timer.active(), planned, "a freeze counts only the plan");

        // Starved: the overrun was spent waiting for a CPU.
        std::thread::sleep(RUN_QUEUE_REUSE * 2); // no baseline shared with the freeze
        let clock = ManualClock::new();
        let mut timer = ActiveTimer::start(Arc::new(clock.clone()), true);
        while_starved(|| {
            std::thread::sleep(Duration::from_millis(400));
            clock.advance(gap);
            timer.observe(planned);
        });
        assert_eq!(timer.active(), gap, "starved time counts");

        // Awareness off: every gap counts.
        let clock = ManualClock::new();
        let mut timer = ActiveTimer::start(Arc::new(clock.clone()), false);
        clock.advance(gap);
        timer.observe(planned);
        assert_eq!(timer.active(), gap);
    }
}

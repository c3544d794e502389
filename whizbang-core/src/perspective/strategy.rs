//! Sync strategies: when an async perspective's runner applies pending
//! events, and how many at once.
//!
//! A strategy is declared with the perspective
//! (`#[perspective(model = M, strategy = batch(100, "50ms"))]`) and read by
//! both runners (in memory and PostgreSQL) through the [`SyncStrategy`]
//! trait: given what is pending ([`PendingState`]) it answers
//! [`Decision::Run`] or [`Decision::Wait`]. The built-in ones are
//! implementations of it: [`Realtime`] (the default: run as soon as work is
//! seen), [`Batch`] (run at `max_events` pending or after `max_wait`) and
//! [`Scheduled`] (run every `interval`). A user's own is a `'static` value of
//! a type implementing the trait, named with `strategy = path::TO_IT`.
//!
//! A strategy only decides *when* the runner applies: what is applied, in
//! which order, and read-your-writes are the same under every strategy. A
//! wait on a perspective whose strategy holds work back waits for the next
//! run, unless its options ask to trigger one
//! ([`PerspectiveSyncOptions::trigger`](crate::PerspectiveSyncOptions::trigger)).

use std::time::Duration;

/// What is pending for one perspective, as a runner sees it when it asks its
/// strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingState {
    /// Events (or, where the runner cannot count events, signalled streams)
    /// waiting to be applied; at least 1 when the strategy is asked.
    pub pending: u64,
    /// How long the oldest pending work has waited.
    pub oldest_age: Duration,
    /// Time since the perspective last ran (`None`: not since the runner started).
    pub since_last_run: Option<Duration>,
}

impl PendingState {
    /// A state with `pending` events, the oldest `oldest_age` old, the last
    /// run `since_last_run` ago: for runners and for testing a strategy.
    #[must_use]
    pub fn new(pending: u64, oldest_age: Duration, since_last_run: Option<Duration>) -> Self {
        PendingState {
            pending,
            oldest_age,
            since_last_run,
        }
    }
}

/// What a strategy decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Apply now, at most `max_events` events in this run (more runs follow
    /// at once while work is pending and the strategy says run).
    Run {
        /// The most events one run applies (one transaction where the store
        /// can commit many models at once).
        max_events: u32,
    },
    /// Ask again after this long (or earlier, when more work arrives).
    Wait(Duration),
}

/// When a perspective's runner applies pending events, and how many.
///
/// Object safe and small: runners hold a `&'static dyn SyncStrategy`. A
/// strategy is asked only while work is pending; it must be quick and never
/// block.
///
/// ```
/// use std::time::Duration;
/// use whizbang_core::strategy::{Decision, PendingState, SyncStrategy};
///
/// /// Applies at 500 pending events, or when the oldest has waited a second.
/// #[derive(Debug)]
/// struct Thrifty;
///
/// impl SyncStrategy for Thrifty {
///     fn decide(&self, state: &PendingState) -> Decision {
///         let limit = Duration::from_secs(1);
///         if state.pending >= 500 || state.oldest_age >= limit {
///             Decision::Run { max_events: 500 }
///         } else {
///             Decision::Wait(limit - state.oldest_age)
///         }
///     }
///     fn describe(&self) -> String {
///         "thrifty(500, 1s)".into()
///     }
/// }
///
/// let run = Thrifty.decide(&PendingState::new(500, Duration::ZERO, None));
/// assert_eq!(run, Decision::Run { max_events: 500 });
/// let wait = Thrifty.decide(&PendingState::new(1, Duration::from_millis(400), None));
/// assert_eq!(wait, Decision::Wait(Duration::from_millis(600)));
/// // Declared with the perspective: `#[perspective(model = M, strategy = Thrifty)]`.
/// ```
pub trait SyncStrategy: Send + Sync + std::panic::RefUnwindSafe + 'static {
    /// Run now, or wait how long.
    fn decide(&self, state: &PendingState) -> Decision;

    /// How the strategy reads in status output (`"batch(100, 50ms)"`).
    fn describe(&self) -> String;

    /// Whether work runs as soon as it is seen, with nothing held back: the
    /// runners then skip the pending bookkeeping. Only [`Realtime`] says yes.
    fn is_realtime(&self) -> bool {
        false
    }
}

impl dyn SyncStrategy {
    /// [`decide`](SyncStrategy::decide) for runners, with a panic in the
    /// strategy contained: it is logged and the work runs
    /// ([`DEFAULT_MAX_EVENTS`] at a time), so a broken strategy never
    /// strands pending events.
    #[must_use]
    pub fn decide_guarded(&self, state: &PendingState) -> Decision {
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.decide(state)));
        decided.unwrap_or_else(|_| {
            tracing::error!(
                strategy = %self.describe(),
                "a sync strategy panicked deciding; running the pending work"
            );
            Decision::Run {
                max_events: DEFAULT_MAX_EVENTS,
            }
        })
    }
}

impl std::fmt::Debug for dyn SyncStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The most events one run applies when a strategy does not say.
pub const DEFAULT_MAX_EVENTS: u32 = 100;

/// Applies work as soon as the runner sees it (the default for async
/// perspectives).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Realtime;

impl SyncStrategy for Realtime {
    fn decide(&self, _: &PendingState) -> Decision {
        Decision::Run {
            max_events: DEFAULT_MAX_EVENTS,
        }
    }
    fn describe(&self) -> String {
        "realtime".into()
    }
    fn is_realtime(&self) -> bool {
        true
    }
}

/// Applies up to `max_events` pending events in one run, once that many are
/// pending or the oldest has waited `max_wait`, whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Run when this many events are pending; the most one run applies.
    pub max_events: u32,
    /// Run when the oldest pending event has waited this long.
    pub max_wait: Duration,
}

impl SyncStrategy for Batch {
    fn decide(&self, state: &PendingState) -> Decision {
        let max_events = self.max_events.max(1);
        if state.pending >= u64::from(max_events) || state.oldest_age >= self.max_wait {
            Decision::Run { max_events }
        } else {
            Decision::Wait(self.max_wait - state.oldest_age)
        }
    }
    fn describe(&self) -> String {
        format!(
            "batch({}, {})",
            self.max_events,
            format_duration(self.max_wait)
        )
    }
}

/// Applies every pending event once per `interval` (and when a wait
/// triggers a run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scheduled {
    /// Time between runs.
    pub interval: Duration,
}

impl SyncStrategy for Scheduled {
    fn decide(&self, state: &PendingState) -> Decision {
        // Never run yet: the first run is an interval after work arrived.
        let since = state.since_last_run.unwrap_or(state.oldest_age);
        if since >= self.interval {
            Decision::Run {
                max_events: u32::MAX,
            }
        } else {
            Decision::Wait(self.interval - since)
        }
    }
    fn describe(&self) -> String {
        format!("scheduled({})", format_duration(self.interval))
    }
}

/// A duration as the attribute takes it: `"50ms"`, `"5s"`, `"2m"`, `"1h"`
/// (the largest unit that divides it; `"0ms"` for zero).
#[must_use]
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let units: [(u128, &str); 3] = [(3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (size, unit) in units {
        if ms >= size && ms % size == 0 && d.subsec_nanos() % 1_000_000 == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{ms}ms")
    } else {
        format!("{}us", d.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_runs_at_n_or_after_max_wait() {
        let b = Batch {
            max_events: 100,
            max_wait: Duration::from_millis(50),
        };
        let ms = Duration::from_millis;
        assert_eq!(
            b.decide(&PendingState::new(99, ms(10), None)),
            Decision::Wait(ms(40))
        );
        assert_eq!(
            b.decide(&PendingState::new(100, ms(0), None)),
            Decision::Run { max_events: 100 }
        );
        assert_eq!(
            b.decide(&PendingState::new(1, ms(50), None)),
            Decision::Run { max_events: 100 }
        );
        assert_eq!(b.describe(), "batch(100, 50ms)");
    }

    #[test]
    fn scheduled_runs_once_per_interval() {
        let s = Scheduled {
            interval: Duration::from_secs(5),
        };
        let secs = Duration::from_secs;
        assert_eq!(
            s.decide(&PendingState::new(1, secs(1), Some(secs(2)))),
            Decision::Wait(secs(3))
        );
        assert!(matches!(
            s.decide(&PendingState::new(1, secs(0), Some(secs(5)))),
            Decision::Run { .. }
        ));
        assert_eq!(
            s.decide(&PendingState::new(1, secs(4), None)),
            Decision::Wait(secs(1))
        );
        assert_eq!(s.describe(), "scheduled(5s)");
        assert_eq!(Realtime.describe(), "realtime");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1500us");
    }
}

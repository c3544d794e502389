//! Which events a wait is about: a small filter tree over tracked events.

use crate::error::{Error, Result};
use crate::message::{Event, StreamId};
use std::sync::Arc;
use std::time::Duration;

use super::clock::{SyncClock, DEFAULT_REASK};

/// Which tracked events to wait for. Combine with [`and`](Self::and) (intersection)
/// and [`or`](Self::or) (union); chains fold left: `a.and(b).or(c)` is `(a ∧ b) ∨ c`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncFilter {
    /// Events emitted by the current scope.
    CurrentScope,
    /// Events of one stream.
    Stream(StreamId),
    /// Events of these types (wire names).
    EventTypes(Vec<&'static str>),
    /// Every tracked event.
    All,
    /// Exactly these events, by id.
    EventIds(Vec<crate::message::EventId>),
    /// Both filters hold.
    And(Box<SyncFilter>, Box<SyncFilter>),
    /// Either filter holds.
    Or(Box<SyncFilter>, Box<SyncFilter>),
}

/// A list of event types, for [`SyncFilter::for_event_types`]: one event type or a tuple.
pub trait EventTypeList {
    /// The wire names.
    fn names() -> Vec<&'static str>;
}

impl<E: Event> EventTypeList for E {
    fn names() -> Vec<&'static str> {
        vec![E::NAME]
    }
}

macro_rules! tuple_list {
    ($($t:ident),+) => {
        impl<$($t: Event),+> EventTypeList for ($($t,)+) {
            fn names() -> Vec<&'static str> {
                vec![$($t::NAME),+]
            }
        }
    };
}
tuple_list!(A);
tuple_list!(A, B);
tuple_list!(A, B, C);
tuple_list!(A, B, C, D);
tuple_list!(A, B, C, D, E);
tuple_list!(A, B, C, D, E, F);
tuple_list!(A, B, C, D, E, F, G);
tuple_list!(A, B, C, D, E, F, G, H);

/// One tracked event, as the filter sees it.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub(crate) event_id: crate::message::EventId,
    pub(crate) stream_id: StreamId,
    pub(crate) event_type: std::borrow::Cow<'static, str>,
    pub(crate) in_scope: bool,
}

impl Candidate {
    /// An event the caller's scope emitted.
    pub(crate) fn emitted(e: &crate::store::EventLocation) -> Self {
        Candidate {
            event_id: e.event_id,
            stream_id: e.stream_id,
            event_type: e.event_type.clone(),
            in_scope: true,
        }
    }

    /// A stored event the caller holds (its scope's, or the one it handles).
    pub(crate) fn stored(e: &crate::store::StoredEvent) -> Self {
        Candidate {
            event_id: e.event_id,
            stream_id: e.stream_id,
            event_type: e.event_type.clone(),
            in_scope: true,
        }
    }
}

impl SyncFilter {
    /// Events emitted by the current scope.
    #[must_use]
    pub fn current_scope() -> Self {
        SyncFilter::CurrentScope
    }

    /// Events of one stream.
    #[must_use]
    pub fn for_stream(stream: impl Into<StreamId>) -> Self {
        SyncFilter::Stream(stream.into())
    }

    /// Events of these types: `for_event_types::<OrderCreated>()` or
    /// `for_event_types::<(OrderCreated, OrderShipped)>()`.
    #[must_use]
    pub fn for_event_types<T: EventTypeList>() -> Self {
        SyncFilter::EventTypes(T::names())
    }

    /// Events of these wire names (the attribute's list); users name event
    /// types by type, with [`for_event_types`](Self::for_event_types).
    #[must_use]
    pub(crate) fn for_event_type_names(names: &[&'static str]) -> Self {
        SyncFilter::EventTypes(names.to_vec())
    }

    /// Every tracked event.
    #[must_use]
    pub fn all() -> Self {
        SyncFilter::All
    }

    /// Exactly these events, by id (from [`Scope::publish`](crate::Scope::publish)
    /// or [`Scope::emitted`](crate::Scope::emitted)). An id this process has
    /// not seen is awaited as it is, when the filter selects it by id alone
    /// (`event_ids(..)` or `event_ids(..).or(..)`): it is never reported synced
    /// before it is stored and applied.
    ///
    /// ```
    /// # use whizbang_core::{sync::SyncFilter, EventId};
    /// let id = EventId::new();
    /// let filter = SyncFilter::event_ids([id]);
    /// assert_eq!(filter, SyncFilter::EventIds(vec![id]));
    /// ```
    #[must_use]
    pub fn event_ids(ids: impl IntoIterator<Item = crate::message::EventId>) -> Self {
        SyncFilter::EventIds(ids.into_iter().collect())
    }

    /// Both this and `other`.
    #[must_use]
    pub fn and(self, other: SyncFilter) -> Self {
        SyncFilter::And(Box::new(self), Box::new(other))
    }

    /// Either this or `other`.
    #[must_use]
    pub fn or(self, other: SyncFilter) -> Self {
        SyncFilter::Or(Box::new(self), Box::new(other))
    }

    /// Options with this filter and a timeout.
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> PerspectiveSyncOptions {
        PerspectiveSyncOptions::new(self).timeout(timeout)
    }

    /// Whether the filter refers to the current scope somewhere.
    #[must_use]
    pub fn needs_scope(&self) -> bool {
        match self {
            SyncFilter::CurrentScope => true,
            SyncFilter::And(a, b) | SyncFilter::Or(a, b) => a.needs_scope() || b.needs_scope(),
            _ => false,
        }
    }

    /// Whether the filter can select events on streams it does not name
    /// (`all()`, event types): such a wait must also learn, from the backend,
    /// what other processes appended before it began.
    pub(crate) fn open_ended(&self) -> bool {
        match self {
            SyncFilter::All | SyncFilter::EventTypes(_) => true,
            SyncFilter::CurrentScope | SyncFilter::Stream(_) | SyncFilter::EventIds(_) => false,
            SyncFilter::And(a, b) => a.open_ended() && b.open_ended(),
            SyncFilter::Or(a, b) => a.open_ended() || b.open_ended(),
        }
    }

    /// Every stream the filter names.
    pub(crate) fn streams(&self, out: &mut Vec<StreamId>) {
        match self {
            SyncFilter::Stream(s) if !out.contains(s) => out.push(*s),
            SyncFilter::And(a, b) | SyncFilter::Or(a, b) => {
                a.streams(out);
                b.streams(out);
            }
            _ => {}
        }
    }

    /// Every event id the filter names.
    pub(crate) fn ids(&self, out: &mut Vec<crate::message::EventId>) {
        match self {
            SyncFilter::EventIds(ids) => {
                for id in ids {
                    if !out.contains(id) {
                        out.push(*id);
                    }
                }
            }
            SyncFilter::And(a, b) | SyncFilter::Or(a, b) => {
                a.ids(out);
                b.ids(out);
            }
            _ => {}
        }
    }

    /// Whether the filter selects `id` knowing nothing else of the event.
    pub(crate) fn selects_id_alone(&self, id: crate::message::EventId) -> bool {
        match self {
            SyncFilter::EventIds(ids) => ids.contains(&id),
            SyncFilter::All => true,
            SyncFilter::CurrentScope | SyncFilter::Stream(_) | SyncFilter::EventTypes(_) => false,
            SyncFilter::And(a, b) => a.selects_id_alone(id) && b.selects_id_alone(id),
            SyncFilter::Or(a, b) => a.selects_id_alone(id) || b.selects_id_alone(id),
        }
    }

    pub(crate) fn matches(&self, c: &Candidate) -> bool {
        match self {
            SyncFilter::EventIds(ids) => ids.contains(&c.event_id),
            SyncFilter::CurrentScope => c.in_scope,
            SyncFilter::Stream(s) => c.stream_id == *s,
            SyncFilter::EventTypes(ts) => ts.iter().any(|t| *t == c.event_type),
            SyncFilter::All => true,
            SyncFilter::And(a, b) => a.matches(c) && b.matches(c),
            SyncFilter::Or(a, b) => a.matches(c) || b.matches(c),
        }
    }
}

/// How to wait: the filter, the timeout (5 s by default, zero allowed: one
/// check, no wait) and whether the timeout counts only active time (on by default).
#[derive(Clone)]
pub struct PerspectiveSyncOptions {
    /// Which events.
    pub filter: SyncFilter,
    /// How long to wait at most (plus [`SLACK`](Self::SLACK)); `Duration::MAX`
    /// waits for ever.
    pub timeout: Duration,
    /// Count only time the process was running: a freeze (debugger, SIGSTOP)
    /// does not count, time starved of CPU does (on Linux, told apart by the
    /// threads' run-queue wait; elsewhere every overrun of a sleep slice by more
    /// than 250 ms is taken for a freeze). A starved wait ends at its first
    /// wake-up after the timeout: the timeout plus that wake-up's scheduling delay.
    pub debugger_aware: bool,
    pub(crate) clock: Option<Arc<dyn SyncClock>>,
    pub(crate) reask: (Duration, Duration),
    /// Run a perspective whose strategy holds work back now, on the
    /// waiting task, rather than wait for its next run (see [`trigger`](Self::trigger)).
    pub trigger: bool,
}

impl std::fmt::Debug for PerspectiveSyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerspectiveSyncOptions")
            .field("filter", &self.filter)
            .field("timeout", &self.timeout)
            .field("debugger_aware", &self.debugger_aware)
            .field("reask_backoff", &self.reask)
            .field("trigger", &self.trigger)
            .finish_non_exhaustive()
    }
}

impl Default for PerspectiveSyncOptions {
    fn default() -> Self {
        PerspectiveSyncOptions::new(SyncFilter::CurrentScope)
    }
}

impl From<SyncFilter> for PerspectiveSyncOptions {
    fn from(filter: SyncFilter) -> Self {
        PerspectiveSyncOptions::new(filter)
    }
}

impl PerspectiveSyncOptions {
    /// The default timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// How far past its timeout a wait may run: its last backend call (the
    /// scope flush, a checkpoint read, an inquiry) gets this long to answer,
    /// so a zero timeout still checks once. Whatever the backend does, a wait
    /// returns within its timeout plus this slack of active time (a hanging
    /// backend gives [`SyncOutcome::TimedOut`](crate::SyncOutcome::TimedOut)).
    pub const SLACK: Duration = Duration::from_millis(50);

    /// Options for `filter` with the defaults.
    #[must_use]
    pub fn new(filter: SyncFilter) -> Self {
        PerspectiveSyncOptions {
            filter,
            timeout: Self::DEFAULT_TIMEOUT,
            debugger_aware: true,
            clock: None,
            reask: DEFAULT_REASK,
            trigger: false,
        }
    }

    /// Sets the timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the timeout in milliseconds, refusing negative values.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a negative timeout.
    pub fn timeout_ms(self, ms: i64) -> Result<Self> {
        let ms = u64::try_from(ms).map_err(|_| {
            Error::InvalidInput(format!(
                "a sync timeout cannot be negative (got {ms} ms): use 0 to check once without \
                 waiting, or a positive number of milliseconds"
            ))
        })?;
        Ok(self.timeout(Duration::from_millis(ms)))
    }

    /// Turns debugger awareness on or off.
    #[must_use]
    pub fn debugger_aware(mut self, on: bool) -> Self {
        self.debugger_aware = on;
        self
    }

    /// How often a wait asks the backend again when nothing woke it: after
    /// `first`, doubling up to `max` (default 5 ms doubling to 1 s). This is how
    /// an apply no wake-up reached (another runtime or process over the same
    /// stores) is noticed; raise it to spare a remote backend. A `max` below
    /// `first` is taken as `first`.
    #[must_use]
    pub fn reask_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.reask = (first, max);
        self
    }

    /// On a perspective whose [strategy](crate::strategy) holds work back
    /// (batch, scheduled, custom): `true` runs the perspective on the awaited
    /// events' streams now, on the waiting task, instead of waiting for the
    /// strategy's next run (default `false`: wait for it, however long the
    /// schedule is, within the timeout). The result's
    /// [`run`](crate::SyncResult::run) says which happened. A keyed
    /// perspective is run as a whole (its one cursor catches up on
    /// everything stored). Events the wait still finds pending after that
    /// run (not yet in a keyed perspective's global order, or appended
    /// meanwhile) are run again by the runner in each round that finds them,
    /// never left to the strategy. No effect on inline and realtime
    /// perspectives, which never hold work back.
    #[must_use]
    pub fn trigger(mut self, on: bool) -> Self {
        self.trigger = on;
        self
    }

    /// Uses this clock (tests).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn SyncClock>) -> Self {
        self.clock = Some(clock);
        self
    }
}

//! Trackers: what a scope emitted ([`ScopedEventTracker`]) and, per process,
//! what each perspective still has to apply, with targeted wake-ups for the
//! waiters ([`SyncEventTracker`]).
//!
//! Entries leave the process tracker when the perspective applies them; stale
//! ones (never applied within the time-to-live) expire on a sweep and wake
//! their waiters, which then ask the backend: the backend, not the tracker, is
//! the authority on what was applied, so a wait that holds an expired id never
//! reports it synced. After expiry the process no longer knows of those events:
//! a later unscoped `all()` wait does not include them, while `for_stream`
//! waits read the stream's unapplied events from the store and stay exact.

use super::clock::SyncClock;
use super::filter::Candidate;
use super::inquiry::SyncBackend;
use super::table::Table;
use crate::message::{EventId, StreamId};
use crate::perspective::engine::Engine;
use crate::perspective::runner::PerspectiveRunner;
use crate::perspective::ApplyReport;
use crate::registry::Registry;
use crate::store::{EventLocation, StreamAppend};
use crate::util::{lock, IdMap};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// What sync needs of a runtime, handed down by dispatch (which builds it and
/// holds it): the routing tables, the tracker and its backend, the default
/// clock, and the engine and runner a wait helps along or signals. Sync
/// imports nothing of dispatch; dispatch imports sync.
pub(crate) struct SyncRuntime {
    pub(crate) registry: Arc<Registry>,
    pub(crate) tracker: Arc<SyncEventTracker>,
    pub(crate) backend: Arc<dyn SyncBackend>,
    /// The default clock, shared by every wait.
    pub(crate) clock: Arc<dyn SyncClock>,
    /// Catch-ups for the help-along, and the stores a wait reads.
    pub(crate) engine: Engine,
    /// The async runner a wait signals when it finds stored, unapplied work.
    pub(crate) runner: PerspectiveRunner,
}

/// What one scope emitted, in order.
#[derive(Clone, Debug, Default)]
pub struct ScopedEventTracker {
    events: Vec<EventLocation>,
}

impl ScopedEventTracker {
    pub(crate) fn new(events: Vec<EventLocation>) -> Self {
        ScopedEventTracker { events }
    }

    /// The emitted events.
    #[must_use]
    pub fn events(&self) -> &[EventLocation] {
        &self.events
    }

    /// How many.
    #[must_use]
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the scope emitted nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[derive(Clone, Debug)]
struct Pending {
    stream_id: StreamId,
    event_type: std::borrow::Cow<'static, str>,
    tracked_at: tokio::time::Instant,
}

/// Per process: for each perspective, the events appended here that it has not
/// applied yet, and the waiters to wake when it applies something.
///
/// It also serves the waits: each is a registration in its table, asked about
/// in batches by one service task (see the `waiters` module), so a sleeping
/// waiter costs a table entry and a small future, holds no timer of its own, and
/// leaves the table at once when it ends or is dropped.
pub struct SyncEventTracker {
    /// Event ids are generated here (UUID v7), never chosen by callers, so the
    /// cheap id hasher is safe for these maps.
    pending: Mutex<HashMap<&'static str, IdMap<EventId, Pending>>>,
    pub(super) waiters: Mutex<Table>,
    next_waiter: AtomicU64,
    ttl: Duration,
    /// Wakes the service task: a registration is due, or an earlier alarm is set.
    pub(super) rearm: Arc<Notify>,
    /// The runtime whose backend and runner the service uses (set by the first wait).
    pub(super) runtime: OnceLock<Weak<SyncRuntime>>,
}

impl std::fmt::Debug for SyncEventTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEventTracker")
            .field("tracked", &self.tracked_count())
            .field("waiters", &self.waiter_count())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl SyncEventTracker {
    /// The default time-to-live of an entry never applied.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

    pub(crate) fn new(ttl: Duration) -> Self {
        SyncEventTracker {
            pending: Mutex::new(HashMap::new()),
            waiters: Mutex::new(Table::default()),
            next_waiter: AtomicU64::new(1),
            ttl,
            rearm: Arc::new(Notify::new()),
            runtime: OnceLock::new(),
        }
    }

    /// Records events about to be appended, for every perspective that handles
    /// them. Before the append, so an apply racing the append cannot land before
    /// the entry exists (it would then never leave). Returns the ids tracked.
    pub(crate) fn track_new(&self, registry: &Registry, appends: &[StreamAppend]) -> Vec<EventId> {
        let now = tokio::time::Instant::now();
        let mut tracked = Vec::new();
        let mut pending = lock(&self.pending);
        for ev in appends.iter().flat_map(|a| &a.events) {
            for p in registry.perspectives_for(ev.event_type) {
                pending.entry(p.name).or_default().insert(
                    ev.event_id,
                    Pending {
                        stream_id: ev.stream_id,
                        event_type: std::borrow::Cow::Borrowed(ev.event_type),
                        tracked_at: now,
                    },
                );
                tracked.push(ev.event_id);
            }
        }
        tracked
    }

    /// Forgets events whose append failed, waking the waiters that might hold them
    /// (they ask the backend, which never saw them: `NotArrived`, not synced).
    pub(crate) fn untrack(&self, ids: &[EventId]) {
        if ids.is_empty() {
            return;
        }
        let mut touched = Vec::new();
        {
            let mut pending = lock(&self.pending);
            for (perspective, m) in pending.iter_mut() {
                for id in ids {
                    if let Some(p) = m.remove(id) {
                        touched.push((*perspective, p.stream_id));
                    }
                }
            }
            pending.retain(|_, m| !m.is_empty());
        }
        for (p, s) in touched {
            self.wake(p, s);
        }
    }

    /// The events `perspective` has still to apply, as filter candidates.
    pub(crate) fn pending_for(&self, perspective: &str) -> Vec<Candidate> {
        lock(&self.pending)
            .get(perspective)
            .map(|m| {
                m.iter()
                    .map(|(id, p)| Candidate {
                        event_id: *id,
                        stream_id: p.stream_id,
                        event_type: p.event_type.clone(),
                        in_scope: false,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Entries tracked, across perspectives.
    #[must_use]
    pub fn tracked_count(&self) -> usize {
        lock(&self.pending).values().map(|m| m.len()).sum()
    }

    /// Waits registered (one per waiting perspective), across perspectives,
    /// counting a decided one until its wait takes the outcome or is dropped.
    #[must_use]
    pub fn waiter_count(&self) -> usize {
        lock(&self.waiters).len()
    }

    pub(super) fn next_id(&self) -> u64 {
        self.next_waiter.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops entries older than the time-to-live and wakes their waiters.
    /// Returns how many expired.
    pub fn sweep(&self) -> usize {
        let now = tokio::time::Instant::now();
        let mut expired: Vec<(&'static str, StreamId)> = Vec::new();
        {
            let mut pending = lock(&self.pending);
            for (perspective, entries) in pending.iter_mut() {
                entries.retain(|_, p| {
                    let keep = now.duration_since(p.tracked_at) < self.ttl;
                    if !keep {
                        expired.push((perspective, p.stream_id));
                    }
                    keep
                });
            }
            pending.retain(|_, m| !m.is_empty());
            for m in pending.values_mut() {
                m.shrink_to_fit();
            }
        }
        let n = expired.len();
        if n > 0 {
            tracing::warn!(
                expired = n,
                "sync tracker entries expired unapplied; waking their waiters"
            );
        }
        for (p, s) in expired {
            self.wake(p, s);
        }
        n
    }

    /// Alarms set and not yet fired: one per sleeping waiter. A finished or
    /// dropped wait leaves none behind.
    #[must_use]
    pub fn alarm_count(&self) -> usize {
        lock(&self.waiters).alarm_count()
    }

    /// Queues the waits watching (perspective, stream); their own tasks serve
    /// the round (see the `waiters` module).
    fn wake(&self, perspective: &'static str, stream: StreamId) {
        lock(&self.waiters).wake(perspective, stream, &[]);
    }

    /// Makes every waiter re-ask its backend now: wake-ups may have been lost
    /// (a backend's LISTEN connection dropped and came back).
    pub(crate) fn reask_all(&self) {
        lock(&self.waiters).wake_all();
    }

    /// Called when a perspective committed (or failed) on a stream.
    pub(crate) fn applied(&self, report: &ApplyReport) {
        if !report.applied.is_empty() {
            let mut pending = lock(&self.pending);
            if let Some(m) = pending.get_mut(report.perspective) {
                // An emptied map is kept (one per perspective) so the next event
                // does not reallocate it; the sweep trims them.
                for id in &report.applied {
                    m.remove(id);
                }
            }
        }
        let mut waiters = lock(&self.waiters);
        if report.stream == crate::perspective::KEYED_CURSOR {
            // A keyed perspective's cursor moved elsewhere: every wait on it
            // may be decided now.
            waiters.wake_perspective(report.perspective);
        }
        waiters.wake(report.perspective, report.stream, &report.applied);
    }
}

impl crate::perspective::engine::ApplyListener for SyncEventTracker {
    fn on_apply(&self, report: &ApplyReport) {
        self.applied(report);
    }
}

/// Feeds apply reports of commits made elsewhere to one runtime's waiters,
/// without keeping the runtime alive. Made by
/// [`Runtime::wakeup_sink`](crate::Runtime::wakeup_sink); cheap to clone.
#[derive(Clone, Debug)]
pub struct WakeupSink {
    tracker: Weak<SyncEventTracker>,
}

impl WakeupSink {
    pub(crate) fn new(tracker: &Arc<SyncEventTracker>) -> Self {
        WakeupSink {
            tracker: Arc::downgrade(tracker),
        }
    }

    /// Wakes the runtime's waiters for `report`, like
    /// [`Runtime::notify_applied`](crate::Runtime::notify_applied). Returns
    /// `false` when the runtime is gone (the caller can stop listening).
    pub fn notify(&self, report: &ApplyReport) -> bool {
        match self.tracker.upgrade() {
            Some(tracker) => {
                tracker.applied(report);
                true
            }
            None => false,
        }
    }

    /// Makes every waiter of the runtime re-ask its backend now. Call it when
    /// wake-ups may have been lost without a trace: after a LISTEN connection
    /// was re-established, every NOTIFY sent while it was down is gone.
    /// Returns `false` when the runtime is gone.
    pub fn reask_all(&self) -> bool {
        match self.tracker.upgrade() {
            Some(tracker) => {
                tracker.reask_all();
                true
            }
            None => false,
        }
    }
}

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

use super::filter::Candidate;
use crate::dispatch::EmittedEvent;
use crate::message::{EventId, StreamId};
use crate::perspective::ApplyReport;
use crate::registry::Registry;
use crate::store::memory::IdMap;
use crate::store::StreamAppend;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::Notify;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one scope emitted, in order.
#[derive(Clone, Debug, Default)]
pub struct ScopedEventTracker {
    events: Vec<EmittedEvent>,
}

impl ScopedEventTracker {
    pub(crate) fn new(events: Vec<EmittedEvent>) -> Self {
        ScopedEventTracker { events }
    }

    /// The emitted events.
    #[must_use]
    pub fn events(&self) -> &[EmittedEvent] {
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

/// Few waiters share one (perspective, stream): a Vec is smaller than a map.
type WaiterSet = Vec<(u64, Arc<Notify>)>;

#[derive(Default)]
struct Waiters {
    by_stream: HashMap<(&'static str, StreamId), WaiterSet>,
    any: HashMap<&'static str, WaiterSet>,
}

/// Where a sleeping waiter's alarm sits: its wake-up time and a unique sequence number.
type AlarmKey = (tokio::time::Instant, u64);

/// Per process: for each perspective, the events appended here that it has not
/// applied yet, and the waiters to wake when it applies something.
///
/// Sleeping waiters hold no timer of their own: their wake-up times sit in one
/// ordered map, served by one timer task, so a waiter costs a `Notified` and a
/// map entry. A waiter that wakes, re-arms or is dropped removes its entry at once.
pub struct SyncEventTracker {
    /// Event ids are generated here (UUID v7), never chosen by callers, so the
    /// cheap id hasher is safe for these maps.
    pending: Mutex<HashMap<&'static str, IdMap<EventId, Pending>>>,
    waiters: Mutex<Waiters>,
    next_waiter: AtomicU64,
    ttl: Duration,
    alarms: Mutex<BTreeMap<AlarmKey, Weak<Notify>>>,
    /// Wakes the timer task when an alarm earlier than all others is set.
    rearm: Arc<Notify>,
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
            waiters: Mutex::new(Waiters::default()),
            next_waiter: AtomicU64::new(1),
            ttl,
            alarms: Mutex::new(BTreeMap::new()),
            rearm: Arc::new(Notify::new()),
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

    /// Waiter registrations, across perspectives and streams.
    #[must_use]
    pub fn waiter_count(&self) -> usize {
        let w = lock(&self.waiters);
        w.by_stream.values().map(Vec::len).sum::<usize>()
            + w.any.values().map(Vec::len).sum::<usize>()
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

    /// Wakes `notify` at `at` (or soon after, if the process was frozen),
    /// replacing the alarm `previous` if any. Returns the new alarm's key.
    fn set_alarm(
        &self,
        previous: Option<AlarmKey>,
        at: tokio::time::Instant,
        notify: &Arc<Notify>,
    ) -> AlarmKey {
        let key = (at, self.next_waiter.fetch_add(1, Ordering::Relaxed));
        let mut alarms = lock(&self.alarms);
        if let Some(old) = previous {
            alarms.remove(&old);
        }
        let earliest = alarms.first_key_value().is_none_or(|(k, _)| key < *k);
        alarms.insert(key, Arc::downgrade(notify));
        drop(alarms);
        if earliest {
            self.rearm.notify_one();
        }
        key
    }

    /// Removes an alarm (gone already if it fired).
    fn remove_alarm(&self, key: AlarmKey) {
        lock(&self.alarms).remove(&key);
    }

    /// Alarms set and not yet fired: one per sleeping waiter. A finished or
    /// dropped wait leaves none behind.
    #[must_use]
    pub fn alarm_count(&self) -> usize {
        lock(&self.alarms).len()
    }

    /// Fires every alarm that is due; returns when the next one is.
    fn fire_due(&self) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let mut alarms = lock(&self.alarms);
        while let Some(entry) = alarms.first_entry() {
            if entry.key().0 > now {
                return Some(entry.key().0);
            }
            if let Some(n) = entry.remove().upgrade() {
                n.notify_one();
            }
        }
        None
    }

    /// Serves the alarms while the tracker lives (it holds only a weak reference).
    pub(crate) fn spawn_timer(self: &Arc<Self>, handle: &tokio::runtime::Handle) {
        let weak = Arc::downgrade(self);
        let rearm = Arc::clone(&self.rearm);
        handle.spawn(async move {
            loop {
                let next = match weak.upgrade() {
                    Some(t) => t.fire_due(),
                    None => return,
                };
                // Look again at least every second, so the task ends soon after
                // the runtime is dropped.
                let limit = tokio::time::Instant::now() + Duration::from_secs(1);
                let until = next.map_or(limit, |n| n.min(limit));
                tokio::select! {
                    () = rearm.notified() => {}
                    () = tokio::time::sleep_until(until) => {}
                }
            }
        });
    }

    pub(crate) fn register(self: &Arc<Self>, perspective: &'static str) -> WaiterRegistration {
        WaiterRegistration {
            tracker: Arc::clone(self),
            id: self.next_waiter.fetch_add(1, Ordering::Relaxed),
            perspective,
            notify: Arc::new(Notify::new()),
            streams: Vec::new(),
            any: false,
            alarm: None,
        }
    }

    fn wake(&self, perspective: &'static str, stream: StreamId) {
        let w = lock(&self.waiters);
        if let Some(set) = w.by_stream.get(&(perspective, stream)) {
            for (_, n) in set {
                n.notify_one();
            }
        }
        if let Some(set) = w.any.get(perspective) {
            for (_, n) in set {
                n.notify_one();
            }
        }
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
        self.wake(report.perspective, report.stream);
    }
}

impl crate::perspective::engine::ApplyListener for SyncEventTracker {
    fn on_apply(&self, report: &ApplyReport) {
        self.applied(report);
    }
}

/// One waiter's interest, removed from the tracker when dropped (so a
/// cancelled wait frees its registration at once).
pub(crate) struct WaiterRegistration {
    tracker: Arc<SyncEventTracker>,
    id: u64,
    perspective: &'static str,
    pub(crate) notify: Arc<Notify>,
    streams: Vec<StreamId>,
    any: bool,
    /// The alarm set by the last [`alarm`](Self::alarm), if it may still be set.
    alarm: Option<AlarmKey>,
}

impl WaiterRegistration {
    /// Wakes me at `at`, replacing my previous alarm.
    pub(crate) fn alarm(&mut self, at: tokio::time::Instant) {
        self.alarm = Some(self.tracker.set_alarm(self.alarm, at, &self.notify));
    }

    /// Removes my alarm, if set (woken early, or done).
    pub(crate) fn disarm(&mut self) {
        if let Some(key) = self.alarm.take() {
            self.tracker.remove_alarm(key);
        }
    }

    /// Wake me when `perspective` applies on `stream`. Returns whether this is new.
    pub(crate) fn watch_stream(&mut self, stream: StreamId) -> bool {
        if self.streams.contains(&stream) {
            return false;
        }
        self.streams.push(stream);
        lock(&self.tracker.waiters)
            .by_stream
            .entry((self.perspective, stream))
            .or_insert_with(|| Vec::with_capacity(1))
            .push((self.id, Arc::clone(&self.notify)));
        true
    }

    /// Wake me when `perspective` applies anything (for ids not located yet).
    pub(crate) fn watch_any(&mut self) -> bool {
        if self.any {
            return false;
        }
        self.any = true;
        lock(&self.tracker.waiters)
            .any
            .entry(self.perspective)
            .or_default()
            .push((self.id, Arc::clone(&self.notify)));
        true
    }
}

impl Drop for WaiterRegistration {
    fn drop(&mut self) {
        self.disarm();
        let mut w = lock(&self.tracker.waiters);
        for s in &self.streams {
            let key = (self.perspective, *s);
            if let Some(set) = w.by_stream.get_mut(&key) {
                set.retain(|(id, _)| *id != self.id);
                if set.is_empty() {
                    w.by_stream.remove(&key);
                }
            }
        }
        if self.any {
            if let Some(set) = w.any.get_mut(self.perspective) {
                set.retain(|(id, _)| *id != self.id);
                if set.is_empty() {
                    w.any.remove(self.perspective);
                }
            }
        }
    }
}

//! The table of a tracker's waits: each registration (perspective, awaited
//! ids with their streams once located, active-time deadline, re-ask
//! backoff, waker) with the outcomes of finished ones, and the index of who to wake on what, and when.
//!
//! Owns the data only; the service that asks the backend and decides each
//! registration is `waiters.rs`. Imports nothing of the tracker.

use super::clock::ActiveTimer;
use super::SyncOutcome;
use crate::error::Result;
use crate::message::{EventId, StreamId};
use crate::perspective::PerspectiveRegistration;
use crate::util::Few;
use std::collections::{BTreeSet, HashMap};
use std::task::Waker;
use std::time::Duration;
use tokio::time::Instant;

/// Where a sleeping registration's re-ask sits: its time and the registration's id.
pub(crate) type AlarmKey = (Instant, u64);

/// How a registration ended: the outcome, the events awaited, the active time.
pub(crate) type Done = Result<(SyncOutcome, usize, Duration)>;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// In the due list: the next round asks for it.
    Queued,
    /// In a round's inquiry; `again` when an apply woke it meanwhile (it is
    /// asked again right after, never in two rounds at once).
    InFlight { again: bool },
    /// Asleep until its alarm or an apply on a watched stream.
    Sleeping,
}

/// One wait, served by the tracker.
pub(super) struct Registration {
    pub(super) perspective: &'static PerspectiveRegistration,
    /// The awaited ids not yet known applied (after a round, the ones the
    /// perspective handles and has not applied).
    pub(super) ids: Few<EventId>,
    /// Awaited ids known applied and dropped from `ids`.
    pub(super) confirmed: usize,
    /// Whether a round decided it once: from then on `ids` holds only ids the
    /// perspective handles, so an apply report alone can tell it is synced.
    pub(super) decided: bool,
    /// Ids an apply report named while a round was asking about this
    /// registration: the round counts them applied whatever its (older) answer says.
    pub(super) late_applied: Few<EventId>,
    pub(super) streams: Few<StreamId>,
    pub(super) any: bool,
    pub(super) timer: ActiveTimer,
    pub(super) timeout: Duration,
    /// How long the timer expects until its next observation.
    pub(super) planned: Duration,
    pub(super) alarm: Option<AlarmKey>,
    /// Streams whose runner this wait has signalled (async perspectives).
    pub(super) signalled: Few<StreamId>,
    /// Whether the wait runs the perspective itself (its options'
    /// `trigger`, on a perspective whose strategy holds work back): then
    /// events it still finds pending are run now, in every round, not held
    /// for the strategy (a keyed perspective's events may have had no place
    /// in the global order yet when the wait's first run ran).
    pub(super) trigger: bool,
    pub(super) awaited: usize,
    pub(super) state: State,
    /// The waiting task, once its future was polled: woken when the
    /// registration is due (it serves the round) or decided.
    pub(super) waker: Option<Waker>,
}

impl Registration {
    /// Wakes the waiting task, if it was polled already (else its first poll
    /// looks at the due list and the outcomes itself).
    pub(super) fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }
}

/// Who to wake on what, and when.
#[derive(Default)]
pub(super) struct Index {
    pub(super) by_stream: HashMap<(&'static str, StreamId), Few<u64>>,
    pub(super) any: HashMap<&'static str, Few<u64>>,
    pub(super) alarms: BTreeSet<AlarmKey>,
    pub(super) due: Vec<u64>,
    /// Registrations whose re-ask is due (their alarm fired).
    pub(super) alarmed: Vec<u64>,
    /// Outcomes of finished registrations, until their wait takes them (or is
    /// dropped).
    pub(super) finished: HashMap<u64, Done>,
}

impl Index {
    pub(super) fn watch_stream(&mut self, id: u64, r: &mut Registration, stream: StreamId) -> bool {
        if r.streams.contains(&stream) {
            return false;
        }
        r.streams.push(stream);
        self.by_stream
            .entry((r.perspective.name, stream))
            .or_default()
            .push(id);
        true
    }

    pub(super) fn watch_any(&mut self, id: u64, r: &mut Registration) -> bool {
        if r.any {
            return false;
        }
        r.any = true;
        self.any.entry(r.perspective.name).or_default().push(id);
        true
    }

    pub(super) fn unwatch(&mut self, id: u64, r: &Registration) {
        for s in &r.streams {
            let key = (r.perspective.name, *s);
            if let Some(set) = self.by_stream.get_mut(&key) {
                set.retain(|x| *x != id);
                if set.is_empty() {
                    self.by_stream.remove(&key);
                }
            }
        }
        if r.any {
            if let Some(set) = self.any.get_mut(r.perspective.name) {
                set.retain(|x| *x != id);
                if set.is_empty() {
                    self.any.remove(r.perspective.name);
                }
            }
        }
        if let Some(key) = r.alarm {
            self.alarms.remove(&key);
        }
    }

    /// Queues `id` for the next round. Returns whether the service must look.
    pub(super) fn queue(&mut self, id: u64, r: &mut Registration) -> bool {
        match r.state {
            State::Sleeping => {
                if let Some(key) = r.alarm.take() {
                    self.alarms.remove(&key);
                }
                r.state = State::Queued;
                self.due.push(id);
                // Its own task serves the due list (it, and whatever else is due).
                r.wake();
                true
            }
            State::InFlight { .. } => {
                r.state = State::InFlight { again: true };
                false
            }
            State::Queued => false,
        }
    }
}

/// Every registration of one tracker.
#[derive(Default)]
pub(crate) struct Table {
    pub(super) regs: HashMap<u64, Box<Registration>>,
    pub(super) index: Index,
}

impl Table {
    /// Registrations, with the decided ones whose wait has not taken its
    /// outcome yet.
    pub(crate) fn len(&self) -> usize {
        self.regs.len() + self.index.finished.len()
    }

    pub(crate) fn alarm_count(&self) -> usize {
        self.index.alarms.len()
    }

    /// Queues every registration watching (perspective, stream) and wakes its
    /// task, which serves the round. Returns whether any was queued.
    ///
    /// `applied` are the ids the perspective just committed: a registration
    /// whose every remaining id is among them is synced at once, with no
    /// inquiry (the commit that reports them is the authority the inquiry
    /// would ask).
    pub(crate) fn wake(
        &mut self,
        perspective: &'static str,
        stream: StreamId,
        applied: &[EventId],
    ) -> bool {
        let Table { regs, index } = self;
        let mut ids: Vec<u64> = Vec::new();
        if let Some(set) = index.by_stream.get(&(perspective, stream)) {
            ids.extend_from_slice(set);
        }
        if let Some(set) = index.any.get(perspective) {
            ids.extend_from_slice(set);
        }
        let mut look = false;
        for id in ids {
            let Some(r) = regs.get_mut(&id) else {
                continue;
            };
            // Not while a round asks about it (the round reads `ids` by
            // position): the round learns of these ids when it decides.
            let idle = !matches!(r.state, State::InFlight { .. });
            if !idle {
                r.late_applied
                    .extend(applied.iter().filter(|e| r.ids.contains(e)).copied());
            }
            if r.decided && idle && !applied.is_empty() {
                let before = r.ids.len();
                r.ids.retain(|e| !applied.contains(e));
                r.confirmed += before - r.ids.len();
                if r.ids.is_empty() {
                    r.timer.observe(r.planned);
                    r.planned = Duration::ZERO;
                    finish_in(regs, index, id, |r| {
                        Ok((SyncOutcome::Synced, r.confirmed, r.timer.active()))
                    });
                    continue;
                }
            }
            look |= index.queue(id, r);
        }
        look
    }

    /// Queues every registration to re-ask now (a backend lost wake-ups it
    /// cannot name: its LISTEN connection dropped). Returns whether any was queued.
    pub(crate) fn wake_all(&mut self) -> bool {
        let Table { regs, index } = self;
        let mut look = false;
        for (id, r) in regs.iter_mut() {
            look |= index.queue(*id, r);
        }
        look
    }

    /// Queues every registration of `perspective` to re-ask now: its keyed
    /// cursor moved (a report on [`KEYED_CURSOR`](crate::perspective::KEYED_CURSOR),
    /// from another process, names no stream). Returns whether any was queued.
    pub(crate) fn wake_perspective(&mut self, perspective: &str) -> bool {
        let Table { regs, index } = self;
        let mut look = false;
        for (id, r) in regs.iter_mut() {
            if r.perspective.name == perspective {
                look |= index.queue(*id, r);
            }
        }
        look
    }

    /// Takes the registrations an apply woke (at most a round's worth), marking
    /// each in flight.
    pub(super) fn take_woken(&mut self) -> Batch {
        let Table { regs, index } = self;
        take_queued(regs, &mut index.due)
    }

    /// Removes a registration and its outcome (its wait ended or was dropped).
    pub(crate) fn remove(&mut self, id: u64) {
        if let Some(r) = self.regs.remove(&id) {
            self.index.unwatch(id, &r);
        }
        self.index.finished.remove(&id);
    }

    pub(super) fn finish(&mut self, id: u64, done: impl FnOnce(&Registration) -> Done) {
        finish_in(&mut self.regs, &mut self.index, id, done);
    }

    /// Takes the registrations to ask about (marking each in flight): those an
    /// apply woke, and those whose alarm is due. Returns both batches and when
    /// the next alarm is.
    pub(super) fn take_batch(&mut self, now: Instant) -> (Batch, Batch, Option<Instant>) {
        let Table { regs, index } = self;
        while let Some(&(at, id)) = index.alarms.first() {
            if at > now {
                break;
            }
            index.alarms.pop_first();
            if let Some(r) = regs.get_mut(&id) {
                r.alarm = None;
                if r.state == State::Sleeping {
                    r.state = State::Queued;
                    index.alarmed.push(id);
                }
            }
        }
        let woken = take_queued(regs, &mut index.due);
        let alarmed = take_queued(regs, &mut index.alarmed);
        let next = if index.due.is_empty() && index.alarmed.is_empty() {
            index.alarms.first().map(|(at, _)| *at)
        } else {
            Some(now) // more to take: look again at once
        };
        (woken, alarmed, next)
    }
}

/// Ends a registration: removes it, keeps its outcome for its wait and wakes it.
pub(super) fn finish_in(
    regs: &mut HashMap<u64, Box<Registration>>,
    index: &mut Index,
    id: u64,
    done: impl FnOnce(&Registration) -> Done,
) {
    if let Some(r) = regs.remove(&id) {
        index.unwatch(id, &r);
        index.finished.insert(id, done(&r));
        if let Some(w) = r.waker {
            w.wake();
        }
    }
}

/// Registrations to ask about.
pub(super) type Batch = Vec<u64>;

/// The most registrations one round asks about: a larger batch is served in
/// several rounds, so that no round holds the table (or a worker) for long.
pub(super) const MAX_BATCH: usize = 512;

/// Takes up to a round's worth of `list`, keeping the registrations still
/// queued and marking each in flight.
fn take_queued(regs: &mut HashMap<u64, Box<Registration>>, list: &mut Vec<u64>) -> Batch {
    let n = list.len().min(MAX_BATCH);
    list.drain(..n)
        .filter(|id| match regs.get_mut(id) {
            Some(r) if r.state == State::Queued => {
                r.state = State::InFlight { again: false };
                true
            }
            _ => false,
        })
        .collect()
}

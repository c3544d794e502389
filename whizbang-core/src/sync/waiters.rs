//! The waiters a tracker serves: each wait is a registration in the tracker's
//! table (perspective, awaited ids with their streams once located,
//! active-time deadline, re-ask backoff, the task's waker) and a small future
//! that polls for its outcome. One service task per runtime runs
//! the inquiries: on an apply report for (perspective, stream), and when a
//! registration's re-ask is due, it asks the backend ONE batched inquiry per
//! round (one [`SyncInquiry`] per perspective, the union of the due
//! registrations' ids), distributes the answers, decides each outcome and
//! notifies. The wait future only registers and awaits its outcome, so it
//! stays small, and 10,000 sleeping waiters cost 10,000 table entries, not
//! 10,000 inquiries per backoff step.

use super::clock::{ActiveTimer, SLICE};
use super::filter::PerspectiveSyncOptions;
use super::inquiry::{EventSyncStatus, SyncInquiry};
use super::table::{finish_in, Batch, Done, Registration, State, Table};
use super::tracker::SyncEventTracker;
use super::{SyncOutcome, SyncRuntime};
use crate::error::{Error, Stored};
use crate::message::{EventId, StreamId};
use crate::perspective::PerspectiveRegistration;
use crate::store::BoxFuture;
use crate::util::{lock, Few};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// A wait's registration in its tracker's table: removed when the wait ends
/// or is dropped. Its outcome is polled by [`Waiting`].
pub(crate) struct Registered {
    tracker: Arc<SyncEventTracker>,
    id: u64,
}

impl Registered {
    /// Asks about this registration alone, on the caller's task (a wait whose
    /// events are applied already ends without a hop through the service).
    /// An apply meanwhile queues it for the service's next round.
    pub(crate) async fn first_round(&self, runtime: &Arc<SyncRuntime>) {
        round(
            Arc::clone(&self.tracker),
            Arc::clone(runtime),
            vec![self.id],
        )
        .await;
    }

    /// Polls for the outcome: ready once a round decided it. Woken while due
    /// (an apply on a watched stream), this task serves the round itself into
    /// `serving`: one batched inquiry for every registration then due (its own
    /// among them), no hop through the service.
    fn poll_outcome(
        &self,
        serving: &mut Option<BoxFuture<'static, ()>>,
        cx: &mut Context<'_>,
    ) -> Poll<Done> {
        loop {
            if let Some(round) = serving {
                if round.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *serving = None;
            }
            let runtime = self.tracker.runtime.get().and_then(Weak::upgrade);
            let batch = {
                let mut t = lock(&self.tracker.waiters);
                if let Some(done) = t.index.finished.remove(&self.id) {
                    return Poll::Ready(done);
                }
                let Some(r) = t.regs.get_mut(&self.id) else {
                    return Poll::Ready(Err(Error::Invariant(format!(
                        "sync wait {} has neither a registration nor an outcome",
                        self.id
                    ))));
                };
                match &mut r.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                match runtime {
                    Some(_) => t.take_woken(),
                    None => Vec::new(),
                }
            };
            match runtime {
                Some(runtime) if !batch.is_empty() => {
                    *serving = Some(Box::pin(round(Arc::clone(&self.tracker), runtime, batch)));
                }
                _ => return Poll::Pending,
            }
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.tracker.waiters).remove(self.id);
    }
}

/// A registered wait, asleep until its outcome is decided: the registration,
/// the round this task serves when woken, and what to report besides the
/// outcome. Small: thousands may sleep at once.
pub(crate) struct Waiting<M> {
    registered: Registered,
    serving: Option<BoxFuture<'static, ()>>,
    meta: M,
}

impl<M> Waiting<M> {
    pub(crate) fn new(registered: Registered, meta: M) -> Self {
        Waiting {
            registered,
            serving: None,
            meta,
        }
    }

    /// Polls for the outcome, with what was kept to report it.
    pub(crate) fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<(Done, &M)> {
        match self.registered.poll_outcome(&mut self.serving, cx) {
            Poll::Ready(done) => Poll::Ready((done, &self.meta)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl SyncEventTracker {
    /// Registers a wait for `targets` (ids, with their streams when known), in
    /// flight: its first round is the caller's ([`Registered::first_round`]).
    /// The timeout counts on `timer` from where it is.
    pub(crate) fn register_wait(
        self: &Arc<Self>,
        runtime: &Arc<SyncRuntime>,
        perspective: &'static PerspectiveRegistration,
        targets: Vec<(EventId, Option<StreamId>)>,
        timer: ActiveTimer,
        timeout: Duration,
        trigger: bool,
    ) -> Registered {
        let _ = self.runtime.set(Arc::downgrade(runtime));
        let id = self.next_id();
        let mut r = Box::new(Registration {
            perspective,
            ids: Few::Empty,
            confirmed: 0,
            decided: false,
            late_applied: Few::Empty,
            streams: Few::Empty,
            any: false,
            timer,
            timeout,
            planned: Duration::ZERO,
            alarm: None,
            signalled: Few::Empty,
            trigger,
            awaited: targets.len(),
            state: State::InFlight { again: false },
            waker: None,
        });
        {
            let mut t = lock(&self.waiters);
            let index = &mut t.index;
            for (event, stream) in targets {
                r.ids.push(event);
                match stream {
                    Some(s) => index.watch_stream(id, &mut r, s),
                    None => index.watch_any(id, &mut r),
                };
            }
            t.regs.insert(id, r);
        }
        Registered {
            tracker: Arc::clone(self),
            id,
        }
    }

    /// Serves the waiters while the tracker lives (it holds only a weak reference).
    pub(crate) fn spawn_timer(self: &Arc<Self>, handle: &tokio::runtime::Handle) {
        let weak = Arc::downgrade(self);
        let rearm = Arc::clone(&self.rearm);
        handle.spawn(async move {
            loop {
                let next = {
                    let Some(tracker) = weak.upgrade() else {
                        return;
                    };
                    let (woken, alarmed, next) = lock(&tracker.waiters).take_batch(Instant::now());
                    let runtime = tracker.runtime.get().and_then(Weak::upgrade);
                    match runtime {
                        Some(runtime) if !woken.is_empty() || !alarmed.is_empty() => {
                            // Woken ones first: an apply's answer is urgent, a
                            // re-ask on a backoff is not. Each round runs here;
                            // one the backend is slow to answer continues on its
                            // own task, so the other waiters are still served.
                            for batch in [woken, alarmed] {
                                if batch.is_empty() {
                                    continue;
                                }
                                let mut round = Box::pin(round(
                                    Arc::clone(&tracker),
                                    Arc::clone(&runtime),
                                    batch,
                                ));
                                if tokio::time::timeout(FIRST_SLICE, round.as_mut())
                                    .await
                                    .is_err()
                                {
                                    tokio::spawn(round);
                                }
                            }
                            // Let the waiters just woken run: this worker's queue
                            // holds them, and a busy service would starve them.
                            tokio::task::yield_now().await;
                            continue;
                        }
                        _ => next,
                    }
                };
                // Look again at least every second, so the task ends soon after
                // the runtime is dropped.
                let limit = Instant::now() + Duration::from_secs(1);
                let until = next.map_or(limit, |n| n.min(limit));
                tokio::select! {
                    () = rearm.notified() => {}
                    () = tokio::time::sleep_until(until) => {}
                }
            }
        });
    }
}

/// How long the service runs a round itself before moving it to its own task.
const FIRST_SLICE: Duration = Duration::from_millis(5);

/// What the ids of one perspective's inquiry are, per registration of the batch.
struct Ask {
    inquiries: Vec<SyncInquiry>,
    /// The batch's registrations, each with the index of its inquiry.
    members: Vec<(u64, usize)>,
    /// Per inquiry: asked for one registration alone (its ids, in its order).
    single: Vec<bool>,
}

fn ask(table: &mut Table, batch: &[u64]) -> Ask {
    let mut inquiries: Vec<SyncInquiry> = Vec::new();
    // Per inquiry: its ids as a set, built once a second registration joins.
    let mut seen: Vec<Option<HashSet<EventId>>> = Vec::new();
    let mut single: Vec<bool> = Vec::new();
    let mut members = Vec::with_capacity(batch.len());
    for id in batch {
        let Some(r) = table.regs.get_mut(id) else {
            continue;
        };
        r.timer.observe(r.planned);
        r.planned = Duration::ZERO;
        let i = match inquiries
            .iter()
            .position(|q| q.perspective == r.perspective.name)
        {
            Some(i) => i,
            None => {
                inquiries.push(SyncInquiry {
                    perspective: r.perspective.name,
                    handled: r.perspective.event_types,
                    event_ids: r.ids.to_vec(),
                    keyed: r.perspective.is_keyed(),
                });
                seen.push(None);
                single.push(true);
                members.push((*id, inquiries.len() - 1));
                continue;
            }
        };
        single[i] = false;
        let ids = &mut inquiries[i].event_ids;
        let set = seen[i].get_or_insert_with(|| ids.iter().copied().collect());
        for e in &r.ids {
            if set.insert(*e) {
                ids.push(*e);
            }
        }
        members.push((*id, i));
    }
    Ask {
        inquiries,
        members,
        single,
    }
}

/// One round: one batched inquiry for `batch`, bounded by the batch's
/// timeouts (each registration times out on its own budget), then the answers
/// distributed and each registration decided.
async fn round(tracker: Arc<SyncEventTracker>, runtime: Arc<SyncRuntime>, batch: Batch) {
    let Ask {
        inquiries,
        members,
        single,
    } = ask(&mut lock(&tracker.waiters), &batch);
    if members.is_empty() {
        return;
    }
    let mut guard = Unfinished {
        tracker: &tracker,
        members: &members,
        done: false,
    };
    let budget = |r: &Registration| r.timeout.saturating_add(PerspectiveSyncOptions::SLACK);
    let mut inquiry = std::pin::pin!(runtime.backend.inquire(&inquiries));
    let answer = loop {
        let slice = {
            let t = lock(&tracker.waiters);
            let left = members
                .iter()
                .filter_map(|(id, _)| t.regs.get(id))
                .map(|r| budget(r).saturating_sub(r.timer.active()))
                .min();
            match left {
                Some(left) => left.min(SLICE),
                None => return, // every member is gone: drop the inquiry
            }
        };
        let result = tokio::time::timeout(slice, inquiry.as_mut()).await;
        let mut t = lock(&tracker.waiters);
        for (id, _) in &members {
            let over = match t.regs.get_mut(id) {
                Some(r) => {
                    r.timer.observe(slice);
                    result.is_err() && r.timer.active() >= budget(r)
                }
                None => false,
            };
            if over {
                tracing::debug!("sync wait timed out while the backend was answering");
                t.finish(*id, |r| {
                    Ok((SyncOutcome::TimedOut, r.awaited, r.timer.active()))
                });
            }
        }
        if let Ok(answer) = result {
            break answer;
        }
    };
    let mut signals: Vec<Signal> = Vec::new();
    let mut look = false;
    {
        let mut t = lock(&tracker.waiters);
        match answer {
            Err(e) if members.len() == 1 => t.finish(members[0].0, |_| Err(e)),
            Err(e) => {
                let shared = SharedError(Arc::new(e));
                for (id, _) in &members {
                    t.finish(*id, |_| Err(shared.to_error()));
                }
            }
            Ok(answers) => {
                let by_id: Vec<Option<Statuses<'_>>> = (0..inquiries.len())
                    .map(|i| {
                        answers.get(i).map(|a| {
                            if single[i] && a.statuses.len() == inquiries[i].event_ids.len() {
                                Statuses::InOrder(&a.statuses)
                            } else {
                                Statuses::ById(a.by_id())
                            }
                        })
                    })
                    .collect();
                for (id, i) in &members {
                    match &by_id[*i] {
                        None => t.finish(*id, |_| {
                            Err(Error::Invariant(
                                "the sync backend answered no inquiry".into(),
                            ))
                        }),
                        Some(statuses) => {
                            look |= decide(&mut t, *id, statuses, &mut signals);
                        }
                    }
                }
            }
        }
    }
    guard.done = true;
    if look {
        tracker.rearm.notify_one();
    }
    for (reg, stream, now) in signals {
        if now {
            runtime.runner.run_now(reg, stream);
        } else {
            runtime.runner.signal(reg, stream);
        }
    }
}

/// A runner signal a round sends once decided: (perspective, stream, run
/// now whatever the strategy says: a triggering wait's).
type Signal = (&'static PerspectiveRegistration, StreamId, bool);

/// Puts the members of a round dropped half-way (its task cancelled) back in
/// the due list, so that they are asked again.
struct Unfinished<'a> {
    tracker: &'a SyncEventTracker,
    members: &'a [(u64, usize)],
    done: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut t = lock(&self.tracker.waiters);
        let Table { regs, index } = &mut *t;
        for (id, _) in self.members {
            if let Some(r) = regs.get_mut(id) {
                if matches!(r.state, State::InFlight { .. }) {
                    r.state = State::Queued;
                    index.due.push(*id);
                    r.wake();
                }
            }
        }
        drop(t);
        self.tracker.rearm.notify_one();
    }
}

/// Decides one registration from the statuses of its ids. Returns whether the
/// service must look again (it is queued for the next round, or its alarm is
/// now the earliest).
/// A batched answer, as one registration reads it.
enum Statuses<'a> {
    /// The answer to its ids alone, in its order.
    InOrder(&'a [(EventId, EventSyncStatus)]),
    /// The answer to several registrations' ids.
    ById(HashMap<EventId, &'a EventSyncStatus>),
}

impl Statuses<'_> {
    /// The status of the `i`-th id, `id` (an id the backend left out has not arrived).
    fn get(&self, i: usize, id: EventId) -> &EventSyncStatus {
        let found = match self {
            Statuses::InOrder(s) => s.get(i).filter(|(x, _)| *x == id).map(|(_, s)| s),
            Statuses::ById(m) => m.get(&id).copied(),
        };
        found.unwrap_or(&EventSyncStatus::NotArrived)
    }
}

fn decide(t: &mut Table, id: u64, statuses: &Statuses<'_>, signals: &mut Vec<Signal>) -> bool {
    let Table { regs, index } = t;
    let Some(r) = regs.get_mut(&id) else {
        return false;
    };
    let is_async = r.perspective.mode == crate::perspective::PerspectiveMode::Async;
    let mut learned = false;
    let mut failure: Option<SyncOutcome> = None;
    let mut still: Vec<EventId> = Vec::new();
    let late = std::mem::take(&mut r.late_applied);
    for i in 0..r.ids.len() {
        let mut status = statuses.get(i, r.ids[i]);
        // Applied after the backend answered: the commit's report says so.
        if *status != EventSyncStatus::NotApplicable && late.contains(&r.ids[i]) {
            status = &EventSyncStatus::Applied;
        }
        match status {
            EventSyncStatus::Pending { stream, .. } => {
                // The runner learns of stored work from the wait, not only from
                // a flush: an event appended by a scope still open, or by
                // another process, is applied all the same.
                if is_async && r.trigger {
                    // Every round: the runner queues one run at a time.
                    signals.push((r.perspective, *stream, true));
                } else if is_async && !r.signalled.contains(stream) {
                    r.signalled.push(*stream);
                    signals.push((r.perspective, *stream, false));
                }
                learned |= index.watch_stream(id, r, *stream);
            }
            EventSyncStatus::Failed {
                stream,
                version,
                message,
            } => {
                learned |= index.watch_stream(id, r, *stream);
                if failure.is_none() {
                    failure = Some(SyncOutcome::Failed {
                        stream: *stream,
                        version: *version,
                        message: message.clone(),
                    });
                }
            }
            EventSyncStatus::NotArrived => learned |= index.watch_any(id, r),
            EventSyncStatus::Applied => r.confirmed += 1,
            EventSyncStatus::NotApplicable => {}
        }
        if !matches!(
            status,
            EventSyncStatus::Applied | EventSyncStatus::NotApplicable
        ) {
            still.push(r.ids[i]);
        }
    }
    // From now on only what is still to apply is asked about (and an apply
    // report naming all of it ends the wait at once).
    r.ids = Few::from(still);
    r.decided = true;
    let pending = r.ids.len();
    let awaited = r.confirmed + pending;
    r.awaited = awaited;
    let outcome = if let Some(failed) = failure {
        Some(failed)
    } else if pending == 0 {
        Some(if awaited == 0 {
            SyncOutcome::NoPendingEvents
        } else {
            SyncOutcome::Synced
        })
    } else {
        None
    };
    let again = matches!(r.state, State::InFlight { again: true });
    match outcome {
        Some(outcome) => {
            finish_in(regs, index, id, |r| {
                Ok((outcome, r.awaited, r.timer.active()))
            });
            false
        }
        // Newly registered on a stream, or woken meanwhile: ask before sleeping.
        None if learned || again => {
            r.state = State::Queued;
            index.due.push(id);
            r.wake();
            true
        }
        None if r.timer.active() >= r.timeout => {
            tracing::debug!(perspective = r.perspective.name, "sync wait timed out");
            finish_in(regs, index, id, |r| {
                Ok((SyncOutcome::TimedOut, r.awaited, r.timer.active()))
            });
            false
        }
        None => {
            // Asleep until an apply on a watched stream, or the backoff ends:
            // then ask again (an apply no wake-up reached, e.g. by another
            // process, is seen within the backoff).
            let sleep = r.timer.next_sleep(r.timeout);
            let key = (Instant::now() + sleep, id);
            // The earliest alarm: the service must look at its time.
            let earliest = index.alarms.first().is_none_or(|first| key < *first);
            index.alarms.insert(key);
            r.alarm = Some(key);
            r.planned = sleep;
            r.state = State::Sleeping;
            earliest
        }
    }
}

/// A backend error shared by every registration of a round.
#[derive(Debug, Clone)]
struct SharedError(Arc<Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl SharedError {
    /// A backend error around it, for one of the waits.
    fn to_error(&self) -> Error {
        Error::backend(
            "sync",
            "answer a batched sync inquiry",
            Stored::Nothing,
            self.clone(),
        )
    }
}

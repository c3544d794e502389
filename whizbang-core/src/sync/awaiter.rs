//! The awaiter: turns a filter into the exact event ids to wait for, asks the
//! backend in one batched inquiry, and sleeps on targeted wake-ups (or a
//! bounded backoff) until every id is applied, the perspective fails, or the
//! (debugger-aware) timeout passes. The timeout bounds every await inside.

use super::clock::{ActiveTimer, SLICE};
use super::filter::{Candidate, PerspectiveSyncOptions, SyncFilter};
use super::inquiry::{EventSyncStatus, SyncInquiry};
use super::SyncState;
use crate::dispatch::{EmittedEvent, Runtime, ScopeShared};
use crate::error::{Error, Result};
use crate::message::{EventId, StreamId};
use crate::perspective::Perspective;
use crate::registry::PerspectiveRegistration;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tracing::Instrument;

/// How a wait ended.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub fn into_result(self, timeout: Duration) -> Result<()> {
        match self.outcome {
            SyncOutcome::Synced | SyncOutcome::NoPendingEvents => Ok(()),
            SyncOutcome::TimedOut => Err(Error::PerspectiveSyncTimeout {
                perspective: self.perspective,
                timeout,
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

/// Waits until perspectives have applied the events you care about.
///
/// Get one from [`Scope::sync_awaiter`](crate::Scope::sync_awaiter) (filters may
/// then use [`SyncFilter::current_scope`]) or [`Runtime::sync_awaiter`].
#[derive(Clone)]
pub struct PerspectiveSyncAwaiter {
    runtime: Runtime,
    scope: Option<Arc<ScopeShared>>,
}

impl std::fmt::Debug for PerspectiveSyncAwaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerspectiveSyncAwaiter")
            .field("scoped", &self.scope.is_some())
            .finish_non_exhaustive()
    }
}

/// An id to await, with its stream when already known.
type Target = (EventId, Option<StreamId>);

impl PerspectiveSyncAwaiter {
    pub(crate) fn new(runtime: Runtime, scope: Option<Arc<ScopeShared>>) -> Self {
        PerspectiveSyncAwaiter { runtime, scope }
    }

    fn state(&self) -> &SyncState {
        &self.runtime.inner.sync
    }

    /// Waits until `P` has applied every event the filter selects.
    ///
    /// With a scope, the scope's queued events are flushed first (inline
    /// perspectives apply, async ones are signalled) so a wait on your own
    /// writes can succeed before `complete()`.
    ///
    /// The timeout bounds everything the wait does, the flush and every backend
    /// call included: it returns within the timeout plus
    /// [`PerspectiveSyncOptions::SLACK`] of active time, whatever the backend
    /// does. Besides targeted wake-ups, it asks the backend again on a backoff
    /// (5 ms doubling to 1 s by default, see
    /// [`PerspectiveSyncOptions::reask_backoff`]), so an apply made elsewhere (another runtime or
    /// process over the same stores) is seen within about a second. Events it
    /// finds stored but not applied by an async perspective are signalled to
    /// this runtime's runner (a paused runner applies nothing).
    ///
    /// # Errors
    /// [`Error::UnknownPerspective`], [`Error::InvalidInput`] for a filter that
    /// needs a scope on an awaiter without one, or a backend error. Timeouts and
    /// failures are outcomes, not errors.
    pub async fn wait<P: Perspective>(
        &self,
        options: impl Into<PerspectiveSyncOptions>,
    ) -> Result<SyncResult> {
        let reg = self.runtime.registry().perspective::<P>()?;
        self.wait_on(reg, &options.into()).await
    }

    /// Waits on several perspectives at once; every one must sync.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub async fn wait_all(
        &self,
        perspectives: &[&'static PerspectiveRegistration],
        options: impl Into<PerspectiveSyncOptions>,
    ) -> Result<Vec<SyncResult>> {
        let options = options.into();
        let waits: Vec<Pin<Box<dyn Future<Output = Result<SyncResult>> + Send + '_>>> =
            perspectives
                .iter()
                .map(|reg| {
                    Box::pin(self.wait_on(reg, &options))
                        as Pin<Box<dyn Future<Output = _> + Send + '_>>
                })
                .collect();
        join_all(waits).await.into_iter().collect()
    }

    /// Waits until `P` has applied the events of `stream` (of `event_types`, or
    /// every type it handles when empty) appended so far, or exactly
    /// `event_id_to_await` when given: an id never seen is waited for until it
    /// arrives and is applied, or the timeout passes; it is never reported synced.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub async fn wait_for_stream<P: Perspective>(
        &self,
        stream: StreamId,
        event_types: &[&'static str],
        event_id_to_await: Option<EventId>,
        timeout: Duration,
    ) -> Result<SyncResult> {
        let reg = self.runtime.registry().perspective::<P>()?;
        let options = PerspectiveSyncOptions::new(SyncFilter::for_stream(stream)).timeout(timeout);
        let mut timer = self.timer(&options);
        let emitted = self.emitted_len();
        let timed_out =
            |timer: &ActiveTimer, awaited| Ok(timed_out_result(reg, awaited, timer, emitted, 0));
        match bounded(&mut timer, options.timeout, self.flush_scope()).await {
            Some(flushed) => flushed?,
            None => return timed_out(&timer, usize::from(event_id_to_await.is_some())),
        }
        if let Some(id) = event_id_to_await {
            return self
                .await_targets_timed(reg, vec![(id, None)], &options, timer, emitted, 0)
                .await;
        }
        let mut targets: Vec<Target> = Vec::new();
        let events = match bounded(&mut timer, options.timeout, self.unapplied(reg, stream)).await {
            Some(events) => events?,
            None => return timed_out(&timer, 0),
        };
        let tracked = events.len();
        for ev in events {
            let wanted = if event_types.is_empty() {
                reg.handles(&ev.event_type)
            } else {
                event_types.iter().any(|t| *t == ev.event_type) && reg.handles(&ev.event_type)
            };
            if wanted {
                targets.push((ev.event_id, Some(ev.stream_id)));
            }
        }
        self.await_targets_timed(reg, targets, &options, timer, emitted, tracked)
            .await
    }

    /// Asks once, without waiting, whether `P` has applied what the filter selects.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub async fn is_caught_up<P: Perspective>(
        &self,
        options: impl Into<PerspectiveSyncOptions>,
    ) -> Result<bool> {
        let options = options.into().timeout(Duration::ZERO);
        let result = self.wait::<P>(options).await?;
        Ok(result.is_synced())
    }

    fn emitted_len(&self) -> usize {
        self.scope.as_ref().map_or(0, |s| s.emitted_len())
    }

    async fn flush_scope(&self) -> Result<()> {
        match &self.scope {
            Some(s) => s.flush_queued().await,
            None => Ok(()),
        }
    }

    pub(crate) async fn wait_on(
        &self,
        reg: &'static PerspectiveRegistration,
        options: &PerspectiveSyncOptions,
    ) -> Result<SyncResult> {
        if options.filter.needs_scope() && self.scope.is_none() {
            return Err(Error::InvalidInput(format!(
                "the sync filter for perspective `{}` uses current_scope(), but this awaiter has no \
                 scope: get the awaiter from `scope.sync_awaiter()`, or filter with for_stream(..) \
                 or all() instead",
                reg.name
            )));
        }
        let mut timer = self.timer(options);
        let timed_out =
            |timer: &ActiveTimer| Ok(timed_out_result(reg, 0, timer, self.emitted_len(), 0));
        match bounded(&mut timer, options.timeout, self.flush_scope()).await {
            Some(flushed) => flushed?,
            None => return timed_out(&timer),
        }
        let from_store = match bounded(
            &mut timer,
            options.timeout,
            self.stream_candidates(reg, &options.filter),
        )
        .await
        {
            Some(candidates) => candidates?,
            None => return timed_out(&timer),
        };
        let (targets, emitted, tracked) = self.resolve(reg, &options.filter, from_store);
        self.await_targets_timed(reg, targets, options, timer, emitted, tracked)
            .await
    }

    /// A timer for one wait, on the options' clock (the runtime's by default).
    fn timer(&self, options: &PerspectiveSyncOptions) -> ActiveTimer {
        let clock = options
            .clock
            .clone()
            .unwrap_or_else(|| Arc::clone(&self.state().clock));
        let (first, max) = options.reask;
        ActiveTimer::with_backoff(clock, options.debugger_aware, first, max)
    }

    /// The events of `stream` after `reg`'s cursor: stored, not yet applied.
    async fn unapplied(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
    ) -> Result<Vec<Arc<crate::store::StoredEvent>>> {
        let store = self.runtime.inner.services.perspective_store();
        let cursor = store.checkpoint(reg.name, stream).await?;
        self.runtime
            .event_store()
            .read_stream(stream, cursor.version)
            .await
    }

    /// The unapplied events of every stream the filter names, read from the
    /// store (so a `for_stream` wait is exact even for events this process never
    /// tracked, or whose tracker entries expired).
    async fn stream_candidates(
        &self,
        reg: &'static PerspectiveRegistration,
        filter: &SyncFilter,
    ) -> Result<Vec<Candidate>> {
        let mut streams = Vec::new();
        filter.streams(&mut streams);
        let mut out = Vec::new();
        for stream in streams {
            out.extend(
                self.unapplied(reg, stream)
                    .await?
                    .into_iter()
                    .map(|ev| Candidate {
                        event_id: ev.event_id,
                        stream_id: ev.stream_id,
                        event_type: ev.event_type.clone(),
                        in_scope: false,
                    }),
            );
        }
        Ok(out)
    }

    /// Turns the filter into the ids to await: the scope's events, the process
    /// tracker's unapplied ones and `from_store`, filtered, limited to the event
    /// types the perspective handles. Returns (targets, emitted, tracked).
    fn resolve(
        &self,
        reg: &'static PerspectiveRegistration,
        filter: &SyncFilter,
        from_store: Vec<Candidate>,
    ) -> (Vec<Target>, usize, usize) {
        let emitted: Vec<EmittedEvent> = self
            .scope
            .as_ref()
            .map(|s| s.emitted_snapshot())
            .unwrap_or_default();
        let mut seen: HashSet<EventId> = HashSet::with_capacity(emitted.len());
        let mut candidates: Vec<Candidate> = Vec::with_capacity(emitted.len() + from_store.len());
        for e in &emitted {
            seen.insert(e.event_id);
            candidates.push(Candidate {
                event_id: e.event_id,
                stream_id: e.stream_id,
                event_type: e.event_type.clone(),
                in_scope: true,
            });
        }
        let tracked = if matches!(filter, SyncFilter::CurrentScope) {
            Vec::new()
        } else {
            self.state().tracker.pending_for(reg.name)
        };
        for c in tracked.into_iter().chain(from_store) {
            if seen.insert(c.event_id) {
                candidates.push(c);
            }
        }
        let considered = candidates.len();
        let targets = candidates
            .into_iter()
            .filter(|c| reg.handles(&c.event_type) && filter.matches(c))
            .map(|c| (c.event_id, Some(c.stream_id)))
            .collect();
        (targets, emitted.len(), considered)
    }

    /// Waits for exactly `targets`, the timeout starting now.
    pub(crate) fn await_targets<'a>(
        &'a self,
        reg: &'static PerspectiveRegistration,
        targets: Vec<Target>,
        options: &'a PerspectiveSyncOptions,
        events_emitted: usize,
        events_tracked: usize,
    ) -> impl Future<Output = Result<SyncResult>> + Send + 'a {
        let timer = self.timer(options);
        self.await_targets_timed(reg, targets, options, timer, events_emitted, events_tracked)
    }

    /// Waits for exactly `targets` with what `timer` has left of the timeout.
    fn await_targets_timed<'a>(
        &'a self,
        reg: &'static PerspectiveRegistration,
        targets: Vec<Target>,
        options: &'a PerspectiveSyncOptions,
        timer: ActiveTimer,
        events_emitted: usize,
        events_tracked: usize,
    ) -> impl Future<Output = Result<SyncResult>> + Send + 'a {
        let span = tracing::debug_span!(
            "whizbang.sync.wait",
            perspective = reg.name,
            events = targets.len(),
            timeout_ms = u64::try_from(options.timeout.as_millis()).unwrap_or(u64::MAX),
        );
        let done = move |outcome, events_awaited, elapsed| SyncResult {
            outcome,
            events_awaited,
            elapsed,
            events_emitted,
            events_tracked,
            perspective: reg.name,
        };
        self.wait_loop(reg, targets, options, timer, done)
            .instrument(span)
    }

    /// The wait itself. Kept lean: thousands of these may sleep at once, so only
    /// what the sleep needs lives across it.
    async fn wait_loop(
        &self,
        reg: &'static PerspectiveRegistration,
        targets: Vec<Target>,
        options: &PerspectiveSyncOptions,
        mut timer: ActiveTimer,
        done: impl Fn(SyncOutcome, usize, Duration) -> SyncResult,
    ) -> Result<SyncResult> {
        if targets.is_empty() {
            return Ok(done(SyncOutcome::NoPendingEvents, 0, timer.active()));
        }
        let state = self.state();
        // Register before the first inquiry: an apply that lands between the
        // inquiry and the sleep leaves a permit in `notify`, never a lost wake-up.
        let mut waiter = state.tracker.register(reg.name);
        for (_, stream) in &targets {
            match stream {
                Some(s) => waiter.watch_stream(*s),
                None => waiter.watch_any(),
            };
        }
        let inquiry = [SyncInquiry {
            perspective: reg.name,
            handled: reg.event_types,
            event_ids: targets.into_iter().map(|(id, _)| id).collect(),
        }];
        let mut awaited = inquiry[0].event_ids.len();
        // Streams whose runner this wait has signalled (async perspectives only).
        let mut signalled: Vec<StreamId> = Vec::new();
        let is_async = reg.mode == crate::PerspectiveMode::Async;
        loop {
            // Decide in a block so the answer is dropped before the sleep.
            let step = {
                let Some(answer) =
                    bounded(&mut timer, options.timeout, state.backend.inquire(&inquiry)).await
                else {
                    tracing::debug!("sync wait timed out while the backend was answering");
                    return Ok(done(SyncOutcome::TimedOut, awaited, timer.active()));
                };
                let answer = answer?;
                let Some(answer) = answer.into_iter().next() else {
                    return Err(Error::InvalidInput(
                        "the sync backend answered no inquiry".into(),
                    ));
                };
                let mut learned = false;
                for (_, status) in &answer.statuses {
                    // The runner learns of stored work from the wait, not only
                    // from a flush: an event appended by a scope still open, or
                    // by another process, is applied all the same.
                    if let EventSyncStatus::Pending { stream, .. } = status {
                        if is_async && !signalled.contains(stream) {
                            signalled.push(*stream);
                            self.runtime.inner.runner.signal(reg, *stream);
                        }
                    }
                    learned |= match status {
                        EventSyncStatus::Pending { stream, .. }
                        | EventSyncStatus::Failed { stream, .. } => waiter.watch_stream(*stream),
                        EventSyncStatus::NotArrived => waiter.watch_any(),
                        EventSyncStatus::Applied | EventSyncStatus::NotApplicable => false,
                    };
                }
                awaited = answer
                    .statuses
                    .iter()
                    .filter(|(_, s)| *s != EventSyncStatus::NotApplicable)
                    .count();
                if let Some(EventSyncStatus::Failed {
                    stream,
                    version,
                    message,
                }) = answer.failure()
                {
                    Step::Done(SyncOutcome::Failed {
                        stream: *stream,
                        version: *version,
                        message: message.clone(),
                    })
                } else if answer.is_fully_synced() {
                    Step::Done(if awaited == 0 {
                        SyncOutcome::NoPendingEvents
                    } else {
                        SyncOutcome::Synced
                    })
                } else if learned {
                    Step::AskAgain // now registered on a new stream: ask before sleeping
                } else {
                    Step::Sleep
                }
            };
            match step {
                Step::Done(outcome) => return Ok(done(outcome, awaited, timer.active())),
                Step::AskAgain => continue,
                Step::Sleep if timer.active() >= options.timeout => {
                    tracing::debug!("sync wait timed out");
                    return Ok(done(SyncOutcome::TimedOut, awaited, timer.active()));
                }
                Step::Sleep => {}
            }
            let sleep = timer.next_sleep(options.timeout);
            // Woken by an apply on a watched stream, or by the tracker's shared
            // timer when the backoff ends; either way, ask again (an apply no
            // wake-up reached, e.g. by another process, is seen within the backoff).
            waiter.alarm(tokio::time::Instant::now() + sleep);
            waiter.notify.notified().await;
            waiter.disarm();
            timer.observe(sleep);
        }
    }
}

/// Runs `work` within what `timer` has left of `timeout` plus
/// [`PerspectiveSyncOptions::SLACK`], in slices so that a freeze is told from
/// active time. `None` when the budget ran out first (the work is dropped).
async fn bounded<F: Future>(
    timer: &mut ActiveTimer,
    timeout: Duration,
    work: F,
) -> Option<F::Output> {
    let budget = timeout.saturating_add(PerspectiveSyncOptions::SLACK);
    let mut work = std::pin::pin!(work);
    loop {
        let slice = budget.saturating_sub(timer.active()).min(SLICE);
        let result = tokio::time::timeout(slice, work.as_mut()).await;
        timer.observe(slice);
        match result {
            Ok(out) => return Some(out),
            Err(_) if timer.active() >= budget => return None,
            Err(_) => {}
        }
    }
}

/// A wait that ran out of time before it could ask the backend.
fn timed_out_result(
    reg: &'static PerspectiveRegistration,
    events_awaited: usize,
    timer: &ActiveTimer,
    events_emitted: usize,
    events_tracked: usize,
) -> SyncResult {
    tracing::debug!(
        perspective = reg.name,
        "sync wait timed out before its inquiry"
    );
    SyncResult {
        outcome: SyncOutcome::TimedOut,
        events_awaited,
        elapsed: timer.active(),
        events_emitted,
        events_tracked,
        perspective: reg.name,
    }
}

/// What one inquiry decided.
enum Step {
    Done(SyncOutcome),
    AskAgain,
    Sleep,
}

/// Polls every future to completion; results in input order.
async fn join_all<'a, T>(mut futures: Vec<Pin<Box<dyn Future<Output = T> + Send + 'a>>>) -> Vec<T> {
    let mut results: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futures.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => results[i] = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

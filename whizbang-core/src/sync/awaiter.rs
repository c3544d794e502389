//! The awaiter: turns a filter into the exact event ids to wait for, asks the
//! backend in one batched inquiry, and sleeps on targeted wake-ups (or a
//! bounded backoff) until every id is applied, the perspective fails, or the
//! (debugger-aware) timeout passes. The timeout bounds every await inside.

use super::clock::{ActiveTimer, SLICE};
use super::filter::{Candidate, PerspectiveSyncOptions, SyncFilter};
use super::inquiry::UnappliedQuery;
use super::outcome::{SyncOutcome, SyncResult};
use super::waiters::Waiting;
use super::{SyncRuntime, SyncScope};
use crate::error::{Error, Result};
use crate::message::{EventId, StreamId};
use crate::perspective::Perspective;
use crate::perspective::PerspectiveRegistration;
use crate::store::{BoxFuture, EventLocation};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tracing::Instrument;

/// Perspectives named by type, for [`PerspectiveSyncAwaiter::wait_all`]: one
/// perspective or a tuple of up to eight.
pub trait PerspectiveList {
    /// Their registrations, in the order named.
    ///
    /// # Errors
    /// [`Error::UnknownPerspective`] for a perspective the runtime does not know.
    fn registrations(
        registry: &crate::registry::Registry,
    ) -> Result<Vec<&'static PerspectiveRegistration>>;
}

impl<P: Perspective> PerspectiveList for P {
    fn registrations(
        registry: &crate::registry::Registry,
    ) -> Result<Vec<&'static PerspectiveRegistration>> {
        Ok(vec![registry.perspective::<P>()?])
    }
}

macro_rules! perspective_tuple {
    ($($t:ident),+) => {
        impl<$($t: Perspective),+> PerspectiveList for ($($t,)+) {
            fn registrations(
                registry: &crate::registry::Registry,
            ) -> Result<Vec<&'static PerspectiveRegistration>> {
                Ok(vec![$(registry.perspective::<$t>()?),+])
            }
        }
    };
}
perspective_tuple!(A);
perspective_tuple!(A, B);
perspective_tuple!(A, B, C);
perspective_tuple!(A, B, C, D);
perspective_tuple!(A, B, C, D, E);
perspective_tuple!(A, B, C, D, E, F);
perspective_tuple!(A, B, C, D, E, F, G);
perspective_tuple!(A, B, C, D, E, F, G, H);

/// Waits until perspectives have applied the events you care about.
///
/// Get one from [`Scope::sync_awaiter`](crate::Scope::sync_awaiter) (filters may
/// then use [`SyncFilter::current_scope`]) or [`Runtime::sync_awaiter`](crate::Runtime::sync_awaiter).
#[derive(Clone)]
pub struct PerspectiveSyncAwaiter {
    sync: Arc<SyncRuntime>,
    scope: Option<Arc<dyn SyncScope>>,
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
    pub(crate) fn new(sync: Arc<SyncRuntime>, scope: Option<Arc<dyn SyncScope>>) -> Self {
        PerspectiveSyncAwaiter { sync, scope }
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
    pub fn wait<P: Perspective>(
        &self,
        options: impl Into<PerspectiveSyncOptions>,
    ) -> impl Future<Output = Result<SyncResult>> + Send + '_ {
        // The preparation (flush, store reads, first inquiry) runs boxed with
        // the options it owns: only the registration's id and what the result
        // reports stay in this future while it sleeps (thousands may sleep at
        // once; 72 bytes on x86-64).
        let options = options.into();
        Wait::Starting(Box::pin(async move {
            let reg = self.sync.registry.perspective::<P>()?;
            self.start_on(reg, &options).await
        }))
    }

    /// Waits on several perspectives at once, named by type: one perspective
    /// or a tuple (`wait_all::<(Orders, Invoices)>(options)`). Every one must
    /// sync; the results are in the order named.
    ///
    /// ```
    /// # use whizbang_core::{perspective, Event, Runtime, SyncFilter};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Event, Serialize, Deserialize, Clone)] #[event(name = "doc_all.placed")]
    /// # struct Placed { #[stream_key] order: uuid::Uuid }
    /// # #[derive(Default, Clone, Serialize, Deserialize)] struct Count { n: u32 }
    /// # struct Orders;
    /// # #[perspective(model = Count, name = "doc_all.orders")]
    /// # impl Orders { fn placed(c: &mut Count, _: &Placed) { c.n += 1; } }
    /// # struct Totals;
    /// # #[perspective(model = Count, name = "doc_all.totals")]
    /// # impl Totals { fn placed(c: &mut Count, _: &Placed) { c.n += 1; } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
    /// let runtime = Runtime::in_memory()?;
    /// let scope = runtime.scope();
    /// scope.publish(Placed { order: uuid::Uuid::now_v7() }).await?;
    /// let results = scope
    ///     .sync_awaiter()
    ///     .wait_all::<(Orders, Totals)>(SyncFilter::current_scope())
    ///     .await?;
    /// assert!(results.iter().all(|r| r.is_synced()));
    /// # scope.complete().await?; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub async fn wait_all<L: PerspectiveList>(
        &self,
        options: impl Into<PerspectiveSyncOptions>,
    ) -> Result<Vec<SyncResult>> {
        let options = options.into();
        let perspectives = L::registrations(&self.sync.registry)?;
        let waits: Vec<Pin<Box<dyn Future<Output = Result<SyncResult>> + Send + '_>>> =
            perspectives
                .into_iter()
                .map(|reg| {
                    Box::pin(self.wait_on(reg, &options))
                        as Pin<Box<dyn Future<Output = _> + Send + '_>>
                })
                .collect();
        join_all(waits).await.into_iter().collect()
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
            Some(s) => Arc::clone(s).flush_queued().await,
            None => Ok(()),
        }
    }

    pub(crate) async fn wait_on(
        &self,
        reg: &'static PerspectiveRegistration,
        options: &PerspectiveSyncOptions,
    ) -> Result<SyncResult> {
        // The flush and the store reads run boxed: only the registration's id
        // and what the result reports stay in the (small) future while it sleeps.
        Box::pin(self.start_on(reg, options)).await?.await
    }

    async fn start_on(
        &self,
        reg: &'static PerspectiveRegistration,
        options: &PerspectiveSyncOptions,
    ) -> Result<Started> {
        if options.filter.needs_scope() && self.scope.is_none() {
            return Err(Error::InvalidInput(format!(
                "the sync filter for perspective `{}` uses current_scope(), but this awaiter has no \
                 scope: get the awaiter from `scope.sync_awaiter()`, or filter with for_stream(..) \
                 or all() instead",
                reg.name
            )));
        }
        let mut timer = self.timer(options);
        let timed_out = |timer: &ActiveTimer| {
            Ok(Started::Done(Some(Box::new(timed_out_result(
                reg,
                0,
                timer,
                self.emitted_len(),
                0,
                options.timeout,
            )))))
        };
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
        Ok(self
            .start(reg, targets, options, timer, emitted, tracked)
            .await)
    }

    /// A timer for one wait, on the options' clock (the runtime's by default).
    fn timer(&self, options: &PerspectiveSyncOptions) -> ActiveTimer {
        let clock = options
            .clock
            .clone()
            .unwrap_or_else(|| Arc::clone(&self.sync.clock));
        let (first, max) = options.reask;
        ActiveTimer::with_backoff(clock, options.debugger_aware, first, max)
    }

    /// The events of `stream` after `reg`'s cursor: stored, not yet applied.
    async fn unapplied(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
    ) -> Result<Vec<Arc<crate::store::StoredEvent>>> {
        let engine = &self.sync.engine;
        if reg.is_keyed() {
            return self.unapplied_keyed(reg, stream).await;
        }
        let cursor = engine.perspectives.checkpoint(reg.name, stream).await?;
        engine.events.read_stream(stream, cursor.version).await
    }

    /// The events of `stream` a keyed perspective has not applied: those
    /// its one cursor has not passed in the global order (or that have no
    /// place in it yet). Its checkpoint under the stream's id is not a
    /// cursor on the stream: it is the model of that key, if any, and its
    /// version is a global position, not the stream's.
    async fn unapplied_keyed(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
    ) -> Result<Vec<Arc<crate::store::StoredEvent>>> {
        let engine = &self.sync.engine;
        let cursor = engine
            .perspectives
            .checkpoint(reg.name, crate::perspective::KEYED_CURSOR)
            .await?;
        let mut events = engine.events.read_stream(stream, 0).await?;
        events.retain(|e| reg.handles(&e.event_type));
        if events.is_empty() {
            return Ok(events);
        }
        let ids: Vec<EventId> = events.iter().map(|e| e.event_id).collect();
        let positions: std::collections::HashMap<EventId, u64> = engine
            .events
            .global_positions(&ids)
            .await?
            .ok_or(Error::KeyedUnsupported {
                perspective: reg.name,
                missing: "an event store with a global order",
            })?
            .into_iter()
            .collect();
        events.retain(|e| {
            positions
                .get(&e.event_id)
                .is_none_or(|p| *p > cursor.version)
        });
        Ok(events)
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
        if filter.open_ended() {
            let mut query = UnappliedQuery::new(reg.name, reg.event_types);
            if reg.is_keyed() {
                query = query.keyed();
            }
            out.extend(
                self.sync
                    .backend
                    .unapplied(&query)
                    .await?
                    .iter()
                    .map(|loc| Candidate {
                        event_id: loc.event_id,
                        stream_id: loc.stream_id,
                        event_type: loc.event_type.clone(),
                        in_scope: false,
                    }),
            );
        }
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
        let emitted: Vec<EventLocation> =
            self.scope.as_ref().map(|s| s.emitted()).unwrap_or_default();
        let mut seen: HashSet<EventId> = HashSet::with_capacity(emitted.len());
        let mut candidates: Vec<Candidate> = Vec::with_capacity(emitted.len() + from_store.len());
        for e in &emitted {
            seen.insert(e.event_id);
            candidates.push(Candidate::emitted(e));
        }
        let tracked = if matches!(filter, SyncFilter::CurrentScope) {
            Vec::new()
        } else {
            self.sync.tracker.pending_for(reg.name)
        };
        for c in tracked.into_iter().chain(from_store) {
            if seen.insert(c.event_id) {
                candidates.push(c);
            }
        }
        let considered = candidates.len();
        (select(reg, filter, candidates), emitted.len(), considered)
    }

    /// Waits until `reg` has applied what `filter` selects among `events`
    /// (events the caller holds: a command's, a scope's), the timeout starting
    /// now. What the caller knows is all there is: no flush, no store read.
    pub(crate) async fn await_events(
        &self,
        reg: &'static PerspectiveRegistration,
        filter: &SyncFilter,
        events: Vec<Candidate>,
        options: &PerspectiveSyncOptions,
        events_emitted: usize,
    ) -> Result<SyncResult> {
        let tracked = events.len();
        let targets = select(reg, filter, events);
        let timer = self.timer(options);
        Box::pin(self.start(reg, targets, options, timer, events_emitted, tracked))
            .await
            .await
    }

    /// Registers the wait for exactly `targets` with what `timer` has left of
    /// the timeout: the tracker's service asks about it in batches from now on.
    async fn start(
        &self,
        reg: &'static PerspectiveRegistration,
        targets: Vec<Target>,
        options: &PerspectiveSyncOptions,
        mut timer: ActiveTimer,
        events_emitted: usize,
        events_tracked: usize,
    ) -> Started {
        let triggered = if crate::sync::may_trigger(reg, options) && !targets.is_empty() {
            let streams = crate::sync::target_streams(&targets);
            let run = crate::sync::trigger_run(&self.sync, reg, &streams);
            bounded(&mut timer, options.timeout, run).await == Some(true)
        } else {
            false
        };
        let meta = Meta {
            perspective: reg,
            events_emitted,
            events_tracked,
            timeout: options.timeout,
            triggered,
        };
        if targets.is_empty() {
            return Started::Done(Some(Box::new(meta.result(
                SyncOutcome::NoPendingEvents,
                0,
                timer.active(),
            ))));
        }
        let span = tracing::debug_span!(
            "whizbang.sync.wait",
            perspective = reg.name,
            events = targets.len(),
            timeout_ms = u64::try_from(options.timeout.as_millis()).unwrap_or(u64::MAX),
        );
        let registered = self.sync.tracker.register_wait(
            &self.sync,
            reg,
            targets,
            timer,
            options.timeout,
            triggered,
        );
        registered.first_round(&self.sync).instrument(span).await;
        Started::Waiting(Waiting::new(registered, meta))
    }
}

/// The one place a filter becomes the ids to await: the `candidates` that
/// `reg` handles and `filter` selects, then the ids the filter names that are
/// not among them (awaited as they are: the backend says where they stand,
/// `NotArrived` until stored).
fn select(
    reg: &'static PerspectiveRegistration,
    filter: &SyncFilter,
    candidates: Vec<Candidate>,
) -> Vec<Target> {
    let mut named = Vec::new();
    filter.ids(&mut named);
    named.retain(|id| !candidates.iter().any(|c| c.event_id == *id));
    let mut targets: Vec<Target> = candidates
        .into_iter()
        .filter(|c| reg.handles(&c.event_type) && filter.matches(c))
        .map(|c| (c.event_id, Some(c.stream_id)))
        .collect();
    for id in named {
        if filter.selects_id_alone(id) {
            targets.push((id, None));
        }
    }
    targets
}

/// What a wait reports besides its outcome.
struct Meta {
    perspective: &'static PerspectiveRegistration,
    events_emitted: usize,
    events_tracked: usize,
    timeout: Duration,
    /// Whether the wait ran the perspective itself (options' `trigger`).
    triggered: bool,
}

impl Meta {
    fn result(&self, outcome: SyncOutcome, events_awaited: usize, elapsed: Duration) -> SyncResult {
        SyncResult {
            outcome,
            events_awaited,
            elapsed,
            events_emitted: self.events_emitted,
            events_tracked: self.events_tracked,
            perspective: self.perspective.name,
            timeout: self.timeout,
            run: crate::sync::strategy_run(self.perspective, self.triggered),
        }
    }
}

/// A wait past its preparation: decided already, or registered with the
/// tracker. As a future, the outcome: the registration's, once a round decides it.
enum Started {
    Done(Option<Box<SyncResult>>),
    Waiting(Waiting<Meta>),
}

impl Future for Started {
    type Output = Result<SyncResult>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Started::Done(result) => Poll::Ready(result.take().map(|r| *r).ok_or_else(|| {
                Error::Invariant("a sync wait was polled after it returned".into())
            })),
            Started::Waiting(waiting) => {
                let (done, meta) = std::task::ready!(waiting.poll_done(cx));
                let (outcome, awaited, elapsed) = done?;
                tracing::debug!(
                    perspective = meta.perspective.name,
                    ?outcome,
                    "sync wait ended"
                );
                Poll::Ready(Ok(meta.result(outcome, awaited, elapsed)))
            }
        }
    }
}

/// The future of [`PerspectiveSyncAwaiter::wait`]: the preparation (flush,
/// store reads, first inquiry) boxed, then the small [`Started`] while it
/// sleeps, so a sleeping wait is a few words plus its table entry.
enum Wait<'a> {
    Starting(BoxFuture<'a, Result<Started>>),
    Started(Started),
}

impl Future for Wait<'_> {
    type Output = Result<SyncResult>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this {
                Wait::Starting(start) => match std::task::ready!(start.as_mut().poll(cx)) {
                    Ok(started) => *this = Wait::Started(started),
                    Err(e) => return Poll::Ready(Err(e)),
                },
                Wait::Started(started) => return Pin::new(started).poll(cx),
            }
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
    timeout: Duration,
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
        timeout,
        run: crate::sync::strategy_run(reg, false),
    }
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

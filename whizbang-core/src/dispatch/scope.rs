use super::context::Context;
use super::runtime::Runtime;
use super::send_and_sync::SendAndSync;
use crate::error::{Error, Result};
use crate::message::{Command, Envelope, Event, EventId, MessageId, Metadata};
use crate::perspective::invoker::{self, Invoker};
use crate::stage::LifecycleStage;
use crate::store::{BoxFuture, EventLocation, NewEvent, StoredEvent, StreamAppend};
use crate::sync::{
    Candidate, PerspectiveSyncAwaiter, PerspectiveSyncOptions, ScopedEventTracker,
    SyncEventTracker, SyncFilter, SyncOutcome, SyncResult,
};
use crate::util::lock;
use std::any::TypeId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

/// How deep events may cascade through event receptors before it is called a cycle.
const CASCADE_LIMIT: usize = 32;

pub(crate) struct ScopeShared {
    pub(crate) runtime: Runtime,
    pub(crate) scope_id: MessageId,
    pub(crate) invoker: Invoker,
    /// The first failure of a flush that had nobody to report it to (a flush
    /// before a wait, a flush finished on a spawned task): `complete()` reports it.
    flush_failure: Mutex<Option<Error>>,
}

/// One unit of work (a request, an inbound message).
///
/// Commands sent and events published through a scope are appended at once;
/// their perspectives are applied when the scope completes: inline ones before
/// [`complete`](Scope::complete) returns, async ones by the runner. A scope
/// dropped without completing still flushes (on a spawned task) and logs a warning.
pub struct Scope {
    pub(crate) shared: Arc<ScopeShared>,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("scope_id", &self.shared.scope_id)
            .field("queued", &self.shared.invoker.queued_len())
            .finish()
    }
}

impl Scope {
    pub(crate) fn new(runtime: Runtime) -> Scope {
        Scope {
            shared: Arc::new(ScopeShared {
                runtime,
                scope_id: MessageId::new(),
                invoker: Invoker::default(),
                flush_failure: Mutex::new(None),
            }),
        }
    }

    /// The scope's id; the correlation id of what it sends.
    #[must_use]
    pub fn id(&self) -> MessageId {
        self.shared.scope_id
    }

    /// The runtime this scope belongs to.
    #[must_use]
    pub fn runtime(&self) -> &Runtime {
        &self.shared.runtime
    }

    /// Sends a command to its receptor and returns the receptor's output.
    ///
    /// A send is all or nothing. The events the receptor emitted are first
    /// cascaded to the inline event receptors of the append stages
    /// (`Pre/PostDistributeInline`, `Pre/PostOutboxInline`, in stage order,
    /// breadth first), which run *before* the append on the events as they will
    /// be stored (ids, payload and metadata; their `position` and
    /// `stream_version` read 0, as they are not assigned yet). Then the
    /// command's events and every event of the cascade are appended in one
    /// [`EventStore::append`](crate::store::EventStore::append), recorded and
    /// queued for perspectives; detached receptors start after the append, on
    /// the stored events. Dropping the future before the append stores nothing.
    ///
    /// # Errors
    /// [`Error::NoReceptor`], [`Error::ScopeCompleted`], [`Error::Concurrency`],
    /// the receptor's own error, [`Error::CascadeFailed`] when an event receptor
    /// of the cascade failed, or [`Error::CascadeTooDeep`]. In every error case
    /// nothing of the send was stored.
    pub async fn send<C: Command>(&self, command: C) -> Result<C::Output> {
        let id = MessageId::new();
        self.dispatch(command, id, self.shared.scope_id, None, Metadata::default())
            .await
            .map(|(output, _)| output)
    }

    /// Sends a command with the ids and metadata of its envelope: the receptor's
    /// context and every event it emits carry them (correlation, causation,
    /// metadata), so a message arriving from elsewhere keeps its conversation.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_envelope<C: Command>(&self, envelope: Envelope<C>) -> Result<C::Output> {
        let Envelope {
            message_id,
            correlation_id,
            causation_id,
            metadata,
            message,
            ..
        } = envelope;
        self.dispatch(message, message_id, correlation_id, causation_id, metadata)
            .await
            .map(|(output, _)| output)
    }

    /// Sends a command; returns its output and exactly the events this send
    /// appended (the command's and its cascade's).
    async fn dispatch<C: Command>(
        &self,
        command: C,
        message_id: MessageId,
        correlation_id: MessageId,
        causation_id: Option<MessageId>,
        metadata: Metadata,
    ) -> Result<(C::Output, Vec<Arc<StoredEvent>>)> {
        self.shared.invoker.ensure_open()?;
        let Some((receptor, reg)) = self.shared.runtime.inner.commands.get(&TypeId::of::<C>())
        else {
            return Err(Error::NoReceptor {
                message_type: C::NAME,
            });
        };
        let span = tracing::info_span!(
            "whizbang.dispatch",
            message_type = C::NAME,
            message_id = %message_id,
            correlation_id = %correlation_id,
            receptor = reg.receptor,
            scope = %self.shared.scope_id,
        );
        async move {
            let mut cx = Context::for_message::<C>(
                Arc::clone(&self.shared),
                message_id,
                correlation_id,
                causation_id,
                metadata,
            );
            cx.receptor = Some(*reg);
            let route = (Arc::clone(receptor), *reg);
            if !reg.sync.is_empty() {
                // A command waits on what its scope wrote so far: flush it first.
                self.shared.flush_queued().await?;
                cx.sync_results = self.shared.await_requirements(&route, None).await?;
            }
            let output = receptor
                .call(&mut Some(command), &mut cx)
                .instrument(tracing::debug_span!(
                    "whizbang.receptor",
                    receptor = reg.receptor
                ))
                .await?;
            let output = output.downcast::<C::Output>().map(|o| *o).map_err(|_| {
                Error::Invariant(format!("receptor of `{}` returned another type", C::NAME))
            })?;
            let stored = self.shared.commit(std::mem::take(&mut cx.pending)).await?;
            Ok((output, stored))
        }
        .instrument(span)
        .await
    }

    /// Publishes an event: cascaded to its inline receptors, appended with what
    /// they emitted (all or nothing, as for [`send`](Self::send)), queued for
    /// perspectives.
    ///
    /// # Errors
    /// [`Error::Serialization`], [`Error::ScopeCompleted`], [`Error::CascadeFailed`]
    /// or [`Error::CascadeTooDeep`]; nothing was stored then.
    pub async fn publish<E: Event>(&self, event: E) -> Result<EventId> {
        self.shared.invoker.ensure_open()?;
        let mut cx = Context::for_message::<E>(
            Arc::clone(&self.shared),
            MessageId::new(),
            self.shared.scope_id,
            None,
            Metadata::default(),
        );
        let id = cx.emit(event)?;
        let span = tracing::info_span!("whizbang.dispatch", message_type = E::NAME, event_id = %id);
        self.shared
            .commit(std::mem::take(&mut cx.pending))
            .instrument(span)
            .await?;
        Ok(id)
    }

    /// Like [`publish`](Self::publish), requiring the stream to be at `expected`.
    ///
    /// # Errors
    /// As [`publish`](Self::publish), and [`Error::Concurrency`].
    pub async fn publish_expecting<E: Event>(
        &self,
        event: E,
        expected: crate::ExpectedVersion,
    ) -> Result<EventId> {
        self.shared.invoker.ensure_open()?;
        let mut cx = Context::for_message::<E>(
            Arc::clone(&self.shared),
            MessageId::new(),
            self.shared.scope_id,
            None,
            Metadata::default(),
        );
        let id = cx.emit_expecting(event, expected)?;
        self.shared.commit(std::mem::take(&mut cx.pending)).await?;
        Ok(id)
    }

    /// An awaiter bound to this scope: its filters may use `current_scope()`.
    #[must_use]
    pub fn sync_awaiter(&self) -> PerspectiveSyncAwaiter {
        PerspectiveSyncAwaiter::new(self.shared.runtime.clone(), Some(Arc::clone(&self.shared)))
    }

    /// What this scope emitted.
    #[must_use]
    pub fn tracker(&self) -> ScopedEventTracker {
        ScopedEventTracker::new(self.shared.emitted_snapshot())
    }

    /// Sends a command, then waits until every perspective that handles the
    /// events it appended (its own and its cascade's, nothing else) has applied
    /// them (5 s timeout, debugger-aware). Inline perspectives apply at once;
    /// async ones are signalled now, not at `complete()`.
    ///
    /// Once the command's events are stored you always get its output, with
    /// each perspective's outcome: `?` on
    /// [`into_synced`](SendAndSync::into_synced) turns a miss into an error, or
    /// answer "accepted" with the output when the read model is not there yet.
    ///
    /// ```
    /// # use whizbang_core::{Command, Context, Receptor, Result, Runtime};
    /// # #[derive(Command, serde::Serialize, serde::Deserialize)] #[command(output = u32)] struct Ping;
    /// # #[derive(Default)] struct R;
    /// # #[whizbang_core::receptor] impl Receptor<Ping> for R {
    /// #   async fn handle(&self, _: Ping, _: &mut Context) -> Result<u32> { Ok(7) } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
    /// # let runtime = Runtime::in_memory()?;
    /// let scope = runtime.scope();
    /// let sent = scope.send_and_sync(Ping).await?; // Err: nothing was stored
    /// if sent.is_synced() {
    ///     // read models reflect the command: answer 200 with them
    /// } else {
    ///     // stored, not yet applied: answer 202 with the id; never resend
    /// }
    /// let n: u32 = sent.into_synced()?; // or: a miss as an error that says the events are stored
    /// # assert_eq!(n, 7);
    /// # scope.complete().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`send`](Self::send): only when the send failed and nothing was stored.
    pub async fn send_and_sync<C: Command>(&self, command: C) -> Result<SendAndSync<C::Output>> {
        self.send_and_sync_with(command, PerspectiveSyncOptions::default())
            .await
    }

    /// Like [`send_and_sync`](Self::send_and_sync), with these options (the
    /// timeout, debugger awareness). The options' filter is ignored: the wait
    /// is on exactly this command's events.
    ///
    /// # Errors
    /// As [`send`](Self::send): only when the send failed and nothing was stored.
    pub async fn send_and_sync_with<C: Command>(
        &self,
        command: C,
        options: PerspectiveSyncOptions,
    ) -> Result<SendAndSync<C::Output>> {
        let id = MessageId::new();
        let (output, mine) = self
            .dispatch(command, id, self.shared.scope_id, None, Metadata::default())
            .await?;
        // The events are stored: from here on nothing turns into an `Err`.
        // A flush failure is recorded in the scope (`complete()` reports it);
        // a failure on our own events shows in the wait below.
        let _ = self.shared.flush_queued().await;
        let started = tokio::time::Instant::now();
        let rt = &self.shared.runtime.inner;
        let touched = invoker::touched(&rt.registry, &mine);
        crate::sync::help_along(
            rt,
            &touched,
            options.timeout.saturating_sub(started.elapsed()),
        )
        .await;
        let awaiter = self.sync_awaiter();
        let emitted = self.shared.emitted_len();
        let mut results: Vec<SyncResult> = Vec::new();
        for (reg, _) in &touched {
            if results.iter().any(|r| r.perspective == reg.name) {
                continue;
            }
            // Exactly this command's events (the options' filter is ignored).
            let awaited = mine.iter().filter(|e| reg.handles(&e.event_type)).count();
            let first_stream = mine.first().map(|e| e.stream_id);
            let events = mine.iter().map(|e| Candidate::stored(e)).collect();
            let result = match awaiter
                .await_events(reg, &SyncFilter::all(), events, &options, emitted)
                .await
            {
                Ok(result) => result,
                Err(e) => {
                    let outcome = match e {
                        Error::PerspectiveFailed {
                            stream,
                            version,
                            message,
                            ..
                        } => SyncOutcome::Failed {
                            stream,
                            version,
                            message,
                        },
                        other => SyncOutcome::Failed {
                            stream: first_stream.unwrap_or_default(),
                            version: 0,
                            message: format!("the wait itself failed: {other}"),
                        },
                    };
                    SyncResult {
                        outcome,
                        events_awaited: awaited,
                        elapsed: started.elapsed(),
                        events_emitted: emitted,
                        events_tracked: mine.len(),
                        perspective: reg.name,
                        timeout: options.timeout,
                    }
                }
            };
            results.push(result);
        }
        Ok(SendAndSync { output, results })
    }

    /// Every event this scope has appended so far, in order.
    #[must_use]
    pub fn emitted(&self) -> Vec<EventLocation> {
        self.shared.emitted_snapshot()
    }

    /// Completes the unit of work: inline perspectives apply now, async ones are
    /// signalled. Afterwards nothing more can be sent through this scope.
    /// Completing twice is harmless.
    ///
    /// Cancel-safe: dropped before it finishes (a timeout, a client that went
    /// away), the rest of its flush goes on on a spawned task, which
    /// [`Runtime::wait_idle`] waits for; nothing queued is lost.
    ///
    /// # Errors
    /// [`Error::PerspectiveFailed`] when an inline perspective failed during any
    /// of this scope's flushes (also the ones before waits and `send_and_sync`,
    /// which do not fail those), or a perspective-stage receptor's error. Every
    /// other perspective was still applied.
    pub async fn complete(&self) -> Result<()> {
        let own = match self.shared.invoker.complete() {
            Some(events) => FlushRun::new(Arc::clone(&self.shared), events).run().await,
            None => Ok(()),
        };
        match self.shared.take_failure() {
            Some(earlier) => Err(earlier),
            None => own,
        }
    }

    /// Whether [`complete`](Self::complete) ran.
    #[must_use]
    pub fn is_completed(&self) -> bool {
        self.shared.invoker.ensure_open().is_err()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let Some(events) = self.shared.invoker.complete() else {
            return;
        };
        if events.is_empty() {
            return;
        }
        tracing::warn!(
            scope = %self.shared.scope_id,
            events = events.len(),
            "scope dropped without complete(); flushing its perspectives on a spawned task. \
             Call `scope.complete().await` to apply them before you return"
        );
        FlushRun::new(Arc::clone(&self.shared), events).spawn();
    }
}

/// One step of a flush.
enum Step {
    /// Every event at once (no receptor fires at a perspective stage).
    All(Vec<Arc<StoredEvent>>),
    /// One event: its pre-perspective receptors, its perspectives, its post-perspective receptors.
    Around(Arc<StoredEvent>),
    /// One event's post-all-perspectives receptors.
    PostAll(Arc<StoredEvent>),
}

impl Step {
    fn start(self, shared: Arc<ScopeShared>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let rt = &shared.runtime.inner;
            match self {
                Step::All(events) => {
                    invoker::flush(&rt.registry, &rt.engine, &rt.runner, &events).await
                }
                Step::Around(ev) => {
                    let before = [
                        LifecycleStage::PrePerspectiveInline,
                        LifecycleStage::PrePerspectiveDetached,
                    ];
                    let after = [
                        LifecycleStage::PostPerspectiveInline,
                        LifecycleStage::PostPerspectiveDetached,
                    ];
                    shared.fire_in_child(&ev, &before).await?;
                    // Only up to this event's version: a later event of the same
                    // stream gets its own pre-perspective stage first.
                    let one = std::slice::from_ref(&ev);
                    invoker::flush(&rt.registry, &rt.engine, &rt.runner, one).await?;
                    shared.fire_in_child(&ev, &after).await
                }
                Step::PostAll(ev) => {
                    let all = [
                        LifecycleStage::PostAllPerspectivesInline,
                        LifecycleStage::PostAllPerspectivesDetached,
                    ];
                    shared.fire_in_child(&ev, &all).await
                }
            }
        })
    }
}

/// A flush of some of a scope's events to their perspectives, firing the
/// perspective-stage receptors around them. It holds its remaining work (the
/// step in progress and the steps after it): dropped before it finishes, it
/// hands that work to a spawned task (counted by the runner's `track`, so
/// `wait_idle` waits for it). The step in progress goes on where it stopped.
struct FlushRun {
    shared: Arc<ScopeShared>,
    current: Option<BoxFuture<'static, Result<()>>>,
    plan: VecDeque<Step>,
    first_error: Option<Error>,
    /// Already on its own task: dropped (runtime shutting down), it cannot hand
    /// its work on again.
    spawned: bool,
}

impl FlushRun {
    fn new(shared: Arc<ScopeShared>, events: Vec<Arc<StoredEvent>>) -> FlushRun {
        let mut plan = VecDeque::new();
        if !events.is_empty() {
            if shared.runtime.inner.has_flush_stage_receptors {
                plan.extend(events.iter().cloned().map(Step::Around));
                plan.extend(events.into_iter().map(Step::PostAll));
            } else {
                plan.push_back(Step::All(events));
            }
        }
        FlushRun {
            shared,
            current: None,
            plan,
            first_error: None,
            spawned: false,
        }
    }

    /// Runs every step; the first failure is returned (every step is attempted).
    async fn run(mut self) -> Result<()> {
        loop {
            if self.current.is_none() {
                let Some(step) = self.plan.pop_front() else {
                    break;
                };
                self.current = Some(step.start(Arc::clone(&self.shared)));
            }
            if let Some(step) = self.current.as_mut() {
                let result = step.await;
                self.current = None;
                if let Err(e) = result {
                    self.first_error.get_or_insert(e);
                }
            }
        }
        self.first_error.take().map_or(Ok(()), Err)
    }

    /// Runs on a spawned task; a failure is logged and recorded in the scope.
    fn spawn(mut self) {
        self.spawned = true;
        let shared = Arc::clone(&self.shared);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let guard = shared.runtime.inner.runner.track();
                handle.spawn(async move {
                    let _guard = guard;
                    if let Err(e) = self.run().await {
                        tracing::error!(scope = %shared.scope_id, error = %e, "a scope's flush failed on its spawned task");
                        shared.record_failure(e);
                    }
                });
            }
            Err(_) => {
                self.plan.clear();
                self.current = None;
                tracing::error!(
                    scope = %shared.scope_id,
                    "a scope's flush was dropped outside a tokio runtime: its events are stored, \
                     but its perspectives apply only when another scope touches the same streams"
                );
            }
        }
    }
}

impl Drop for FlushRun {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The step in progress panicked: it cannot be polled again. The
            // steps after it can still run.
            self.current = None;
        }
        if self.current.is_none() && self.plan.is_empty() {
            if let Some(e) = self.first_error.take() {
                self.shared.record_failure(e);
            }
            return;
        }
        if self.spawned {
            tracing::error!(
                scope = %self.shared.scope_id,
                "a scope's flush task was dropped (it panicked, or the tokio runtime is shutting \
                 down): its events are stored, but its perspectives apply only when another scope \
                 touches the same streams"
            );
            return;
        }
        let rest = FlushRun {
            shared: Arc::clone(&self.shared),
            current: self.current.take(),
            plan: std::mem::take(&mut self.plan),
            first_error: self.first_error.take(),
            spawned: false,
        };
        rest.spawn();
    }
}

/// Tracked ids of an append in flight: untracked on drop (a failed or
/// cancelled append) unless disarmed once the append succeeded.
struct Tracked<'a> {
    tracker: &'a SyncEventTracker,
    ids: Vec<EventId>,
}

impl Tracked<'_> {
    fn disarm(mut self) {
        self.ids.clear();
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.tracker.untrack(&self.ids);
    }
}

/// An event as inline cascade receptors see it before the append: everything
/// but its place in the log (`position` and `stream_version` are 0).
fn provisional(ev: &NewEvent) -> StoredEvent {
    StoredEvent {
        position: 0,
        event_id: ev.event_id,
        stream_id: ev.stream_id,
        stream_version: 0,
        event_type: std::borrow::Cow::Borrowed(ev.event_type),
        data: ev.data.clone(),
        metadata: ev.metadata.clone(),
        typed: ev.typed.clone(),
    }
}

fn count(appends: &[StreamAppend]) -> usize {
    appends.iter().map(|a| a.events.len()).sum()
}

impl ScopeShared {
    /// Every event appended through the scope, in order.
    pub(crate) fn emitted_snapshot(&self) -> Vec<EventLocation> {
        self.invoker.with_events(|events| {
            events
                .iter()
                .map(|ev| EventLocation {
                    event_id: ev.event_id,
                    stream_id: ev.stream_id,
                    stream_version: ev.stream_version,
                    event_type: ev.event_type.clone(),
                })
                .collect()
        })
    }

    pub(crate) fn emitted_len(&self) -> usize {
        self.invoker.with_events(<[_]>::len)
    }

    /// Records a flush failure for `complete()` to report (the first one wins).
    pub(crate) fn record_failure(&self, error: Error) {
        lock(&self.flush_failure).get_or_insert(error);
    }

    fn take_failure(&self) -> Option<Error> {
        lock(&self.flush_failure).take()
    }

    /// Flushes what is queued now, keeping the scope open. A failure (an inline
    /// perspective of some other event failing) is not this caller's: it is
    /// recorded for `complete()`, and `Ok` is returned. Cancel-safe, as
    /// `complete()` is.
    pub(crate) async fn flush_queued(self: &Arc<Self>) -> Result<()> {
        let events = self.invoker.take_queued();
        if events.is_empty() {
            return Ok(());
        }
        if let Err(e) = FlushRun::new(Arc::clone(self), events).run().await {
            tracing::debug!(scope = %self.scope_id, error = %e, "flush before a wait failed; complete() reports it");
            self.record_failure(e);
        }
        Ok(())
    }

    /// Runs the inline cascade of what a receptor emitted, then appends the
    /// emitted events and the whole cascade's in one append, records and queues
    /// them, and starts the detached append-stage receptors. Returns the
    /// events appended. Nothing is stored when any part fails or the future is
    /// dropped before the append.
    pub(crate) fn commit(
        self: &Arc<Self>,
        pending: Vec<StreamAppend>,
    ) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>> {
        Box::pin(async move {
            let rt = &self.runtime.inner;
            let mut level: Vec<StreamAppend> = pending
                .into_iter()
                .filter(|a| !a.events.is_empty())
                .collect();
            if level.is_empty() {
                return Ok(Vec::new());
            }
            self.invoker.ensure_open()?;
            // 1. The inline cascade, breadth first, on provisional events.
            let mut all: Vec<StreamAppend> = Vec::new();
            let mut depth = 0usize;
            while !level.is_empty() {
                if depth > CASCADE_LIMIT {
                    return Err(Error::CascadeTooDeep {
                        limit: CASCADE_LIMIT,
                    });
                }
                let mut next: Vec<StreamAppend> = Vec::new();
                for ev in level.iter().flat_map(|a| &a.events) {
                    // One lookup per event; most events have no receptors at all.
                    let Some(routes) = rt.event_receptors.get(ev.event_type) else {
                        continue;
                    };
                    let mut seen: Option<Arc<StoredEvent>> = None;
                    for stage in LifecycleStage::at_append().filter(|s| s.is_inline()) {
                        for route in routes
                            .iter()
                            .filter(|(_, reg)| reg.effective_stage() == stage)
                        {
                            let event = seen.get_or_insert_with(|| Arc::new(provisional(ev)));
                            match self.run_receptor(route, event).await {
                                Ok(emitted) => {
                                    next.extend(
                                        emitted.into_iter().filter(|a| !a.events.is_empty()),
                                    );
                                }
                                Err(source) => {
                                    return Err(Error::CascadeFailed {
                                        receptor: route.1.path(),
                                        event_type: ev.event_type.to_owned(),
                                        event_id: ev.event_id,
                                        discarded: count(&all) + count(&level) + count(&next),
                                        source: Box::new(source),
                                    });
                                }
                            }
                        }
                    }
                }
                all.append(&mut level);
                level = next;
                depth += 1;
            }
            // 2. One append for the command and its whole cascade.
            self.invoker.ensure_open()?;
            let tracker = &rt.sync.tracker;
            let tracked = Tracked {
                tracker,
                ids: tracker.track_new(&rt.registry, &all),
            };
            let stored = self.runtime.event_store().append(all).await?;
            // 3. Stored: from here on, no `.await`, so a future dropped now
            // cannot lose the queue.
            tracked.disarm();
            self.record(&stored);
            for ev in &stored {
                let Some(routes) = rt.event_receptors.get(&*ev.event_type) else {
                    continue;
                };
                for stage in LifecycleStage::at_append().filter(|s| !s.is_inline()) {
                    for route in routes
                        .iter()
                        .filter(|(_, reg)| reg.effective_stage() == stage)
                    {
                        self.spawn_detached(route, Arc::clone(ev));
                    }
                }
            }
            Ok(stored)
        })
    }

    /// Queues appended events in the invoker. If the scope completed meanwhile
    /// (a race with `complete`), they are flushed on a spawned task rather
    /// than dropped.
    fn record(self: &Arc<Self>, stored: &[Arc<StoredEvent>]) {
        if self.invoker.queue(stored).is_err() {
            FlushRun::new(Arc::clone(self), stored.to_vec()).spawn();
        }
    }
}

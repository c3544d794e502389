use super::context::Context;
use super::runtime::Runtime;
use super::stage::LifecycleStage;
use crate::error::{Error, Result};
use crate::message::{Command, Envelope, Event, EventId, MessageId, Metadata};
use crate::perspective::invoker::{self, Invoker};
use crate::store::{BoxFuture, StoredEvent, StreamAppend};
use crate::sync::{PerspectiveSyncAwaiter, PerspectiveSyncOptions, ScopedEventTracker, SyncResult};
use std::any::TypeId;
use std::collections::VecDeque;
use std::sync::Arc;
use tracing::Instrument;

/// How deep events may cascade through event receptors before it is called a cycle.
const CASCADE_LIMIT: usize = 32;

pub(crate) struct ScopeShared {
    pub(crate) runtime: Runtime,
    pub(crate) scope_id: MessageId,
    pub(crate) invoker: Invoker,
}

/// One event a scope emitted: what the scoped tracker records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmittedEvent {
    /// The event.
    pub event_id: EventId,
    /// Its stream.
    pub stream_id: crate::StreamId,
    /// Its stream version.
    pub stream_version: u64,
    /// Its wire name.
    pub event_type: std::borrow::Cow<'static, str>,
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
    /// The events the receptor emitted are appended (all or nothing), cascaded to
    /// event receptors and queued for perspectives.
    ///
    /// # Errors
    /// [`Error::NoReceptor`], [`Error::ScopeCompleted`], [`Error::Concurrency`],
    /// the receptor's own error (its events are then not appended), or an error
    /// from an event receptor in the cascade.
    pub async fn send<C: Command>(&self, command: C) -> Result<C::Output> {
        let id = MessageId::new();
        self.dispatch(command, id, self.shared.scope_id, None, Metadata::default())
            .await
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
    }

    async fn dispatch<C: Command>(
        &self,
        command: C,
        message_id: MessageId,
        correlation_id: MessageId,
        causation_id: Option<MessageId>,
        metadata: Metadata,
    ) -> Result<C::Output> {
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
            let route = (Arc::clone(receptor), *reg);
            if !reg.sync.is_empty() {
                // A command waits on what its scope wrote so far: flush it first.
                self.shared.flush_queued().await?;
                cx.sync_results = self.shared.await_requirements(&route, None).await?;
            }
            let output = receptor
                .call(Box::new(command), &mut cx)
                .instrument(tracing::debug_span!(
                    "whizbang.receptor",
                    receptor = reg.receptor
                ))
                .await?;
            self.shared.commit(std::mem::take(&mut cx.pending)).await?;
            output.downcast::<C::Output>().map(|o| *o).map_err(|_| {
                Error::InvalidInput(format!("receptor of `{}` returned another type", C::NAME))
            })
        }
        .instrument(span)
        .await
    }

    /// Publishes an event: appended, cascaded to its receptors, queued for perspectives.
    ///
    /// # Errors
    /// [`Error::Serialization`], [`Error::ScopeCompleted`], or an error from an event receptor.
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
    /// events it emitted has applied them (5 s timeout, debugger-aware). Inline
    /// perspectives apply at once; async ones are signalled now, not at `complete()`.
    ///
    /// # Errors
    /// As [`send`](Self::send), plus [`Error::PerspectiveSyncTimeout`] and
    /// [`Error::PerspectiveFailed`]. The command's events are stored either way.
    pub async fn send_and_sync<C: Command>(&self, command: C) -> Result<C::Output> {
        let options = PerspectiveSyncOptions::default();
        let timeout = options.timeout;
        let (output, results) = self.send_and_sync_with(command, options).await?;
        for r in results {
            r.into_result(timeout)?;
        }
        Ok(output)
    }

    /// Like [`send_and_sync`](Self::send_and_sync), returning each perspective's
    /// [`SyncResult`] instead of turning timeouts and failures into errors. The
    /// options' filter is ignored: the wait is on exactly this command's events.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_and_sync_with<C: Command>(
        &self,
        command: C,
        options: PerspectiveSyncOptions,
    ) -> Result<(C::Output, Vec<SyncResult>)> {
        let before = self.shared.emitted_len();
        let output = self.send(command).await?;
        let mine: Vec<Arc<StoredEvent>> = self.shared.invoker.with_events(|e| e[before..].to_vec());
        self.shared.flush_queued().await?;
        let rt = &self.shared.runtime.inner;
        let touched = invoker::touched(&rt.registry, &mine);
        // Help along: we are about to wait for these async catch-ups anyway, so
        // run them on this task rather than wait for a runner task to be
        // scheduled. The store's claim keeps each (perspective, stream) exactly
        // once and in order; a failure is reported by the wait below.
        for (reg, stream) in &touched {
            // A paused runner means "apply nothing": helping along must not bypass it.
            if reg.mode == crate::PerspectiveMode::Async && !rt.runner.is_paused() {
                if let Err(e) = rt.engine.catch_up(reg, *stream).await {
                    tracing::debug!(perspective = reg.name, error = %e, "help-along catch-up failed");
                }
            }
        }
        let awaiter = self.sync_awaiter();
        let mut results = Vec::new();
        for (reg, _) in touched {
            if results
                .iter()
                .any(|r: &SyncResult| r.perspective == reg.name)
            {
                continue;
            }
            let targets = mine
                .iter()
                .filter(|e| reg.handles(&e.event_type))
                .map(|e| (e.event_id, Some(e.stream_id)))
                .collect();
            results.push(
                awaiter
                    .await_targets(reg, targets, &options, before + mine.len(), mine.len())
                    .await?,
            );
        }
        Ok((output, results))
    }

    /// Every event this scope has appended so far, in order.
    #[must_use]
    pub fn emitted(&self) -> Vec<EmittedEvent> {
        self.shared.emitted_snapshot()
    }

    /// Completes the unit of work: inline perspectives apply now, async ones are
    /// signalled. Afterwards nothing more can be sent through this scope.
    /// Completing twice is harmless.
    ///
    /// # Errors
    /// [`Error::PerspectiveFailed`] when an inline perspective failed (every
    /// other perspective was still applied).
    pub async fn complete(&self) -> Result<()> {
        match self.shared.invoker.complete() {
            Some(events) => self.shared.flush(&events).await,
            None => Ok(()),
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
        let shared = Arc::clone(&self.shared);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                tracing::warn!(
                    scope = %shared.scope_id,
                    events = events.len(),
                    "scope dropped without complete(); flushing its perspectives on a spawned task. \
                     Call `scope.complete().await` to apply them before you return"
                );
                let guard = shared.runtime.inner.runner.track();
                handle.spawn(async move {
                    let _guard = guard;
                    if let Err(e) = shared.flush(&events).await {
                        tracing::error!(scope = %shared.scope_id, error = %e, "flush of a dropped scope failed");
                    }
                });
            }
            Err(_) => tracing::error!(
                scope = %shared.scope_id,
                events = events.len(),
                "scope dropped without complete() outside a tokio runtime: its events are stored, \
                 but its perspectives apply only when another scope touches the same streams"
            ),
        }
    }
}

impl ScopeShared {
    /// Every event appended through the scope, in order.
    pub(crate) fn emitted_snapshot(&self) -> Vec<EmittedEvent> {
        self.invoker.with_events(|events| {
            events
                .iter()
                .map(|ev| EmittedEvent {
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

    /// Flushes what is queued now, keeping the scope open.
    pub(crate) async fn flush_queued(self: &Arc<Self>) -> Result<()> {
        let events = self.invoker.take_queued();
        if events.is_empty() {
            return Ok(());
        }
        self.flush(&events).await
    }

    /// Flushes `events` to their perspectives, firing the perspective-stage
    /// receptors around them. Boxed: stage receptors may complete child scopes,
    /// which flush in turn.
    pub(crate) fn flush<'a>(
        self: &'a Arc<Self>,
        events: &'a [Arc<StoredEvent>],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let rt = &self.runtime.inner;
            if !rt.has_flush_stage_receptors {
                return invoker::flush(&rt.registry, &rt.engine, &rt.runner, events).await;
            }
            let mut first_error = None;
            for ev in events {
                let before = [
                    LifecycleStage::PrePerspectiveInline,
                    LifecycleStage::PrePerspectiveDetached,
                ];
                let after = [
                    LifecycleStage::PostPerspectiveInline,
                    LifecycleStage::PostPerspectiveDetached,
                ];
                let one = std::slice::from_ref(ev);
                let result = async {
                    self.fire_in_child(ev, &before).await?;
                    invoker::flush(&rt.registry, &rt.engine, &rt.runner, one).await?;
                    self.fire_in_child(ev, &after).await
                }
                .await;
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
            for ev in events {
                let all = [
                    LifecycleStage::PostAllPerspectivesInline,
                    LifecycleStage::PostAllPerspectivesDetached,
                ];
                if let Err(e) = self.fire_in_child(ev, &all).await {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    /// Appends what a receptor emitted, records and queues it, then runs the
    /// event receptors of each event at the append stages (breadth first),
    /// appending what they emit. Detached receptors go to their own tasks.
    pub(crate) fn commit(
        self: &Arc<Self>,
        pending: Vec<StreamAppend>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut work: VecDeque<(Vec<StreamAppend>, usize)> = VecDeque::new();
            work.push_back((pending, 0));
            while let Some((pending, depth)) = work.pop_front() {
                if pending.is_empty() {
                    continue;
                }
                if depth > CASCADE_LIMIT {
                    return Err(Error::CascadeTooDeep {
                        limit: CASCADE_LIMIT,
                    });
                }
                self.invoker.ensure_open()?;
                let tracker = &self.runtime.inner.sync.tracker;
                let tracked = tracker.track_new(&self.runtime.inner.registry, &pending);
                let stored = match self.runtime.event_store().append(pending).await {
                    Ok(stored) => stored,
                    Err(e) => {
                        tracker.untrack(&tracked);
                        return Err(e);
                    }
                };
                self.record(&stored).await?;
                for ev in &stored {
                    // One lookup per event; most events have no receptors at all.
                    let Some(routes) = self.runtime.inner.event_receptors.get(&*ev.event_type)
                    else {
                        continue;
                    };
                    for stage in LifecycleStage::at_append() {
                        for route in routes
                            .iter()
                            .filter(|(_, reg)| reg.effective_stage() == stage)
                        {
                            if stage.is_inline() {
                                work.push_back((self.run_receptor(route, ev).await?, depth + 1));
                            } else {
                                self.spawn_detached(route, Arc::clone(ev));
                            }
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// Tracks appended events and queues them in the invoker. If the scope
    /// completed meanwhile (a race with `complete`), they are flushed right
    /// away rather than dropped.
    async fn record(&self, stored: &[Arc<StoredEvent>]) -> Result<()> {
        match self.invoker.queue(stored) {
            Ok(()) => Ok(()),
            Err(Error::ScopeCompleted) => {
                // Only reachable through `commit`, which holds an `Arc<Self>`.
                let rt = &self.runtime.inner;
                invoker::flush(&rt.registry, &rt.engine, &rt.runner, stored).await
            }
            Err(e) => Err(e),
        }
    }
}

//! Sending and committing: a command to its receptor, an event published,
//! the inline cascade of what receptors emit, the one append, and queueing
//! what was appended for the flush.

use super::context::Context;
use super::flush::FlushRun;
use super::scope::{Scope, ScopeShared};
use crate::error::{Error, Result};
use crate::message::{Command, Envelope, Event, EventId, MessageId, Metadata};
use crate::perspective::inline::{InlineFold, InlineOutcome};
use crate::stage::LifecycleStage;
use crate::store::{BoxFuture, InlineTarget, NewEvent, StoredEvent, StreamAppend};
use crate::sync::SyncEventTracker;
use std::any::TypeId;
use std::sync::Arc;
use tracing::Instrument;

/// How deep events may cascade through event receptors before it is called a cycle.
const CASCADE_LIMIT: usize = 32;

impl Scope {
    /// Sends a command to its receptor and returns the receptor's output.
    ///
    /// A send is all or nothing. The events the receptor emitted are first
    /// cascaded to the inline event receptors of the append stages
    /// (`Pre/PostDistributeInline`, in stage order,
    /// breadth first), which run *before* the append on the events as they will
    /// be stored (ids, payload and metadata; their `position` and
    /// `stream_version` read 0, as they are not assigned yet). Then the
    /// command's events and every event of the cascade are appended in one
    /// [`EventStore::append`](crate::store::EventStore::append), recorded and
    /// queued for perspectives; detached receptors start after the append, on
    /// the stored events. Dropping the future before the append stores nothing.
    ///
    /// When the event store implements
    /// [`append_inline`](crate::store::EventStore::append_inline) (PostgreSQL)
    /// and no receptor fires at a perspective stage, the inline perspectives
    /// of the appended events apply in the append's transaction: when `send`
    /// returns they are applied (or their cursor is marked failed, which
    /// [`complete`](Self::complete) reports), and a dropped send leaves
    /// events and models together or neither.
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
    pub(super) async fn dispatch<C: Command>(
        &self,
        command: C,
        message_id: MessageId,
        correlation_id: MessageId,
        causation_id: Option<MessageId>,
        metadata: Metadata,
    ) -> Result<(C::Output, Vec<Arc<StoredEvent>>)> {
        self.shared.log.ensure_open()?;
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
        let mut cx = self.publishing::<E>()?;
        let id = cx.emit(event)?;
        let span = tracing::info_span!("whizbang.dispatch", message_type = E::NAME, event_id = %id);
        self.shared
            .commit(std::mem::take(&mut cx.pending))
            .instrument(span)
            .await?;
        Ok(id)
    }

    /// The context a scope's own publish of an `E` emits through.
    fn publishing<E: Event>(&self) -> Result<Context> {
        self.shared.log.ensure_open()?;
        Ok(Context::for_message::<E>(
            Arc::clone(&self.shared),
            MessageId::new(),
            self.shared.scope_id,
            None,
            Metadata::default(),
        ))
    }

    /// Like [`publish`](Self::publish), requiring the stream to be at `expected`.
    ///
    /// # Errors
    /// As [`publish`](Self::publish), and [`Error::Concurrency`].
    pub async fn publish_expecting<E: Event>(
        &self,
        event: E,
        expected: crate::message::ExpectedVersion,
    ) -> Result<EventId> {
        let mut cx = self.publishing::<E>()?;
        let id = cx.emit_expecting(event, expected)?;
        self.shared.commit(std::mem::take(&mut cx.pending)).await?;
        Ok(id)
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
            self.log.ensure_open()?;
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
            self.log.ensure_open()?;
            let tracker = &rt.sync.tracker;
            let tracked = Tracked {
                tracker,
                ids: tracker.track_new(&rt.registry, &all),
            };
            // Inline perspectives apply in the append's transaction when the
            // store can (and no receptor must run around their apply).
            let inline = if rt.has_flush_stage_receptors {
                None
            } else {
                InlineFold::for_append(
                    |ty| rt.registry.perspectives_for(ty),
                    rt.engine.model_format,
                    &all,
                )
            };
            let (stored, applied) = match &inline {
                Some(fold) => {
                    let out = self.runtime.event_store().append_inline(all, fold).await?;
                    (out.events, out.applied)
                }
                None => (self.runtime.event_store().append(all).await?, Vec::new()),
            };
            // 3. Stored: from here on, no `.await`, so a future dropped now
            // cannot lose the queue.
            tracked.disarm();
            if let Some(fold) = inline {
                self.applied_inline(fold.finish(&applied), &stored);
            }
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

    /// After an append that applied inline perspectives in its transaction:
    /// tells the listeners (waiters wake), records failures for
    /// `complete()`, and notes each target's stream version so the flush
    /// does not claim it again.
    fn applied_inline(
        &self,
        done: Vec<(InlineTarget, InlineOutcome)>,
        stored: &[Arc<StoredEvent>],
    ) {
        let rt = &self.runtime.inner;
        for (target, outcome) in done {
            if let Some(report) = &outcome.report {
                rt.engine.notify(report);
            }
            if let Some(error) = outcome.error {
                self.record_failure(error);
            }
            let upto = stored
                .iter()
                .filter(|e| e.stream_id == target.key)
                .map(|e| e.stream_version)
                .max()
                .unwrap_or_default();
            self.note_inline(target.perspective, target.key, upto);
        }
    }

    /// Queues appended events in the scope's event log. If the scope completed meanwhile
    /// (a race with `complete`), they are flushed on a spawned task rather
    /// than dropped.
    fn record(self: &Arc<Self>, stored: &[Arc<StoredEvent>]) {
        if self.log.queue(stored).is_err() {
            FlushRun::new(Arc::clone(self), stored.to_vec()).spawn();
        }
    }
}

//! Flushing a scope: the cancel-safe flush run (its stages and perspectives,
//! event by event when receptors fire around perspectives), `complete()`, the
//! flush of a dropped scope, and the flush before a wait.

use super::scope::{Scope, ScopeShared};
use crate::error::{Error, Result};
use crate::message::StreamId;
use crate::perspective::PerspectiveMode;
use crate::perspective::PerspectiveRegistration;
use crate::registry::Registry;
use crate::stage::LifecycleStage;
use crate::store::{BoxFuture, EventLocation, StoredEvent};
use crate::sync::{PerspectiveSyncAwaiter, SyncScope};
use std::collections::hash_map::{Entry, HashMap};
use std::collections::VecDeque;
use std::sync::Arc;

impl Scope {
    /// Completes the unit of work: inline perspectives apply now (those an
    /// append already applied in its transaction are not claimed again),
    /// async ones are signalled. Afterwards nothing more can be sent through
    /// this scope.
    /// Completing twice is harmless.
    ///
    /// Cancel-safe: dropped before it finishes (a timeout, a client that went
    /// away), the rest of its flush goes on on a spawned task, which
    /// [`Runtime::wait_idle`](crate::Runtime::wait_idle) waits for; nothing queued is lost.
    ///
    /// # Errors
    /// [`Error::PerspectiveFailed`] when an inline perspective failed during any
    /// of this scope's flushes (also the ones before waits and `send_and_sync`,
    /// which do not fail those), or a perspective-stage receptor's error. Every
    /// other perspective was still applied.
    pub async fn complete(&self) -> Result<()> {
        let own = match self.shared.log.complete() {
            Some(events) => FlushRun::new(Arc::clone(&self.shared), events).run().await,
            None => Ok(()),
        };
        match self.shared.take_failure() {
            Some(earlier) => Err(earlier),
            None => own,
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let Some(events) = self.shared.log.complete() else {
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
            match self {
                Step::All(events) => flush_perspectives(&shared, &events).await,
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
                    flush_perspectives(&shared, one).await?;
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
pub(super) struct FlushRun {
    shared: Arc<ScopeShared>,
    current: Option<BoxFuture<'static, Result<()>>>,
    plan: VecDeque<Step>,
    first_error: Option<Error>,
    /// Already on its own task: dropped (runtime shutting down), it cannot hand
    /// its work on again.
    spawned: bool,
}

impl FlushRun {
    pub(super) fn new(shared: Arc<ScopeShared>, events: Vec<Arc<StoredEvent>>) -> FlushRun {
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
    pub(super) async fn run(mut self) -> Result<()> {
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
    pub(super) fn spawn(mut self) {
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

impl SyncScope for ScopeShared {
    fn emitted(&self) -> Vec<EventLocation> {
        self.emitted_snapshot()
    }

    fn emitted_len(&self) -> usize {
        ScopeShared::emitted_len(self)
    }

    fn flush_queued(self: Arc<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { ScopeShared::flush_queued(&self).await })
    }
}

impl ScopeShared {
    /// An awaiter bound to this scope: its filters may use `current_scope()`,
    /// and a wait flushes what the scope queued first.
    pub(crate) fn sync_awaiter(self: &Arc<Self>) -> PerspectiveSyncAwaiter {
        let scope: Arc<dyn SyncScope> = Arc::clone(self) as _;
        PerspectiveSyncAwaiter::new(Arc::clone(&self.runtime.inner.sync), Some(scope))
    }

    /// Flushes what is queued now, keeping the scope open. A failure (an inline
    /// perspective of some other event failing) is not this caller's: it is
    /// recorded for `complete()`, and `Ok` is returned. Cancel-safe, as
    /// `complete()` is.
    pub(crate) async fn flush_queued(self: &Arc<Self>) -> Result<()> {
        let events = self.log.take_queued();
        if events.is_empty() {
            return Ok(());
        }
        if let Err(e) = FlushRun::new(Arc::clone(self), events).run().await {
            tracing::debug!(scope = %self.scope_id, error = %e, "flush before a wait failed; complete() reports it");
            self.record_failure(e);
        }
        Ok(())
    }
}

/// The (perspective, stream) pairs touched by `events`, in first-emission
/// order, each with the highest stream version among those events. Linear in
/// the events (a set keyed by perspective name and stream).
pub(super) fn touched_upto(
    registry: &Registry,
    events: &[Arc<StoredEvent>],
) -> Vec<(&'static PerspectiveRegistration, StreamId, u64)> {
    let mut index: HashMap<(&'static str, StreamId), usize> = HashMap::new();
    let mut keys: Vec<(&'static PerspectiveRegistration, StreamId, u64)> = Vec::new();
    for ev in events {
        for p in registry.perspectives_for(&ev.event_type) {
            match index.entry((p.name, ev.stream_id)) {
                Entry::Occupied(slot) => {
                    let key = &mut keys[*slot.get()];
                    key.2 = key.2.max(ev.stream_version);
                }
                Entry::Vacant(slot) => {
                    slot.insert(keys.len());
                    keys.push((p, ev.stream_id, ev.stream_version));
                }
            }
        }
    }
    keys
}

/// The (perspective, stream) pairs touched by `events`, in first-emission order.
pub(super) fn touched(
    registry: &Registry,
    events: &[Arc<StoredEvent>],
) -> Vec<(&'static PerspectiveRegistration, StreamId)> {
    touched_upto(registry, events)
        .into_iter()
        .map(|(p, s, _)| (p, s))
        .collect()
}

/// Applies inline perspectives now, each up to the highest version of its
/// stream among `events` (never past them: a later event is flushed on its
/// own, with its own stages), and signals the runner for async ones.
/// Inline ones the append already applied in its transaction are not claimed
/// again. Every key is attempted; the first failure is returned.
pub(super) async fn flush_perspectives(
    shared: &ScopeShared,
    events: &[Arc<StoredEvent>],
) -> Result<()> {
    let rt = &shared.runtime.inner;
    let mut first_error = None;
    for (reg, stream, upto) in touched_upto(&rt.registry, events) {
        match reg.mode {
            PerspectiveMode::Inline => {
                if shared.applied_inline_upto(reg.name, stream, upto) {
                    continue;
                }
                if let Err(e) = rt.engine.catch_up_to(reg, stream, upto).await {
                    first_error.get_or_insert(e);
                }
            }
            PerspectiveMode::Async => rt.runner.signal_flushed(reg, stream, events),
        }
    }
    first_error.map_or(Ok(()), Err)
}

//! Running event receptors at their lifecycle stages, with their sync waits.

use super::context::Context;
use super::runtime::{DetachedFailure, Route};
use super::scope::{Scope, ScopeShared};
use crate::error::{Error, Result};
use crate::stage::{LifecycleStage, SyncFire};
use crate::store::{StoredEvent, StreamAppend};
use crate::sync::{Candidate, PerspectiveSyncOptions, SyncFilter, SyncResult};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

impl ScopeShared {
    /// The receptors of `ev`'s type that fire at `stage`, in registry order.
    pub(crate) fn routes<'r>(
        &'r self,
        ev: &StoredEvent,
        stage: LifecycleStage,
    ) -> impl Iterator<Item = &'r Route> + 'r {
        self.runtime
            .inner
            .event_receptors
            .get(&*ev.event_type)
            .into_iter()
            .flatten()
            .filter(move |(_, reg)| reg.effective_stage() == stage)
    }

    /// Runs one event receptor on `ev` (after its sync waits) and returns what it emitted.
    pub(crate) async fn run_receptor(
        self: &Arc<Self>,
        route: &Route,
        ev: &StoredEvent,
    ) -> Result<Vec<StreamAppend>> {
        let (receptor, reg) = route;
        let span = tracing::debug_span!(
            "whizbang.receptor",
            receptor = reg.receptor,
            message_type = reg.message_name,
            event_id = %ev.event_id,
        );
        async move {
            let mut message = receptor.decode(ev)?;
            let mut cx = Context {
                scope: Arc::clone(self),
                message_id: ev.event_id.into(),
                message_type: reg.message_name,
                correlation_id: ev.metadata.correlation_id,
                causation_id: ev.metadata.causation_id,
                metadata: ev.metadata.extra.clone(),
                pending: Vec::new(),
                sync_results: Vec::new(),
                receptor: Some(*reg),
            };
            cx.sync_results = self.await_requirements(route, Some(ev)).await?;
            receptor.call(&mut *message, &mut cx).await?;
            Ok(cx.pending)
        }
        .instrument(span)
        .await
    }

    /// Waits for every `#[await_perspective_sync]` of a receptor. With no event
    /// types, a requirement awaits the incoming event (`ev`); otherwise the
    /// scope's events of those types. `OnSuccess` turns a miss into an error.
    pub(crate) async fn await_requirements(
        self: &Arc<Self>,
        route: &Route,
        ev: Option<&StoredEvent>,
    ) -> Result<Vec<SyncResult>> {
        let (_, reg) = route;
        if reg.sync.is_empty() {
            return Ok(Vec::new());
        }
        let registry = &self.runtime.inner.registry;
        let awaiter = self.sync_awaiter();
        let emitted = self.log.with_events(<[_]>::to_vec);
        let mut results = Vec::with_capacity(reg.sync.len());
        for req in reg.sync {
            let perspective = registry
                .perspective_by_type((req.perspective_type)())
                .ok_or_else(|| Error::UnknownPerspective {
                    name: req.perspective.to_owned(),
                })?;
            // With no event types: the incoming event, else every event the
            // scope emitted; with types: the scope's events of those types.
            let (filter, events): (SyncFilter, &[Arc<StoredEvent>]) =
                match (req.event_types.is_empty(), ev) {
                    (true, Some(ev)) => (SyncFilter::event_ids([ev.event_id]), &[]),
                    (true, None) => (SyncFilter::all(), &emitted),
                    (false, _) => (SyncFilter::for_event_type_names(req.event_types), &emitted),
                };
            let mut candidates: Vec<Candidate> =
                events.iter().map(|e| Candidate::stored(e)).collect();
            if let Some(ev) = ev.filter(|_| req.event_types.is_empty()) {
                candidates.push(Candidate::stored(ev));
            }
            let timeout = Duration::from_millis(req.timeout_ms);
            let options = PerspectiveSyncOptions::default()
                .timeout(timeout)
                .trigger(req.trigger);
            let result = awaiter
                .await_events(perspective, &filter, candidates, &options, emitted.len())
                .await?;
            if req.fire == SyncFire::OnSuccess && !result.is_synced() {
                tracing::warn!(
                    receptor = reg.receptor, perspective = req.perspective, outcome = ?result.outcome,
                    "perspective sync did not succeed; the receptor does not run"
                );
            }
            if req.fire == SyncFire::OnSuccess {
                result.clone().into_result()?;
            }
            results.push(result);
        }
        Ok(results)
    }

    /// Runs a receptor on its own task, in a child scope that completes after it.
    pub(crate) fn spawn_detached(self: &Arc<Self>, route: &Route, ev: Arc<StoredEvent>) {
        let guard = self.runtime.inner.runner.track();
        let parent = Arc::clone(self);
        let route = route.clone();
        let task = async move {
            let _guard = guard;
            let child = Scope::new(parent.runtime.clone());
            let work = async {
                // Waits see the parent's events; what the receptor emits goes to the child.
                let pending = parent.run_receptor(&route, &ev).await?;
                child.shared.commit(pending).await?;
                child.complete().await
            };
            // A panic in the receptor is a failure like an error: counted and
            // handed to the hook, not a task that silently vanished.
            let result = match crate::util::CatchUnwind(Box::pin(work)).await {
                Ok(result) => result,
                Err(panic) => Err(Error::handler(format!(
                    "the detached receptor panicked: {panic}"
                ))),
            };
            if let Err(error) = result {
                parent.runtime.report_detached_failure(&DetachedFailure {
                    receptor: route.1.path(),
                    event_id: ev.event_id,
                    event_type: ev.event_type.to_string(),
                    error,
                });
            }
        };
        tokio::spawn(task);
    }

    /// Fires the receptors of `ev` at `stages` (flush-time stages): inline ones in a
    /// child scope completed before returning, detached ones on their own tasks.
    pub(crate) async fn fire_in_child(
        self: &Arc<Self>,
        ev: &Arc<StoredEvent>,
        stages: &[LifecycleStage],
    ) -> Result<()> {
        for stage in stages {
            let routes: Vec<Route> = self.routes(ev, *stage).cloned().collect();
            for route in routes {
                if stage.is_inline() {
                    let child = Scope::new(self.runtime.clone());
                    let pending = child.shared.run_receptor(&route, ev).await?;
                    child.shared.commit(pending).await?;
                    child.complete().await?;
                } else {
                    self.spawn_detached(&route, Arc::clone(ev));
                }
            }
        }
        Ok(())
    }
}

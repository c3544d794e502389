//! The scoped perspective invoker: queues a scope's events while it runs and
//! flushes them to every perspective that handles them when it completes.

use super::runner::PerspectiveRunner;
use crate::error::{Error, Result};
use crate::message::StreamId;
use crate::perspective::engine::Engine;
use crate::perspective::PerspectiveMode;
use crate::registry::{PerspectiveRegistration, Registry};
use crate::store::StoredEvent;
use crate::util::lock;
use std::collections::hash_map::{Entry, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    /// Every event the scope appended, in order; `events[flushed..]` is queued.
    events: Vec<Arc<StoredEvent>>,
    flushed: usize,
    completed: bool,
}

/// Thread-safe log of the events a scope appended, in emission order, and the
/// queue of those not yet flushed to perspectives.
#[derive(Default)]
pub(crate) struct Invoker {
    state: Mutex<State>,
}

impl Invoker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Records and queues events; [`Error::ScopeCompleted`] (and nothing queued)
    /// once completed.
    pub(crate) fn queue(&self, events: &[Arc<StoredEvent>]) -> Result<()> {
        let mut s = self.state();
        if s.completed {
            return Err(Error::ScopeCompleted);
        }
        s.events.extend(events.iter().cloned());
        Ok(())
    }

    pub(crate) fn ensure_open(&self) -> Result<()> {
        if self.state().completed {
            Err(Error::ScopeCompleted)
        } else {
            Ok(())
        }
    }

    pub(crate) fn queued_len(&self) -> usize {
        let s = self.state();
        s.events.len() - s.flushed
    }

    /// Every event appended through the scope.
    pub(crate) fn with_events<R>(&self, f: impl FnOnce(&[Arc<StoredEvent>]) -> R) -> R {
        f(&self.state().events)
    }

    /// Takes what is queued without completing (a partial flush).
    pub(crate) fn take_queued(&self) -> Vec<Arc<StoredEvent>> {
        let mut s = self.state();
        let from = s.flushed;
        s.flushed = s.events.len();
        s.events[from..].to_vec()
    }

    /// Marks the scope completed and takes what is queued. `None` when it already was.
    pub(crate) fn complete(&self) -> Option<Vec<Arc<StoredEvent>>> {
        let mut s = self.state();
        if s.completed {
            return None;
        }
        s.completed = true;
        let from = s.flushed;
        s.flushed = s.events.len();
        Some(s.events[from..].to_vec())
    }
}

/// The (perspective, stream) pairs touched by `events`, in first-emission
/// order, each with the highest stream version among those events. Linear in
/// the events (a set keyed by perspective name and stream).
fn touched_upto(
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
pub(crate) fn touched(
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
/// Every key is attempted; the first failure is returned.
pub(crate) async fn flush(
    registry: &Registry,
    engine: &Engine,
    runner: &PerspectiveRunner,
    events: &[Arc<StoredEvent>],
) -> Result<()> {
    let mut first_error = None;
    for (reg, stream, upto) in touched_upto(registry, events) {
        match reg.mode {
            PerspectiveMode::Inline => {
                if let Err(e) = engine.catch_up_to(reg, stream, upto).await {
                    first_error.get_or_insert(e);
                }
            }
            PerspectiveMode::Async => runner.signal(reg, stream),
        }
    }
    first_error.map_or(Ok(()), Err)
}

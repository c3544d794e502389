//! The scoped perspective invoker: queues a scope's events while it runs and
//! flushes them to every perspective that handles them when it completes.

use super::runner::PerspectiveRunner;
use crate::error::{Error, Result};
use crate::message::StreamId;
use crate::perspective::engine::Engine;
use crate::perspective::PerspectiveMode;
use crate::registry::{PerspectiveRegistration, Registry};
use crate::store::StoredEvent;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Default)]
struct State {
    queued: Vec<Arc<StoredEvent>>,
    completed: bool,
}

/// Thread-safe queue of the events a scope emitted, in emission order.
#[derive(Default)]
pub(crate) struct Invoker {
    state: Mutex<State>,
}

impl Invoker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues events; [`Error::ScopeCompleted`] (and nothing queued) once completed.
    pub(crate) fn queue(&self, events: &[Arc<StoredEvent>]) -> Result<()> {
        let mut s = self.state();
        if s.completed {
            return Err(Error::ScopeCompleted);
        }
        s.queued.extend(events.iter().cloned());
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
        self.state().queued.len()
    }

    /// Marks the scope completed and takes what is queued. `None` when it already was.
    pub(crate) fn complete(&self) -> Option<Vec<Arc<StoredEvent>>> {
        let mut s = self.state();
        if s.completed {
            return None;
        }
        s.completed = true;
        Some(std::mem::take(&mut s.queued))
    }
}

/// The (perspective, stream) pairs touched by `events`, in first-emission order.
pub(crate) fn touched(
    registry: &Registry,
    events: &[Arc<StoredEvent>],
) -> Vec<(&'static PerspectiveRegistration, StreamId)> {
    let mut keys: Vec<(&'static PerspectiveRegistration, StreamId)> = Vec::new();
    for ev in events {
        for p in registry.perspectives_for(&ev.event_type) {
            if !keys
                .iter()
                .any(|(k, s)| std::ptr::eq(*k, *p) && *s == ev.stream_id)
            {
                keys.push((p, ev.stream_id));
            }
        }
    }
    keys
}

/// Applies inline perspectives now and signals the runner for async ones.
/// Every key is attempted; the first failure is returned.
pub(crate) async fn flush(
    registry: &Registry,
    engine: &Engine,
    runner: &PerspectiveRunner,
    events: &[Arc<StoredEvent>],
) -> Result<()> {
    let mut first_error = None;
    for (reg, stream) in touched(registry, events) {
        match reg.mode {
            PerspectiveMode::Inline => {
                if let Err(e) = engine.catch_up(reg, stream).await {
                    first_error.get_or_insert(e);
                }
            }
            PerspectiveMode::Async => runner.signal(reg, stream),
        }
    }
    first_error.map_or(Ok(()), Err)
}

//! The scope: one unit of work's own state (its runtime, id, event log and queue
//! and the failure its flushes had nobody to report to) and what reads it.
//! What a scope does lives in the files of its data path: sending and
//! committing (`send.rs`), flushing (`flush.rs`), `send_and_sync.rs`.
//! Imports neither of them, nor `context.rs`.

use super::runtime::Runtime;
use crate::error::{Error, Result};
use crate::message::{MessageId, StreamId};
use crate::store::EventLocation;
use crate::store::StoredEvent;
use crate::sync::{PerspectiveSyncAwaiter, ScopedEventTracker};
use crate::util::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) struct ScopeShared {
    pub(crate) runtime: Runtime,
    pub(crate) scope_id: MessageId,
    pub(crate) log: EventLog,
    /// The first failure of a flush that had nobody to report it to (a flush
    /// before a wait, a flush finished on a spawned task): `complete()` reports it.
    pub(super) flush_failure: Mutex<Option<Error>>,
    /// (perspective, stream) pairs an append already applied inline (in its
    /// transaction), with the stream version it applied up to: the flush
    /// does not claim them again up to there.
    inline_applied: Mutex<HashMap<(&'static str, StreamId), u64>>,
}

/// One unit of work (a request, an inbound message).
///
/// Commands sent and events published through a scope are appended at once;
/// their perspectives are applied when the scope completes: inline ones before
/// [`complete`](Scope::complete) returns, async ones by the runner. An event
/// store that implements
/// [`EventStore::append_inline`](crate::store::EventStore::append_inline)
/// (PostgreSQL) applies inline ones earlier, in the send's own append
/// transaction, unless a receptor fires at a perspective stage. A scope
/// dropped without completing still flushes (on a spawned task) and logs a warning.
pub struct Scope {
    pub(crate) shared: Arc<ScopeShared>,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("scope_id", &self.shared.scope_id)
            .field("queued", &self.shared.log.queued_len())
            .finish()
    }
}

impl Scope {
    pub(crate) fn new(runtime: Runtime) -> Scope {
        Scope {
            shared: Arc::new(ScopeShared {
                runtime,
                scope_id: MessageId::new(),
                log: EventLog::default(),
                flush_failure: Mutex::new(None),
                inline_applied: Mutex::new(HashMap::new()),
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

    /// An awaiter bound to this scope: its filters may use `current_scope()`.
    #[must_use]
    pub fn sync_awaiter(&self) -> PerspectiveSyncAwaiter {
        self.shared.sync_awaiter()
    }

    /// What this scope emitted.
    #[must_use]
    pub fn tracker(&self) -> ScopedEventTracker {
        ScopedEventTracker::new(self.shared.emitted_snapshot())
    }

    /// Every event this scope has appended so far, in order.
    #[must_use]
    pub fn emitted(&self) -> Vec<EventLocation> {
        self.shared.emitted_snapshot()
    }

    /// Whether [`complete`](Self::complete) ran.
    #[must_use]
    pub fn is_completed(&self) -> bool {
        self.shared.log.ensure_open().is_err()
    }
}

impl ScopeShared {
    /// Every event appended through the scope, in order.
    pub(crate) fn emitted_snapshot(&self) -> Vec<EventLocation> {
        self.log.with_events(|events| {
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
        self.log.with_events(<[_]>::len)
    }

    /// Records a flush failure for `complete()` to report (the first one wins).
    pub(crate) fn record_failure(&self, error: Error) {
        lock(&self.flush_failure).get_or_insert(error);
    }

    pub(super) fn take_failure(&self) -> Option<Error> {
        lock(&self.flush_failure).take()
    }

    /// Notes that an append applied `perspective` on `stream` up to `version`
    /// in its own transaction.
    pub(super) fn note_inline(&self, perspective: &'static str, stream: StreamId, version: u64) {
        let mut applied = lock(&self.inline_applied);
        let at = applied.entry((perspective, stream)).or_default();
        *at = (*at).max(version);
    }

    /// Whether an append already applied `perspective` on `stream` up to
    /// `version` (so a flush has nothing to do there).
    pub(super) fn applied_inline_upto(
        &self,
        perspective: &'static str,
        stream: StreamId,
        version: u64,
    ) -> bool {
        let applied = lock(&self.inline_applied);
        !applied.is_empty()
            && applied
                .get(&(perspective, stream))
                .is_some_and(|v| *v >= version)
    }
}

impl Runtime {
    /// Opens a unit of work.
    #[must_use]
    pub fn scope(&self) -> Scope {
        Scope::new(self.clone())
    }
}

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
pub(crate) struct EventLog {
    state: Mutex<State>,
}

impl EventLog {
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

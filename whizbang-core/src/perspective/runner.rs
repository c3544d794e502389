//! The background runner for async perspectives.
//!
//! Signalled with (perspective, stream) pairs, it brings each up to date on a
//! tokio task, at most `concurrency` at a time; different streams run in
//! parallel, one stream's events always apply in order (the store's claim
//! serialises them). It can be paused, and awaited until idle. A
//! perspective whose strategy is not realtime is held back per its
//! [`SyncStrategy`](super::strategy::SyncStrategy) (a schedule task per perspective).

mod held;

use super::engine::Engine;
use crate::error::Error;
use crate::message::StreamId;
use crate::perspective::PerspectiveRegistration;
use crate::util::lock;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

type Key = (&'static str, StreamId);

struct Shared {
    engine: Engine,
    queued: Mutex<HashSet<Key>>,
    permits: Semaphore,
    paused: watch::Sender<bool>,
    in_flight: watch::Sender<usize>,
    handle: tokio::runtime::Handle,
    /// Work of perspectives whose strategy holds it back.
    held: held::Held,
}

/// Handle to the async perspective runner of a [`Runtime`](crate::Runtime).
#[derive(Clone)]
pub struct PerspectiveRunner {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PerspectiveRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerspectiveRunner")
            .field("paused", &self.is_paused())
            .field("in_flight", &*self.shared.in_flight.borrow())
            .finish()
    }
}

impl PerspectiveRunner {
    pub(crate) fn new(engine: Engine, concurrency: usize, handle: tokio::runtime::Handle) -> Self {
        PerspectiveRunner {
            shared: Arc::new(Shared {
                engine,
                queued: Mutex::new(HashSet::new()),
                permits: Semaphore::new(concurrency.max(1)),
                paused: watch::Sender::new(false),
                in_flight: watch::Sender::new(0),
                handle,
                held: held::Held::default(),
            }),
        }
    }

    /// Stops applying (work signalled meanwhile waits) until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Resumes applying.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Whether the runner is paused.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        *self.shared.paused.borrow()
    }

    /// Waits until no work is queued or running.
    pub async fn wait_idle(&self) {
        let mut rx = self.shared.in_flight.subscribe();
        // `wait_for` only errors when the sender is dropped, and we hold it.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Counts a piece of perspective work done outside the runner (the flush of a
    /// dropped scope) towards [`wait_idle`](Self::wait_idle) until the guard drops.
    pub(crate) fn track(&self) -> WorkGuard {
        self.shared.in_flight.send_modify(|n| *n += 1);
        WorkGuard {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Asks the runner to bring (`reg`, `stream`) up to date.
    pub(crate) fn signal(&self, reg: &'static PerspectiveRegistration, stream: StreamId) {
        let stream = run_key(reg, stream);
        // Held back by its strategy, keyed or not: a wait that found stored
        // work signals here, and must not run the perspective early (only
        // `trigger` does, on the waiting task).
        if !reg.strategy.is_realtime() {
            return held::hold(&self.shared, reg, stream, 0);
        }
        self.queue(reg, stream);
    }

    /// Runs (`reg`, `stream`) now whatever its strategy says (a wait that
    /// triggers runs found its events still pending): one catch-up queued
    /// at a time, as for a realtime perspective; a paused runner runs it
    /// once resumed.
    pub(crate) fn run_now(&self, reg: &'static PerspectiveRegistration, stream: StreamId) {
        self.queue(reg, run_key(reg, stream));
    }

    /// Queues a catch-up of (`reg`, `stream`) unless one is queued already.
    fn queue(&self, reg: &'static PerspectiveRegistration, stream: StreamId) {
        let key = (reg.name, stream);
        if !lock(&self.shared.queued).insert(key) {
            return; // already queued and not yet started: it will see these events
        }
        // The guard moves into the task: however the task ends (done, cancelled
        // with the tokio runtime, or an unexpected panic), `wait_idle` is released.
        let guard = self.track();
        let shared = Arc::clone(&self.shared);
        self.shared.handle.spawn(run(shared, reg, stream, guard));
    }
}

impl PerspectiveRunner {
    /// [`signal`](Self::signal) after a flush of `events`: for a held-back
    /// perspective, its events among them count towards what its strategy
    /// sees pending.
    pub(crate) fn signal_flushed(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        events: &[Arc<crate::store::StoredEvent>],
    ) {
        if reg.strategy.is_realtime() {
            return self.signal(reg, stream);
        }
        let n = held::flushed_for(reg, stream, events);
        held::hold(&self.shared, reg, run_key(reg, stream), n);
    }
}

/// What the runner queues or holds for (`reg`, `stream`): the stream, or,
/// for a keyed perspective, its one cursor
/// ([`KEYED_CURSOR`](crate::perspective::KEYED_CURSOR)): one run covers every
/// stream, and its held work is counted in one place (a wait that finds
/// events held must find them under the key the flush held them under, or
/// it would count them again and make its strategy run early).
fn run_key(reg: &PerspectiveRegistration, stream: StreamId) -> StreamId {
    if reg.is_keyed() {
        crate::perspective::KEYED_CURSOR
    } else {
        stream
    }
}

impl held::Runs for Shared {
    fn held(&self) -> &held::Held {
        &self.held
    }

    fn run(
        &self,
        reg: &'static PerspectiveRegistration,
        streams: Vec<StreamId>,
    ) -> crate::store::BoxFuture<'_, Vec<StreamId>> {
        Box::pin(async move {
            let mut paused = self.paused.subscribe();
            let _ = paused.wait_for(|p| !*p).await;
            let Ok(_permit) = self.permits.acquire().await else {
                return streams;
            };
            self.in_flight.send_modify(|n| *n += 1);
            // Released however the run ends (done, or dropped with the tokio runtime).
            let _done = InFlight(&self.in_flight);
            held::catch_up_held(&self.engine, reg, &streams).await
        })
    }

    fn spawn(&self, task: crate::store::BoxFuture<'static, ()>) {
        self.handle.spawn(task);
    }
}

/// Counts one run in `in_flight` until dropped.
struct InFlight<'a>(&'a watch::Sender<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

async fn run(
    shared: Arc<Shared>,
    reg: &'static PerspectiveRegistration,
    stream: StreamId,
    _guard: WorkGuard,
) {
    let mut attempt = 0u32;
    loop {
        let mut paused = shared.paused.subscribe();
        let _ = paused.wait_for(|p| !*p).await;
        let Ok(_permit) = shared.permits.acquire().await else {
            break;
        };
        if attempt == 0 {
            // From here on, a new signal for this key queues a new run, which
            // will read any event appended after our read.
            lock(&shared.queued).remove(&(reg.name, stream));
        }
        match shared.engine.catch_up(reg, stream).await {
            Ok(_) | Err(Error::PerspectiveFailed { .. }) => break,
            Err(e) if attempt >= 8 => {
                tracing::error!(
                    perspective = reg.name, stream = %stream, error = %e,
                    "perspective catch-up keeps failing; giving up until the next signal"
                );
                break;
            }
            Err(e) => {
                attempt += 1;
                let delay = Duration::from_millis(50u64.saturating_mul(1 << attempt.min(6)));
                tracing::warn!(
                    perspective = reg.name, stream = %stream, error = %e, attempt,
                    "perspective catch-up failed; retrying in {delay:?}"
                );
                drop(_permit);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Keeps [`PerspectiveRunner::wait_idle`] waiting while alive; dropping it
/// (also while unwinding) releases it.
pub(crate) struct WorkGuard {
    shared: Arc<Shared>,
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        self.shared.in_flight.send_modify(|n| *n -= 1);
    }
}

//! Held-back work: the in-process runner's side of a perspective whose
//! [`SyncStrategy`](crate::perspective::strategy::SyncStrategy) is not
//! realtime.
//!
//! A signal for such a perspective does not start a catch-up: it adds the
//! stream to the perspective's held set and wakes the perspective's
//! scheduler task (one per perspective, started by the first signal). The
//! task asks the strategy with what is pending (signals counted, the age of
//! the oldest, the time since the last run) and sleeps or runs: a run takes
//! up to `max_events` held streams and catches them up together (one
//! transaction where the perspective store claims many models at once, else
//! one by one). Held work counts towards
//! [`PerspectiveRunner::wait_idle`] once its run starts, not while it waits
//! for its strategy (an hourly schedule must not hold `wait_idle` for an
//! hour); a paused runner runs nothing. The task holds the runner weakly and
//! ends with it.

use super::{PerspectiveRunner, Shared, WorkGuard};
use crate::error::Error;
use crate::message::StreamId;
use crate::perspective::engine::Engine;
use crate::perspective::strategy::{Decision, PendingState};
use crate::perspective::PerspectiveRegistration;
use crate::store::StoredEvent;
use crate::util::lock;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;
use tokio::sync::Notify;
use tracing::Instrument;

/// The most streams one catch-up of a held run covers together.
const MAX_TOGETHER: usize = 100;

/// Held work of every held-back perspective.
#[derive(Default)]
pub(super) struct Held {
    perspectives: Mutex<HashMap<&'static str, Arc<One>>>,
}

impl Drop for Held {
    /// Wakes every scheduler task, so each sees the runner gone and ends.
    fn drop(&mut self) {
        let all = self
            .perspectives
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for one in all.values() {
            one.wake.notify_one();
        }
    }
}

/// One perspective's held work and its scheduler's wake-up.
struct One {
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// Held streams, in the order first signalled.
    streams: Vec<StreamId>,
    set: HashSet<StreamId>,
    /// Signals since the last run took them.
    pending: u64,
    /// When the oldest held signal arrived.
    oldest: Option<Instant>,
    /// When the last run started.
    last_run: Option<Instant>,
}

impl PerspectiveRunner {
    /// Asks the runner to bring (`reg`, `stream`) up to date after a flush
    /// of `events`: for a held-back perspective, its events among them count
    /// towards what its strategy sees pending.
    pub(crate) fn signal_flushed(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        events: &[Arc<StoredEvent>],
    ) {
        if reg.strategy.is_realtime() {
            return self.signal(reg, stream);
        }
        let n = events
            .iter()
            .filter(|e| e.stream_id == stream && reg.handles(&e.event_type))
            .count();
        self.hold(reg, stream, n as u64);
    }

    /// Holds (`reg`, `stream`) for `reg`'s strategy to run, counting
    /// `events` more pending (at least one for a stream not held yet: a wait
    /// that found stored work signals without knowing how much).
    pub(super) fn hold(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        events: u64,
    ) {
        let (one, new) = {
            let mut all = lock(&self.shared.held.perspectives);
            match all.get(reg.name) {
                Some(one) => (Arc::clone(one), false),
                None => {
                    let one = Arc::new(One {
                        state: Mutex::new(State::default()),
                        wake: Notify::new(),
                    });
                    all.insert(reg.name, Arc::clone(&one));
                    (one, true)
                }
            }
        };
        {
            let mut state = lock(&one.state);
            let new = state.set.insert(stream);
            if new {
                state.streams.push(stream);
            }
            state.pending += events.max(u64::from(new));
            state.oldest.get_or_insert_with(Instant::now);
        }
        one.wake.notify_one();
        if new {
            let weak = Arc::downgrade(&self.shared);
            self.shared.handle.spawn(schedule(weak, reg, one));
        }
    }
}

/// The scheduler of one held-back perspective: asks its strategy, sleeps or
/// runs, until the runner is gone.
async fn schedule(weak: Weak<Shared>, reg: &'static PerspectiveRegistration, one: Arc<One>) {
    loop {
        let decision = {
            let state = lock(&one.state);
            (!state.streams.is_empty()).then(|| {
                let now = Instant::now();
                reg.strategy.decide_guarded(&PendingState::new(
                    state.pending.max(1),
                    state.oldest.map_or(std::time::Duration::ZERO, |t| now - t),
                    state.last_run.map(|t| now - t),
                ))
            })
        };
        match decision {
            None => one.wake.notified().await,
            Some(Decision::Wait(d)) => {
                tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    () = one.wake.notified() => {}
                }
            }
            Some(Decision::Run { max_events }) => {
                let Some(shared) = weak.upgrade() else { return };
                run(&shared, reg, &one, max_events).await;
            }
        }
        if weak.strong_count() == 0 {
            return;
        }
    }
}

/// One run: up to `max_events` held streams, caught up together.
async fn run(shared: &Arc<Shared>, reg: &'static PerspectiveRegistration, one: &One, max: u32) {
    let mut paused = shared.paused.subscribe();
    let _ = paused.wait_for(|p| !*p).await;
    let Ok(_permit) = shared.permits.acquire().await else {
        return;
    };
    // Counted towards `wait_idle` until the run ends.
    let guard: WorkGuard = PerspectiveRunner {
        shared: Arc::clone(shared),
    }
    .track();
    // Taken under the lock, so a signal arriving during the run is held for
    // the next one.
    let streams = {
        let mut state = lock(&one.state);
        let take = state
            .streams
            .len()
            .min(usize::try_from(max).unwrap_or(usize::MAX));
        let streams: Vec<StreamId> = state.streams.drain(..take).collect();
        for s in &streams {
            state.set.remove(s);
        }
        state.last_run = Some(Instant::now());
        if state.streams.is_empty() {
            state.pending = 0;
            state.oldest = None;
        } else {
            state.pending = state.pending.saturating_sub(streams.len() as u64);
            state.oldest = Some(Instant::now());
        }
        streams
    };
    // If this run is dropped half-way (the tokio runtime shutting down), its
    // streams are not lost: their events stay stored and unapplied, and any
    // later signal or wait finds them.
    let span = tracing::debug_span!(
        "whizbang.perspective.held_run",
        perspective = reg.name,
        streams = streams.len(),
        strategy = %reg.strategy.describe(),
    );
    let retry = catch_up_held(&shared.engine, reg, &streams)
        .instrument(span)
        .await;
    // A stream that failed for a reason other than its perspective (a
    // backend error) is held again: the strategy runs it again.
    let runner = PerspectiveRunner {
        shared: Arc::clone(shared),
    };
    for stream in retry {
        runner.hold(reg, stream, 1);
    }
    drop(guard);
}

/// Catches `streams` up, together where the store can; returns the streams
/// that failed with a backend error (a failed cursor is recorded, not
/// returned).
async fn catch_up_held(
    engine: &Engine,
    reg: &'static PerspectiveRegistration,
    streams: &[StreamId],
) -> Vec<StreamId> {
    let mut retry = Vec::new();
    for chunk in streams.chunks(MAX_TOGETHER) {
        let together = if chunk.len() > 1 {
            engine.catch_up_together(reg, chunk).await
        } else {
            Ok(None)
        };
        if matches!(together, Ok(Some(_))) {
            continue;
        }
        for stream in chunk {
            match engine.catch_up(reg, *stream).await {
                Ok(_) | Err(Error::PerspectiveFailed { .. }) => {}
                Err(e) => {
                    tracing::warn!(
                        perspective = reg.name, stream = %stream, error = %e,
                        "held catch-up failed; the stream is held for the next run"
                    );
                    retry.push(*stream);
                }
            }
        }
    }
    retry
}

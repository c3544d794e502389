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
//! one by one). A keyed perspective's work is held under its one cursor
//! ([`KEYED_CURSOR`](crate::perspective::KEYED_CURSOR)), whatever stream a
//! flush or a wait signalled: its run catches the cursor up on everything
//! stored. Held work counts towards the runner's `wait_idle` once its
//! run starts, not while it waits
//! for its strategy (an hourly schedule must not hold `wait_idle` for an
//! hour); a paused runner runs nothing. The task holds the runner weakly and
//! ends with it. This file knows the runner only through [`Runs`].

use crate::error::Error;
use crate::message::StreamId;
use crate::perspective::engine::Engine;
use crate::perspective::strategy::{Decision, PendingState};
use crate::perspective::PerspectiveRegistration;
use crate::store::{BoxFuture, StoredEvent};
use crate::util::lock;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;
use tokio::sync::Notify;
use tracing::Instrument;

/// The most streams one catch-up of a held run covers together.
const MAX_TOGETHER: usize = 100;

/// What the scheduler needs of the runner.
pub(super) trait Runs: Send + Sync + 'static {
    /// The held work.
    fn held(&self) -> &Held;
    /// Runs `reg` on `streams` now (waiting while paused, counted for
    /// `wait_idle`); returns the streams to hold again (a backend error).
    fn run(
        &self,
        reg: &'static PerspectiveRegistration,
        streams: Vec<StreamId>,
    ) -> BoxFuture<'_, Vec<StreamId>>;
    /// Starts `task` on the runner's tokio runtime.
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

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

/// How many of `events` (a flush) are `reg`'s on `stream`.
pub(super) fn flushed_for(
    reg: &PerspectiveRegistration,
    stream: StreamId,
    events: &[Arc<StoredEvent>],
) -> u64 {
    events
        .iter()
        .filter(|e| e.stream_id == stream && reg.handles(&e.event_type))
        .count() as u64
}

/// Holds (`reg`, `stream`) for `reg`'s strategy to run, counting `events`
/// more pending (at least one for a stream not held yet: a wait that found
/// stored work signals without knowing how much). The first hold of a
/// perspective starts its scheduler.
pub(super) fn hold<R: Runs>(
    runner: &Arc<R>,
    reg: &'static PerspectiveRegistration,
    stream: StreamId,
    events: u64,
) {
    let (one, new) = {
        let mut all = lock(&runner.held().perspectives);
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
        let added = state.set.insert(stream);
        if added {
            state.streams.push(stream);
        }
        state.pending += events.max(u64::from(added));
        state.oldest.get_or_insert_with(Instant::now);
    }
    one.wake.notify_one();
    if new {
        let weak = Arc::downgrade(runner);
        runner.spawn(Box::pin(schedule(weak, reg, one)));
    }
}

/// The scheduler of one held-back perspective: asks its strategy, sleeps or
/// runs, until the runner is gone.
async fn schedule<R: Runs>(weak: Weak<R>, reg: &'static PerspectiveRegistration, one: Arc<One>) {
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
                let Some(runner) = weak.upgrade() else { return };
                let streams = take(&one, max_events);
                let span = tracing::debug_span!(
                    "whizbang.perspective.held_run",
                    perspective = reg.name,
                    streams = streams.len(),
                    strategy = %reg.strategy.describe(),
                );
                let retry = runner.run(reg, streams).instrument(span).await;
                // A stream that failed for a reason other than its
                // perspective (a backend error) is held again.
                for stream in retry {
                    hold(&runner, reg, stream, 1);
                }
            }
        }
        if weak.strong_count() == 0 {
            return;
        }
    }
}

/// Takes up to `max` held streams for a run, under the lock: a signal
/// arriving during the run is held for the next one.
fn take(one: &One, max: u32) -> Vec<StreamId> {
    let mut state = lock(&one.state);
    let n = state
        .streams
        .len()
        .min(usize::try_from(max).unwrap_or(usize::MAX));
    let streams: Vec<StreamId> = state.streams.drain(..n).collect();
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
}

/// Catches `streams` up, together where the store can; returns the streams
/// that failed with a backend error (a failed cursor is recorded, not
/// returned).
pub(super) async fn catch_up_held(
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

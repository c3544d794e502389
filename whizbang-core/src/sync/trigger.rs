//! Waits on a perspective whose strategy holds work back: by default a wait
//! waits for the strategy's next run (the runner's schedule); with
//! [`PerspectiveSyncOptions::trigger`] it runs the perspective on the
//! awaited streams now, on the waiting task, and says so in the result.
//!
//! The help-along of `send_and_sync` (which runs realtime catch-ups on the
//! calling task) leaves held-back perspectives alone: it must not turn a
//! batch or scheduled perspective into a realtime one. Only `trigger` runs
//! one early.

use super::{PerspectiveSyncOptions, StrategyRun, SyncRuntime};
use crate::message::{EventId, StreamId};
use crate::perspective::{PerspectiveMode, PerspectiveRegistration};
use tracing::Instrument;

/// Whether `reg`'s runner holds work back (an async perspective whose
/// strategy is not realtime).
pub(crate) fn holds_back(reg: &PerspectiveRegistration) -> bool {
    reg.mode == PerspectiveMode::Async && !reg.strategy.is_realtime()
}

/// Whether a wait with `options` on `reg` runs it itself.
pub(crate) fn may_trigger(reg: &PerspectiveRegistration, options: &PerspectiveSyncOptions) -> bool {
    options.trigger && holds_back(reg)
}

/// How a wait on `reg` met its strategy.
pub(crate) fn strategy_run(reg: &PerspectiveRegistration, triggered: bool) -> StrategyRun {
    match (holds_back(reg), triggered) {
        (false, _) => StrategyRun::Immediate,
        (true, true) => StrategyRun::Triggered,
        (true, false) => StrategyRun::NextRun,
    }
}

/// The distinct streams of the awaited ids, in order.
pub(crate) fn target_streams(targets: &[(EventId, Option<StreamId>)]) -> Vec<StreamId> {
    let mut streams: Vec<StreamId> = Vec::new();
    for stream in targets.iter().filter_map(|(_, s)| *s) {
        if !streams.contains(&stream) {
            streams.push(stream);
        }
    }
    streams
}

/// Runs `reg` on `streams` now (the store's claim keeps each event applied
/// once and in order, whoever else runs it). Returns whether it ran: a
/// paused runner runs nothing, and the wait then waits as usual. Dropped
/// half-way, a catch-up commits nothing and the runner does it at its next
/// run. A failure is left to the wait to report.
pub(crate) async fn trigger_run(
    rt: &SyncRuntime,
    reg: &'static PerspectiveRegistration,
    streams: &[StreamId],
) -> bool {
    if rt.runner.is_paused() {
        return false;
    }
    let span = tracing::debug_span!(
        "whizbang.sync.trigger",
        perspective = reg.name,
        streams = streams.len(),
    );
    // A keyed perspective has one cursor: one catch-up covers every stream.
    let keyed = [crate::perspective::KEYED_CURSOR];
    let streams = if reg.is_keyed() { &keyed[..] } else { streams };
    async move {
        for stream in streams {
            if let Err(e) = rt.engine.catch_up(reg, *stream).await {
                tracing::debug!(stream = %stream, error = %e, "triggered catch-up failed");
            }
        }
    }
    .instrument(span)
    .await;
    true
}

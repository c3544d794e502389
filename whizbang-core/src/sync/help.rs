//! Helping along: a task about to wait for async catch-ups runs them itself.

use super::SyncRuntime;
use crate::message::StreamId;
use crate::perspective::PerspectiveMode;
use crate::perspective::PerspectiveRegistration;
use std::time::Duration;

/// Runs the async catch-ups of `touched` on this task rather than waiting for
/// a runner task to be scheduled (the caller is about to wait for them
/// anyway). The store's claim keeps each (perspective, stream) exactly once
/// and in order; a failure is left to the wait that follows to report. Bounded
/// by `budget` (a catch-up dropped half-way is safe: it commits nothing, and
/// the runner does it again). A paused runner means "apply nothing": helping
/// along never bypasses it.
pub(crate) async fn help_along(
    rt: &SyncRuntime,
    touched: &[(&'static PerspectiveRegistration, StreamId)],
    budget: Duration,
) {
    if rt.runner.is_paused() {
        return;
    }
    let started = tokio::time::Instant::now();
    let mut keyed_done: Vec<&'static str> = Vec::new();
    for (reg, stream) in touched {
        // A strategy that holds work back is not run early (see `trigger`).
        if reg.mode != PerspectiveMode::Async || super::holds_back(reg) {
            continue;
        }
        if reg.is_keyed() {
            // One catch-up covers every stream of a keyed perspective.
            if keyed_done.contains(&reg.name) {
                continue;
            }
            keyed_done.push(reg.name);
        }
        let Some(left) = budget.checked_sub(started.elapsed()) else {
            break;
        };
        match tokio::time::timeout(left, rt.engine.catch_up(reg, *stream)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(perspective = reg.name, error = %e, "help-along catch-up failed");
            }
            Err(_) => break,
        }
    }
}

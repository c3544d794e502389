//! The runtime's side of an append that applies inline perspectives in its
//! own transaction ([`EventStore::append_inline`](crate::store::EventStore::append_inline)):
//! which models an append touches, and the fold the store calls back into
//! for each of them, with the engine's own fold and failure rules. What each
//! fold did is kept here until the store says which targets committed; the
//! dispatch then tells the listeners and records the failures.

use super::engine::{
    decode_borrowed, encode, fold, settle_failure, unencodable_failure, ApplyReport, Folded,
};
use super::{PerspectiveMode, PerspectiveRegistration};
use crate::error::Error;
use crate::store::{
    Checkpoint, ClaimedModel, InlineApply, InlineTarget, ModelFormat, ModelWrite, StreamAppend,
};
use crate::util::lock;
use std::collections::HashSet;
use std::sync::Mutex;

/// What the fold of one target did, once its transaction committed.
#[derive(Debug)]
pub(crate) struct InlineOutcome {
    /// The commit to tell the listeners of (`None`: nothing was written).
    pub(crate) report: Option<ApplyReport>,
    /// The failure `complete()` reports: an event failed to apply now, or
    /// the cursor was already failed.
    pub(crate) error: Option<Error>,
}

/// The inline perspectives of one append and their fold.
pub(crate) struct InlineFold {
    targets: Vec<InlineTarget>,
    registrations: Vec<&'static PerspectiveRegistration>,
    format: ModelFormat,
    outcomes: Mutex<Vec<Option<InlineOutcome>>>,
}

impl InlineFold {
    /// The inline perspectives `streams` touch (`handlers`: the perspectives
    /// of an event type), one target per (perspective, stream) in
    /// first-emission order; `None` when there is none.
    pub(crate) fn for_append<'r>(
        handlers: impl Fn(&str) -> &'r [&'static PerspectiveRegistration],
        format: ModelFormat,
        streams: &[StreamAppend],
    ) -> Option<InlineFold> {
        let mut seen = HashSet::new();
        let mut targets = Vec::new();
        let mut registrations = Vec::new();
        for s in streams {
            for ev in &s.events {
                for reg in handlers(ev.event_type) {
                    if reg.mode == PerspectiveMode::Inline && seen.insert((reg.name, s.stream_id)) {
                        targets.push(InlineTarget {
                            perspective: reg.name,
                            key: s.stream_id,
                        });
                        registrations.push(*reg);
                    }
                }
            }
        }
        if targets.is_empty() {
            return None;
        }
        let outcomes = Mutex::new(targets.iter().map(|_| None).collect());
        Some(InlineFold {
            targets,
            registrations,
            format,
            outcomes,
        })
    }

    /// The outcomes of the targets the store applied (`applied`, from
    /// [`InlineAppended::applied`](crate::store::InlineAppended::applied)),
    /// with their targets. A target the store applied without handing it
    /// events is left out: the flush applies it.
    pub(crate) fn finish(self, applied: &[usize]) -> Vec<(InlineTarget, InlineOutcome)> {
        let mut outcomes = self
            .outcomes
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        applied
            .iter()
            .filter_map(|&i| {
                let outcome = outcomes.get_mut(i)?.take()?;
                Some((*self.targets.get(i)?, outcome))
            })
            .collect()
    }

    /// The fold of one target: the write and what to report once committed.
    fn fold_target(
        &self,
        reg: &'static PerspectiveRegistration,
        claimed: ClaimedModel,
    ) -> (Option<ModelWrite>, Option<InlineOutcome>) {
        let ClaimedModel {
            key,
            checkpoint,
            model: stored,
            events,
            ..
        } = claimed;
        let Some(events) = events else {
            // Not handed the events: the flush applies this target.
            return (None, None);
        };
        if let Some(f) = &checkpoint.failure {
            let error = Error::PerspectiveFailed {
                perspective: reg.name,
                stream: key,
                version: f.version,
                message: f.message.clone(),
            };
            let outcome = InlineOutcome {
                report: None,
                error: Some(error),
            };
            return (None, Some(outcome));
        }
        let nothing = InlineOutcome {
            report: None,
            error: None,
        };
        if events.is_empty() {
            return (None, Some(nothing));
        }
        let Folded {
            model,
            progress,
            failed,
            deleted,
        } = fold(
            reg,
            &checkpoint,
            || decode_borrowed(reg, stored.as_ref()),
            &events,
        );
        let (model, version, applied, failure, deleted) = match failed {
            Some((at, message)) => {
                // The model may be half-mutated: replay the batch up to the
                // failing event on the stored model (apply functions are
                // pure; the store handed no events before the cursor).
                let mut deleted_before = false;
                let replayed = progress.dirty.then(|| {
                    let before = fold(
                        reg,
                        &checkpoint,
                        || decode_borrowed(reg, stored.as_ref()),
                        &events[..at],
                    );
                    deleted_before = before.deleted && before.failed.is_none();
                    match (before.failed, before.model) {
                        (Some((_, message)), _) => Err(message),
                        (None, Some(m)) => encode(self.format, reg, m),
                        (None, None) => decode_borrowed(reg, stored.as_ref())
                            .and_then(|m| encode(self.format, reg, m)),
                    }
                });
                let (model, version, applied, failure) =
                    settle_failure(&checkpoint, progress, &events[at], message, replayed);
                // A tombstone before the failing event stands.
                let deleted = deleted_before && model.is_some();
                (model, version, applied, Some(failure), deleted)
            }
            None => match model.map(|m| encode(self.format, reg, m)).transpose() {
                Ok(model) => (model, progress.version, progress.applied, None, deleted),
                Err(message) => {
                    let failure = unencodable_failure(&checkpoint, message);
                    (None, checkpoint.version, Vec::new(), Some(failure), false)
                }
            },
        };
        let mut report = ApplyReport::new(reg.name, key, version, applied);
        let error = failure.as_ref().map(|f| Error::PerspectiveFailed {
            perspective: reg.name,
            stream: key,
            version: f.version,
            message: f.message.clone(),
        });
        if let Some(f) = &failure {
            report = report.with_failure(f.clone());
        }
        let checkpoint = Checkpoint {
            version,
            failure,
            skipped: checkpoint.skipped,
        };
        // A tombstone stands when it is the last event applied (before a
        // failure, too).
        let write = if deleted {
            ModelWrite::deleting(key, checkpoint)
        } else {
            ModelWrite::new(key, model, checkpoint)
        };
        let outcome = InlineOutcome {
            report: Some(report),
            error,
        };
        (Some(write), Some(outcome))
    }
}

impl InlineApply for InlineFold {
    fn targets(&self) -> &[InlineTarget] {
        &self.targets
    }

    fn apply(&self, index: usize, claimed: ClaimedModel) -> Option<ModelWrite> {
        let reg = *self.registrations.get(index)?;
        if claimed.key != self.targets[index].key {
            return None;
        }
        let span = tracing::debug_span!(
            "whizbang.perspective.apply_inline",
            perspective = reg.name,
            stream = %claimed.key,
        );
        let _entered = span.enter();
        let (write, outcome) = self.fold_target(reg, claimed);
        if let Some(slot) = lock(&self.outcomes).get_mut(index) {
            *slot = outcome;
        }
        write
    }
}

//! Brings one (perspective, stream) up to date. Shared by the inline flush and
//! the async runner so both have the same exactly-once, in-order semantics.

use crate::error::{Error, Result};
use crate::message::{EventId, StreamId};
use crate::perspective::bulk::{run_hook, Change};
use crate::perspective::{ModelOp, PerspectiveRegistration};
use crate::store::rebuild::SHADOW_SUFFIX;
use crate::store::AnyModel;
use crate::store::{
    Checkpoint, CheckpointFailure, EventStore, ModelFormat, ModelKey, ModelValue, ModelWrite,
    PerspectiveStore, PerspectiveUnit, SkippedEvent, StoredEvent,
};
use std::sync::Arc;
use tracing::Instrument;

/// What one commit on a (perspective, stream) did: the events it applied and
/// where the cursor stands. The engine hands one to every [`ApplyListener`]
/// after each commit; a backend that learns of commits made elsewhere (another
/// process, through LISTEN/NOTIFY) builds one with [`ApplyReport::new`] and
/// feeds it to [`Runtime::notify_applied`](crate::Runtime::notify_applied) or a
/// [`WakeupSink`](crate::backend::WakeupSink) so local waiters wake.
///
/// ```
/// use whizbang_core::backend::{ApplyReport, CheckpointFailure};
/// use whizbang_core::{EventId, StreamId};
///
/// let stream = StreamId::new();
/// let report = ApplyReport::new("orders.summary", stream, 3, vec![EventId::new()]);
/// assert!(report.failure.is_none());
/// let failed = ApplyReport::new("orders.summary", stream, 3, vec![]).with_failure(
///     CheckpointFailure { version: 4, message: "apply failed".into() },
/// );
/// assert_eq!(failed.failure.unwrap().version, 4);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyReport {
    /// The perspective's name (a backend with a name from elsewhere gets the
    /// `'static` one from [`Registry::perspective_named`](crate::Registry::perspective_named)).
    pub perspective: &'static str,
    /// The stream (the model's key).
    pub stream: StreamId,
    /// The cursor after the commit.
    pub version: u64,
    /// The events now applied (including ones the perspective does not handle, which
    /// the cursor moved past), in order.
    pub applied: Vec<EventId>,
    /// Set when the perspective failed on this stream.
    pub failure: Option<CheckpointFailure>,
}

impl ApplyReport {
    /// A report of a successful commit: `perspective`'s cursor on `stream` is
    /// at `version` and `applied` are the events it moved past, in order.
    #[must_use]
    pub fn new(
        perspective: &'static str,
        stream: StreamId,
        version: u64,
        applied: Vec<EventId>,
    ) -> Self {
        ApplyReport {
            perspective,
            stream,
            version,
            applied,
            failure: None,
        }
    }

    /// The same report, for a commit that marked the cursor failed.
    #[must_use]
    pub fn with_failure(mut self, failure: CheckpointFailure) -> Self {
        self.failure = Some(failure);
        self
    }
}

/// Hears about every commit the engine makes (apply, failure, retry, skip),
/// right after it is committed, in this process.
///
/// The runtime's sync tracker is one; a backend registers its own with
/// [`RuntimeBuilder::apply_listener`](crate::RuntimeBuilder::apply_listener),
/// for example to NOTIFY other processes so their waiters wake. Listeners run
/// synchronously on the committing task: be quick and never block (hand the
/// report to a channel or a background task), and never call back into the
/// runtime. A listener does not hear reports fed in with
/// [`Runtime::notify_applied`](crate::Runtime::notify_applied), so a wake-up
/// received from another process is never echoed back.
///
/// Closures `Fn(&ApplyReport) + Send + Sync` are listeners.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an apply listener",
    note = "implement `whizbang_core::backend::ApplyListener` (or pass a closure `|report: &ApplyReport| ..`)"
)]
pub trait ApplyListener: Send + Sync + 'static {
    /// Called once per commit, after it committed.
    fn on_apply(&self, report: &ApplyReport);
}

impl<F: Fn(&ApplyReport) + Send + Sync + 'static> ApplyListener for F {
    fn on_apply(&self, report: &ApplyReport) {
        self(report);
    }
}

#[derive(Clone)]
pub(crate) struct Engine {
    pub(crate) events: Arc<dyn EventStore>,
    pub(crate) perspectives: Arc<dyn PerspectiveStore>,
    /// Told of every commit, in order: the sync tracker first, then the
    /// builder's listeners.
    pub(crate) listeners: Arc<[Arc<dyn ApplyListener>]>,
    /// How the perspective store keeps models (asked once, at build).
    pub(crate) model_format: ModelFormat,
}

/// How an operator recovers a failed cursor.
#[derive(Clone, Debug)]
pub(crate) enum Recovery {
    /// Clear the failure and apply again from the failing event.
    Retry,
    /// Record the failing event as skipped (with this reason), move past it, go on.
    Skip(String),
}

/// Runs user code (model construction, decode, apply), turning a panic into
/// its message so one bad perspective cannot take down the task running it.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|panic| panic_message(what, &*panic))
}

/// Applies one event, turning an error or a panic into its message; says
/// what became of the model (`None`: the perspective does not handle the
/// event, the model is untouched).
pub(crate) fn apply_guarded(
    reg: &'static PerspectiveRegistration,
    model: &mut dyn AnyModel,
    ev: &StoredEvent,
) -> std::result::Result<Option<ModelOp>, String> {
    match guarded("apply", || (reg.apply)(model, ev)) {
        Ok(Ok(op)) => Ok(op),
        Ok(Err(e)) => Err(e.0),
        Err(message) => Err(message),
    }
}

/// A fresh model (`Default`), with a panic contained.
pub(crate) fn new_model(
    reg: &'static PerspectiveRegistration,
) -> std::result::Result<Box<dyn AnyModel>, String> {
    guarded("constructing the model (its `Default`)", || {
        (reg.new_model)()
    })
}

/// The model the unit holds, or a fresh one: every call into user code guarded.
fn load_model(
    reg: &'static PerspectiveRegistration,
    unit: &mut dyn PerspectiveUnit,
) -> std::result::Result<Box<dyn AnyModel>, String> {
    let stored = guarded("copying the stored model (its `Clone`)", || {
        unit.take_model()
    })?;
    decode_stored(reg, stored)
}

/// The model as the perspective works on it, from its stored form (a new
/// one when there is none).
pub(crate) fn decode_stored(
    reg: &'static PerspectiveRegistration,
    stored: Option<ModelValue>,
) -> std::result::Result<Box<dyn AnyModel>, String> {
    match stored {
        Some(ModelValue::Typed(m)) => Ok(m),
        Some(ModelValue::Json(j)) => decode_json(reg, &j),
        None => new_model(reg),
    }
}

/// A stored JSON model decoded, with a panic contained.
fn decode_json(
    reg: &'static PerspectiveRegistration,
    json: &serde_json::value::RawValue,
) -> std::result::Result<Box<dyn AnyModel>, String> {
    guarded("decoding the stored model", || (reg.decode_model)(json))?.map_err(|e| {
        format!(
            "the stored model of perspective `{}` does not decode: {e}; check that the \
             model's serde shape is compatible with what was written",
            reg.name
        )
    })
}

pub(crate) fn panic_message(what: &str, p: &(dyn std::any::Any + Send)) -> String {
    match crate::util::panic_text(p) {
        Some(text) => format!("{what} panicked: {text}"),
        None => format!("{what} panicked"),
    }
}

/// The sentence for a model that does not serialise for a JSON store.
fn model_not_json(perspective: &str, e: &serde_json::Error) -> String {
    format!(
        "the model of perspective `{perspective}` does not serialise to JSON ({e}), and the \
         perspective store keeps JSON models; nothing of this batch was committed. Fix the \
         model's Serialize impl (for example map keys that are not strings), then retry the \
         perspective"
    )
}

fn is_skipped(checkpoint: &Checkpoint, version: u64) -> bool {
    !checkpoint.skipped.is_empty() && checkpoint.skipped.iter().any(|s| s.version == version)
}

/// What [`fold`] did.
pub(crate) struct Folded {
    /// The model, when an event was applied to it (`None`: the stored one
    /// stands).
    pub(crate) model: Option<Box<dyn AnyModel>>,
    /// How far it got.
    pub(crate) progress: Progress,
    /// The event that failed (its index in the events) and why.
    pub(crate) failed: Option<(usize, String)>,
    /// Whether the last event applied deleted the model (a tombstone):
    /// commit a deletion, not `model`.
    pub(crate) deleted: bool,
}

/// The fold every apply path shares (the flush, the runner, a recovery, and
/// the inline apply inside an append): applies `events` (the stream after
/// `checkpoint.version`, in order) to the model `load` yields (called once,
/// at the first event applied), moving past events recorded as skipped,
/// stopping at the first event that fails. Every call into user code is
/// guarded: an error or a panic is a message in [`Folded::failed`]. An
/// event whose apply returns a tombstone deletes the model: a later event
/// starts from a fresh one, and [`Folded::deleted`] says whether the fold
/// ended deleted.
pub(crate) fn fold(
    reg: &'static PerspectiveRegistration,
    checkpoint: &Checkpoint,
    load: impl FnOnce() -> std::result::Result<Box<dyn AnyModel>, String>,
    events: &[Arc<StoredEvent>],
) -> Folded {
    let mut load = Some(load);
    let mut model: Option<Box<dyn AnyModel>> = None;
    let mut deleted = false;
    let mut progress = Progress {
        version: checkpoint.version,
        applied: Vec::with_capacity(events.len()),
        dirty: false,
    };
    for (at, ev) in events.iter().enumerate() {
        if !is_skipped(checkpoint, ev.stream_version) {
            let loaded = match (model.take(), load.take()) {
                (Some(m), _) => Ok(m),
                (None, Some(load)) => load(),
                (None, None) => new_model(reg),
            };
            let result = loaded.and_then(|m| {
                let m = model.insert(m);
                apply_guarded(reg, &mut **m, ev)
            });
            match result {
                Err(message) => {
                    return Folded {
                        model,
                        progress,
                        failed: Some((at, message)),
                        deleted,
                    };
                }
                Ok(Some(ModelOp::Delete)) => {
                    // Gone; the next event applied starts from `Default`.
                    model = None;
                    load = None;
                    deleted = true;
                }
                Ok(Some(ModelOp::Keep)) => deleted = false,
                // Not handled: a deleted model stays deleted (the fresh
                // one loaded for the call is not kept).
                Ok(None) => {
                    if deleted {
                        model = None;
                    }
                }
            }
            progress.dirty = true;
        }
        progress.applied.push(ev.event_id);
        progress.version = ev.stream_version;
    }
    Folded {
        model,
        progress,
        failed: None,
        deleted,
    }
}

/// What a failed cursor's commit does with the model.
enum Settled {
    /// Leaves the stored model as it is.
    Keep,
    /// Writes the model as of just before the failing event.
    Write(ModelValue),
    /// Deletes it: a tombstone applied before the failing event.
    Delete,
}

/// What a failure at `ev` commits: the model as of just before it
/// (`replayed`: `None` when the batch had not changed the model, so the
/// stored one stands), the cursor version, the events moved past, and the
/// failure. When the replay failed too (only an impure apply fails on
/// replay what it applied before), nothing of the batch is committed and the
/// failure is at its first event.
pub(crate) fn settle_failure(
    checkpoint: &Checkpoint,
    progress: Progress,
    ev: &StoredEvent,
    message: String,
    replayed: Option<std::result::Result<ModelValue, String>>,
) -> (Option<ModelValue>, u64, Vec<EventId>, CheckpointFailure) {
    tracing::error!(
        event_id = %ev.event_id, version = ev.stream_version, error = %message,
        "perspective failed; its cursor on this stream is marked failed"
    );
    let failure = CheckpointFailure {
        version: ev.stream_version,
        message,
    };
    match replayed {
        None => (None, progress.version, progress.applied, failure),
        Some(Ok(model)) => (Some(model), progress.version, progress.applied, failure),
        Some(Err(replay)) => {
            tracing::error!(error = %replay, "replay after a failure failed too");
            let failure = CheckpointFailure {
                version: checkpoint.version + 1,
                message: format!(
                    "{replay} (while rebuilding the model after this failure at version {}: {})",
                    failure.version, failure.message
                ),
            };
            (None, checkpoint.version, Vec::new(), failure)
        }
    }
}

/// The failure recorded when a batch applied but its model does not
/// serialise for the JSON store: nothing of the batch is committed, the
/// cursor fails at the batch's first event.
pub(crate) fn unencodable_failure(checkpoint: &Checkpoint, message: String) -> CheckpointFailure {
    tracing::error!(error = %message, "perspective model does not serialise; cursor marked failed");
    CheckpointFailure {
        version: checkpoint.version + 1,
        message,
    }
}

/// The model in the form a store keeps: serialised for a JSON store (the
/// serialiser guarded like any user code).
pub(crate) fn encode(
    format: ModelFormat,
    reg: &'static PerspectiveRegistration,
    model: Box<dyn AnyModel>,
) -> std::result::Result<ModelValue, String> {
    match format {
        ModelFormat::Typed => Ok(ModelValue::Typed(model)),
        ModelFormat::Json => guarded("serialising the model", || model.to_json())?
            .map(ModelValue::Json)
            .map_err(|e| model_not_json(reg.name, &e)),
    }
}

/// One model a batch is about to write, before the perspective's bulk hook
/// and encoding (see [`finish`]).
pub(crate) struct Finishing<'e> {
    /// Its key.
    pub(crate) key: ModelKey,
    /// The folded model; `None` when the batch deletes it, or applied nothing
    /// to it (the stored one stands).
    pub(crate) model: Option<Box<dyn AnyModel>>,
    /// Whether the batch deletes it (a tombstone).
    pub(crate) deleted: bool,
    /// The events of the batch for it, in order.
    pub(crate) events: Vec<&'e StoredEvent>,
}

impl<'e> Finishing<'e> {
    /// A stream's model after `folded`, whose events are `events`.
    pub(crate) fn of(
        key: ModelKey,
        model: Option<Box<dyn AnyModel>>,
        deleted: bool,
        events: &'e [Arc<StoredEvent>],
    ) -> Self {
        Finishing {
            key,
            model,
            deleted,
            events: events.iter().map(|e| &**e).collect(),
        }
    }
}

/// What every path that writes models of `reg` does last: runs the
/// perspective's bulk hook (if it has one) over the changed models, then
/// encodes each for the store. Returns, per item in order, the value to
/// write (`None`: deleted, or the stored model stands). `Err` (the hook
/// failed or panicked, or a model does not serialise) is the sentence the
/// caller records; nothing of the batch may be committed then.
pub(crate) async fn finish(
    format: ModelFormat,
    reg: &'static PerspectiveRegistration,
    items: Vec<Finishing<'_>>,
) -> std::result::Result<Vec<Option<ModelValue>>, String> {
    if let Some(hook) = reg.bulk {
        // A rebuild folds under the shadow's name: the hook hears the
        // perspective's own, and that the batch is a rebuild's.
        let (name, rebuild) = match reg.name.strip_suffix(SHADOW_SUFFIX) {
            Some(live) => (live, true),
            None => (reg.name, false),
        };
        let changes: Vec<Change<'_>> = items
            .iter()
            .filter(|i| i.deleted || i.model.is_some())
            .map(|i| Change {
                key: i.key,
                model: if i.deleted { None } else { i.model.as_deref() },
                events: i.events.clone(),
            })
            .collect();
        run_hook(hook, name, &changes, rebuild).await?;
    }
    items
        .into_iter()
        .map(|i| match (i.deleted, i.model) {
            (false, Some(m)) => encode(format, reg, m).map(Some),
            _ => Ok(None),
        })
        .collect()
}

/// The model as the perspective works on it, from a stored form it
/// borrows (a JSON model is decoded, a typed one copied; a new one when
/// there is none): the inline fold keeps the stored form for a replay.
pub(crate) fn decode_borrowed(
    reg: &'static PerspectiveRegistration,
    stored: Option<&ModelValue>,
) -> std::result::Result<Box<dyn AnyModel>, String> {
    match stored {
        Some(ModelValue::Typed(m)) => {
            guarded("copying the stored model (its `Clone`)", || m.clone_box())
        }
        Some(ModelValue::Json(j)) => decode_json(reg, j),
        None => new_model(reg),
    }
}

impl Engine {
    /// Applies every event of `stream` after the cursor. Returns the report of what
    /// was committed (`None` when there was nothing to do).
    pub(crate) async fn catch_up(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
    ) -> Result<Option<ApplyReport>> {
        self.catch_up_to(reg, stream, u64::MAX).await
    }

    /// Applies the events of `stream` after the cursor up to version `upto`
    /// (inclusive). Returns the report of what was committed (`None` when there
    /// was nothing to do).
    pub(crate) async fn catch_up_to(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        upto: u64,
    ) -> Result<Option<ApplyReport>> {
        if reg.is_keyed() {
            // One cursor for the perspective: catching up covers every stream.
            let reports = self.catch_up_keyed(reg).await?;
            return Ok(reports.into_iter().rev().find(|r| r.stream == stream));
        }
        let span = tracing::debug_span!(
            "whizbang.perspective.apply",
            perspective = reg.name,
            stream = %stream,
        );
        self.catch_up_inner(reg, stream, upto)
            .instrument(span)
            .await
    }

    async fn catch_up_inner(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        upto: u64,
    ) -> Result<Option<ApplyReport>> {
        let mut unit = self.perspectives.claim(reg.name, stream).await?;
        let checkpoint = unit.checkpoint().clone();
        if let Some(f) = &checkpoint.failure {
            return Err(Error::PerspectiveFailed {
                perspective: reg.name,
                stream,
                version: f.version,
                message: f.message.clone(),
            });
        }
        let mut events = match unit.take_events() {
            Some(events) => events,
            None => self.events.read_stream(stream, checkpoint.version).await?,
        };
        events.retain(|e| e.stream_version <= upto);
        if events.is_empty() {
            return Ok(None);
        }
        self.apply_claimed(reg, stream, unit, checkpoint, &events)
            .await
            .map(Some)
    }

    /// Catches `reg` up on every stream of `streams` in one transaction, when
    /// the store can claim many models at once. Streams whose cursor failed
    /// are left as they are. `Ok(None)`: nothing was committed (the store
    /// claims one key at a time, or an event failed to apply or a model to
    /// encode); catch the streams up one by one, which records failures.
    pub(crate) async fn catch_up_together(
        &self,
        reg: &'static PerspectiveRegistration,
        streams: &[StreamId],
    ) -> Result<Option<Vec<ApplyReport>>> {
        if reg.is_keyed() {
            // One cursor for the perspective: catching up covers every stream.
            return self.catch_up_keyed(reg).await.map(Some);
        }
        let span = tracing::debug_span!(
            "whizbang.perspective.apply_batch",
            perspective = reg.name,
            streams = streams.len(),
        );
        async move {
            // Nothing here reads the events' metadata but the apply code.
            let claimed = if reg.reads_metadata {
                self.perspectives.claim_many(reg.name, streams).await?
            } else {
                self.perspectives
                    .claim_many_payloads(reg.name, streams)
                    .await?
            };
            let Some(mut batch) = claimed else {
                return Ok(None);
            };
            // Fold every stream first: the bulk hook sees the batch at once.
            let mut staged = Vec::new();
            for claimed in batch.take_claimed() {
                if claimed.checkpoint.failure.is_some() {
                    continue;
                }
                let events = match claimed.events {
                    Some(events) => events,
                    None => {
                        self.events
                            .read_stream(claimed.key, claimed.checkpoint.version)
                            .await?
                    }
                };
                if events.is_empty() {
                    continue;
                }
                let mut stored = claimed.model;
                let folded = fold(
                    reg,
                    &claimed.checkpoint,
                    || decode_stored(reg, stored.take()),
                    &events,
                );
                if folded.failed.is_some() {
                    return Ok(None);
                }
                staged.push((claimed.key, claimed.checkpoint.skipped, events, folded));
            }
            let finishing = staged
                .iter_mut()
                .map(|(key, _, events, folded)| {
                    Finishing::of(*key, folded.model.take(), folded.deleted, events)
                })
                .collect();
            let Ok(values) = finish(self.model_format, reg, finishing).await else {
                return Ok(None);
            };
            let mut writes = Vec::with_capacity(staged.len());
            let mut reports = Vec::with_capacity(staged.len());
            for ((key, skipped, _, folded), model) in staged.into_iter().zip(values) {
                let version = folded.progress.version;
                writes.push(ModelWrite {
                    key,
                    model,
                    checkpoint: Checkpoint {
                        version,
                        failure: None,
                        skipped,
                    },
                    delete: folded.deleted,
                });
                reports.push(ApplyReport::new(
                    reg.name,
                    key,
                    version,
                    folded.progress.applied,
                ));
            }
            if writes.is_empty() {
                return Ok(Some(Vec::new()));
            }
            batch.commit(writes).await?;
            for report in &reports {
                self.notify(report);
            }
            Ok(Some(reports))
        }
        .instrument(span)
        .await
    }

    /// Recovers a failed cursor: clears the failure (recording the failing
    /// event as skipped for [`Recovery::Skip`]) and catches the stream up, all
    /// under one claim. Listeners hear of the commit, so waiters wake.
    pub(crate) async fn recover(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        recovery: Recovery,
    ) -> Result<ApplyReport> {
        if reg.is_keyed() {
            let skip = match recovery {
                Recovery::Retry => None,
                Recovery::Skip(reason) => Some(reason),
            };
            return self.recover_keyed(reg, skip).await;
        }
        let span = tracing::info_span!(
            "whizbang.perspective.recover",
            perspective = reg.name,
            stream = %stream,
            ?recovery,
        );
        async move {
            let unit = self.perspectives.claim(reg.name, stream).await?;
            let mut checkpoint = unit.checkpoint().clone();
            let Some(failure) = checkpoint.failure.take() else {
                return Err(Error::PerspectiveNotFailed {
                    perspective: reg.name,
                    stream,
                });
            };
            let events = self.events.read_stream(stream, checkpoint.version).await?;
            if let Recovery::Skip(reason) = recovery {
                let Some(ev) = events.iter().find(|e| e.stream_version == failure.version) else {
                    return Err(Error::InvalidInput(format!(
                        "perspective `{}` failed on stream {stream} at version {}, but the event \
                         store holds no event at that version after the cursor ({}); nothing \
                         was skipped. Use retry instead",
                        reg.name, failure.version, checkpoint.version
                    )));
                };
                tracing::warn!(
                    event_id = %ev.event_id, version = ev.stream_version, %reason,
                    "skipping the event a perspective failed on"
                );
                checkpoint.skipped.push(SkippedEvent {
                    version: ev.stream_version,
                    event_id: ev.event_id,
                    reason,
                    failure: failure.message,
                });
            } else {
                tracing::info!(version = failure.version, "retrying a failed perspective");
            }
            self.apply_claimed(reg, stream, unit, checkpoint, &events)
                .await
        }
        .instrument(span)
        .await
    }

    /// Applies `events` (the stream after `checkpoint.version`, in order) under
    /// the claim `unit`, commits model and cursor, and tells the listeners.
    /// Events recorded as skipped in `checkpoint` are moved past, not applied.
    async fn apply_claimed(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        mut unit: Box<dyn PerspectiveUnit>,
        checkpoint: Checkpoint,
        events: &[Arc<StoredEvent>],
    ) -> Result<ApplyReport> {
        let folded = fold(reg, &checkpoint, || load_model(reg, &mut *unit), events);
        let Folded {
            model,
            progress,
            failed,
            deleted,
        } = folded;
        if let Some((at, message)) = failed {
            return Err(self
                .fail(
                    reg,
                    stream,
                    unit,
                    checkpoint,
                    progress,
                    &events[..=at],
                    message,
                )
                .await);
        }
        let version = progress.version;
        let applied = progress.applied;
        let finishing = vec![Finishing::of(stream, model, deleted, events)];
        let model = match finish(self.model_format, reg, finishing).await {
            Ok(mut values) => values.pop().flatten(),
            Err(message) => {
                return Err(self
                    .fail_unfinished(reg, stream, unit, checkpoint, message)
                    .await)
            }
        };
        let checkpoint = Checkpoint {
            version,
            failure: None,
            skipped: checkpoint.skipped,
        };
        if deleted {
            unit.commit_delete(checkpoint).await?;
        } else {
            unit.commit(model, checkpoint).await?;
        }
        let report = ApplyReport::new(reg.name, stream, version, applied);
        self.notify(&report);
        Ok(report)
    }

    /// Marks the cursor failed at `ev` after committing what applied before it,
    /// wakes the listeners, and returns the error for the caller.
    #[allow(clippy::too_many_arguments)]
    async fn fail(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        unit: Box<dyn PerspectiveUnit>,
        checkpoint: Checkpoint,
        progress: Progress,
        upto_failing: &[Arc<StoredEvent>],
        message: String,
    ) -> Error {
        let Some((ev, before)) = upto_failing.split_last() else {
            return Error::Invariant(format!(
                "perspective `{}` failed on stream {stream} with no failing event",
                reg.name
            ));
        };
        // The model may be half-mutated. Apply functions are pure, so the state
        // "everything before the failing event" is rebuilt by replaying the stream
        // from the start: no copy is paid on the hot path. When nothing was
        // applied to the model in this batch, the stored model is already that
        // state and stays as it is.
        // What applied before it is committed like any batch: through the
        // bulk hook, then encoded.
        let mut deleted_before = false;
        let replayed = if progress.dirty {
            let good = match self
                .rebuild(reg, stream, progress.version, &checkpoint)
                .await
            {
                Ok((m, true)) => {
                    deleted_before = true;
                    // The hook sees the deletion; the fresh model only marks
                    // the replay good (the deletion is what is committed).
                    let finishing = vec![Finishing::of(stream, None, true, before)];
                    match finish(self.model_format, reg, finishing).await {
                        Ok(_) => encode(self.model_format, reg, m),
                        Err(e) => Err(e),
                    }
                }
                Ok((m, false)) => {
                    let finishing = vec![Finishing::of(stream, Some(m), false, before)];
                    finish(self.model_format, reg, finishing)
                        .await
                        .and_then(|mut values| {
                            values.pop().flatten().ok_or_else(|| {
                                format!("perspective `{}`: a replayed model was not kept", reg.name)
                            })
                        })
                }
                Err(e) => Err(e),
            };
            Some(good)
        } else {
            None
        };
        let (good, version, applied, failure) =
            settle_failure(&checkpoint, progress, ev, message, replayed);
        // A tombstone before the failing event stands: the model is deleted.
        let settled = match good {
            Some(_) if deleted_before => Settled::Delete,
            Some(model) => Settled::Write(model),
            None => Settled::Keep,
        };
        self.commit_failure(
            reg, stream, unit, settled, checkpoint, version, applied, failure,
        )
        .await
    }

    /// Commits a failed cursor at `version` (with `model`, `None` to keep the
    /// stored one), tells the listeners (so waiters wake with the failure) and
    /// returns the error the caller reports.
    #[allow(clippy::too_many_arguments)] // one private call shape, named at each call
    async fn commit_failure(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        unit: Box<dyn PerspectiveUnit>,
        model: Settled,
        checkpoint: Checkpoint,
        version: u64,
        applied: Vec<EventId>,
        failure: CheckpointFailure,
    ) -> Error {
        let checkpoint = Checkpoint {
            version,
            failure: Some(failure.clone()),
            skipped: checkpoint.skipped,
        };
        let committed = match model {
            Settled::Keep => unit.commit(None, checkpoint).await,
            Settled::Write(model) => unit.commit(Some(model), checkpoint).await,
            Settled::Delete => unit.commit_delete(checkpoint).await,
        };
        if let Err(e) = committed {
            return e;
        }
        let report =
            ApplyReport::new(reg.name, stream, version, applied).with_failure(failure.clone());
        self.notify(&report);
        Error::PerspectiveFailed {
            perspective: reg.name,
            stream,
            version: failure.version,
            message: failure.message,
        }
    }

    /// A batch applied but its model does not serialise for the JSON store,
    /// or the perspective's bulk hook failed on it: commits nothing of the
    /// batch, marks the cursor failed at the batch's first event, wakes the
    /// listeners, and returns the error.
    async fn fail_unfinished(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        unit: Box<dyn PerspectiveUnit>,
        checkpoint: Checkpoint,
        message: String,
    ) -> Error {
        let failure = unencodable_failure(&checkpoint, message);
        let version = checkpoint.version;
        self.commit_failure(
            reg,
            stream,
            unit,
            Settled::Keep,
            checkpoint,
            version,
            Vec::new(),
            failure,
        )
        .await
    }

    /// The model as of stream version `upto` (> 0), by replaying from the start,
    /// leaving out skipped events. Used only after a failed apply.
    async fn rebuild(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        upto: u64,
        checkpoint: &Checkpoint,
    ) -> std::result::Result<(Box<dyn AnyModel>, bool), String> {
        let events = self
            .events
            .read_stream(stream, 0)
            .await
            .map_err(|e| e.to_string())?;
        let mut model = new_model(reg)?;
        let mut deleted = false;
        for ev in events {
            if ev.stream_version > upto {
                break;
            }
            if is_skipped(checkpoint, ev.stream_version) {
                continue;
            }
            match apply_guarded(reg, &mut *model, &ev)? {
                Some(ModelOp::Delete) => {
                    // Deleted: a later event starts from `Default`.
                    model = new_model(reg)?;
                    deleted = true;
                }
                Some(ModelOp::Keep) => deleted = false,
                // Not handled: a deleted model stays deleted.
                None => {
                    if deleted {
                        model = new_model(reg)?;
                    }
                }
            }
        }
        Ok((model, deleted))
    }

    pub(crate) fn notify(&self, report: &ApplyReport) {
        for l in self.listeners.iter() {
            // A listener's panic must not undo what is committed nor stop the
            // listeners after it (the sync tracker runs first, unguarded cost
            // is one landing pad).
            if let Err(panic) = guarded("an apply listener", || l.on_apply(report)) {
                tracing::error!(
                    perspective = report.perspective, stream = %report.stream, error = %panic,
                    "apply listener panicked; the commit stands"
                );
            }
        }
    }
}

/// How far a batch got (before it failed).
pub(crate) struct Progress {
    /// The cursor: the last event applied (or moved past).
    pub(crate) version: u64,
    /// The events applied (or moved past) in this batch.
    pub(crate) applied: Vec<EventId>,
    /// Whether the model was changed in this batch (it must be rebuilt).
    pub(crate) dirty: bool,
}

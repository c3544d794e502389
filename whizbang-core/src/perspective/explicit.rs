//! Explicit sync, the perspective side: what a run reports ([`SyncReport`],
//! per stream a [`SyncItem`]) and the engine's batch that syncs a chunk of
//! streams. The builder, `Runtime::sync`, is dispatch's.
//!
//! Many streams are one batch: the store claims a chunk of models at once
//! and commits them in one transaction ([`PerspectiveStore::claim_many`]).
//! The semantics are the engine's: each model is applied exactly once under
//! its claim, a failed cursor stays failed (reported as such, unless the
//! caller asks to retry), listeners (waiters) hear of every commit, and a
//! chunk commits atomically or not at all. One stream's failure does not
//! fail the chunk.
//!
//! [`PerspectiveStore::claim_many`]: crate::store::PerspectiveStore::claim_many

use super::engine::{decode_stored, finish, fold, new_model, Engine, Finishing, Folded, Recovery};
use super::key::KEYED_CURSOR;
use super::{ApplyReport, PerspectiveRegistration};
use crate::error::{Error, Result};
use crate::message::StreamId;
use crate::store::{AnyModel, Checkpoint, ClaimedModel, ModelWrite, StoredEvent};
use std::sync::Arc;
use std::time::Duration;

/// How many models one batch claims and commits, unless the caller says.
pub const DEFAULT_SYNC_CHUNK: usize = 500;

/// What an explicit sync covers and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SyncMode {
    /// Incremental, for the named streams.
    Streams,
    /// Incremental, for every stream holding events the perspective handles.
    All,
    /// Refolded from scratch, for the named streams.
    FullStreams,
    /// Refolded from scratch, for every stream holding events it handles.
    FullAll,
}

impl SyncMode {
    /// Its stable name (a metrics label, a log column): `streams`, `all`,
    /// `full_streams` or `full_all`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            SyncMode::Streams => "streams",
            SyncMode::All => "all",
            SyncMode::FullStreams => "full_streams",
            SyncMode::FullAll => "full_all",
        }
    }

    /// The mode called `name` (see [`as_str`](Self::as_str)).
    #[must_use]
    pub fn from_name(name: &str) -> Option<SyncMode> {
        [
            SyncMode::Streams,
            SyncMode::All,
            SyncMode::FullStreams,
            SyncMode::FullAll,
        ]
        .into_iter()
        .find(|m| m.as_str() == name)
    }

    /// Whether models are refolded from scratch.
    #[must_use]
    pub const fn is_full(self) -> bool {
        matches!(self, SyncMode::FullStreams | SyncMode::FullAll)
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an explicit sync did for one stream.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SyncItem {
    /// Events were applied and committed: the cursor moved from `from` to
    /// `to` (for a full sync, `from` is the cursor before the refold).
    Applied {
        /// The stream (the model's key).
        stream: StreamId,
        /// The cursor before.
        from: u64,
        /// The cursor after.
        to: u64,
        /// Whether the model is now deleted (a tombstone).
        deleted: bool,
    },
    /// Nothing to do: the model was already up to date (or the stream holds
    /// no event).
    Skipped {
        /// The stream.
        stream: StreamId,
    },
    /// This stream failed; the others went on. Its model is as it was, or,
    /// when an event failed to apply, as of just before that event with
    /// the cursor marked failed there (see [`Error::PerspectiveFailed`]).
    Failed {
        /// The stream.
        stream: StreamId,
        /// Why (shared when a whole chunk failed on one backend error).
        error: Arc<Error>,
    },
}

impl SyncItem {
    /// The stream it is about.
    #[must_use]
    pub fn stream(&self) -> StreamId {
        match self {
            SyncItem::Applied { stream, .. }
            | SyncItem::Skipped { stream }
            | SyncItem::Failed { stream, .. } => *stream,
        }
    }

    fn applied(report: &ApplyReport, from: u64, deleted: bool) -> SyncItem {
        SyncItem::Applied {
            stream: report.stream,
            from,
            to: report.version,
            deleted,
        }
    }

    fn failed(stream: StreamId, error: Error) -> SyncItem {
        SyncItem::Failed {
            stream,
            error: Arc::new(error),
        }
    }
}

/// The result of one explicit sync run: per stream, what was applied,
/// skipped or failed, in the order the streams were synced.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SyncReport {
    /// The perspective synced.
    pub perspective: &'static str,
    /// How.
    pub mode: SyncMode,
    /// One per stream visited.
    pub items: Vec<SyncItem>,
    /// How long the run took.
    pub duration: Duration,
    /// The [`SyncCondition`] the sync was given, when it did not hold: the
    /// sync ran nothing and `items` is empty.
    pub not_needed: Option<SyncCondition>,
}

/// When a conditional explicit sync
/// ([`PerspectiveSync::when`](crate::PerspectiveSync::when)) runs: judged
/// on the perspective's [`PerspectiveStatus`](super::PerspectiveStatus)
/// when the sync starts. A condition that does not hold makes the sync a
/// no-op whose report says so ([`SyncReport::not_needed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncCondition {
    /// At least this many events are not applied yet.
    LagAtLeast(u64),
    /// The oldest event not applied yet is at least this old.
    LagOlderThan(Duration),
    /// The perspective last applied at least this long ago (or never).
    LastSyncOlderThan(Duration),
}

impl SyncCondition {
    /// Whether the condition holds for `status` (read at `now`).
    #[must_use]
    pub fn holds(&self, status: &super::PerspectiveStatus, now: std::time::SystemTime) -> bool {
        match *self {
            SyncCondition::LagAtLeast(n) => status.lag_events >= n.max(1),
            SyncCondition::LagOlderThan(age) => status.lag_events > 0 && status.lag >= age,
            SyncCondition::LastSyncOlderThan(age) => status
                .last_sync
                .and_then(|at| now.duration_since(at).ok())
                .is_none_or(|since| since >= age),
        }
    }
}

impl SyncReport {
    /// The items that applied events.
    pub fn applied(&self) -> impl Iterator<Item = &SyncItem> {
        self.items
            .iter()
            .filter(|i| matches!(i, SyncItem::Applied { .. }))
    }

    /// The items that were already up to date.
    pub fn skipped(&self) -> impl Iterator<Item = &SyncItem> {
        self.items
            .iter()
            .filter(|i| matches!(i, SyncItem::Skipped { .. }))
    }

    /// The items that failed.
    pub fn failed(&self) -> impl Iterator<Item = &SyncItem> {
        self.items
            .iter()
            .filter(|i| matches!(i, SyncItem::Failed { .. }))
    }

    /// How many streams applied, were skipped, failed.
    #[must_use]
    pub fn totals(&self) -> SyncTotals {
        let mut t = SyncTotals::default();
        for item in &self.items {
            match item {
                SyncItem::Applied { .. } => t.applied += 1,
                SyncItem::Skipped { .. } => t.skipped += 1,
                SyncItem::Failed { .. } => t.failed += 1,
            }
        }
        t
    }

    /// The item for `stream`, if it was visited.
    #[must_use]
    pub fn item(&self, stream: StreamId) -> Option<&SyncItem> {
        self.items.iter().find(|i| i.stream() == stream)
    }
}

/// Counts of a [`SyncReport`]'s items.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncTotals {
    /// Streams that applied events.
    pub applied: usize,
    /// Streams already up to date.
    pub skipped: usize,
    /// Streams that failed.
    pub failed: usize,
}

/// How a chunk is synced.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// Refold from scratch.
    pub(crate) full: bool,
    /// Retry failed cursors instead of reporting them.
    pub(crate) retry_failed: bool,
}

/// What a claimed model needs, decided under the claim.
enum Plan {
    /// Nothing to apply.
    Skip,
    /// Write this, in the batch (from this cursor version).
    Write(Staged, u64),
    /// The cursor failed and stays failed.
    Failed(Error),
    /// Sync it on its own after the batch (a failure to record, a failed
    /// cursor to retry).
    Alone,
}

/// A model to write, folded but not yet through the bulk hook and encoded.
struct Staged {
    /// The write, its model still `None`.
    write: ModelWrite,
    /// The folded model (`None`: deleted, or the stored one stands).
    model: Option<Box<dyn AnyModel>>,
    /// The events folded into it.
    events: Vec<Arc<StoredEvent>>,
    report: ApplyReport,
}

impl Staged {
    fn finishing(&mut self) -> Finishing<'_> {
        Finishing::of(
            self.write.key,
            self.model.take(),
            self.write.delete,
            &self.events,
        )
    }
}

impl Engine {
    /// Syncs `streams` (sorted, distinct) of `reg` as one batch when the
    /// store claims many at once (else one by one), appending an item per
    /// stream to `items`. Never fails as a whole: a backend error fails the
    /// chunk's streams.
    /// An explicit sync of keyed perspective `reg` (incremental: a full
    /// one is a rebuild, refused before this): its one cursor caught up to
    /// the head, in batches of the global order. One item per stream whose
    /// events the cursor passed (`from`/`to` are the cursor's global
    /// positions). A named id the cursor did not pass as a stream is
    /// applied when it names a model the run wrote (a model key, `to` the
    /// position it reflects), else skipped, or failed when the run stopped
    /// at a failure, which is reported for [`KEYED_CURSOR`] too.
    pub(crate) async fn sync_keyed_items(
        &self,
        reg: &'static PerspectiveRegistration,
        named: Option<&[StreamId]>,
        options: Options,
        items: &mut Vec<SyncItem>,
    ) -> Result<()> {
        let done = self.sync_keyed(reg, options.retry_failed).await?;
        let from = done.from;
        // The last report of a stream carries the cursor it reached.
        let mut last: std::collections::HashMap<StreamId, usize> = std::collections::HashMap::new();
        for (i, report) in done.reports.iter().enumerate() {
            if report.failure.is_none() {
                last.insert(report.stream, i);
            }
        }
        let mut passed: Vec<usize> = last.values().copied().collect();
        passed.sort_unstable();
        for &i in &passed {
            items.push(SyncItem::applied(&done.reports[i], from, false));
        }
        // The last write of each model.
        let models: std::collections::HashMap<StreamId, (u64, bool)> = done
            .keys
            .iter()
            .map(|&(key, to, deleted)| (key, (to, deleted)))
            .collect();
        let failed = done.failed.map(Arc::new);
        for &stream in named.unwrap_or_default() {
            if last.contains_key(&stream) {
                continue;
            }
            items.push(match (models.get(&stream), &failed) {
                (Some(&(to, deleted)), _) => SyncItem::Applied {
                    stream,
                    from,
                    to,
                    deleted,
                },
                (None, Some(error)) => SyncItem::Failed {
                    stream,
                    error: Arc::clone(error),
                },
                (None, None) => SyncItem::Skipped { stream },
            });
        }
        if let Some(error) = failed {
            items.push(SyncItem::Failed {
                stream: KEYED_CURSOR,
                error,
            });
        }
        Ok(())
    }

    pub(crate) async fn sync_chunk(
        &self,
        reg: &'static PerspectiveRegistration,
        streams: &[StreamId],
        options: Options,
        items: &mut Vec<SyncItem>,
    ) {
        let batch = match self.perspectives.claim_many(reg.name, streams).await {
            Ok(batch) => batch,
            Err(e) => return fail_all(streams, e, items),
        };
        let Some(mut batch) = batch else {
            for &stream in streams {
                items.push(self.sync_alone(reg, stream, options).await);
            }
            return;
        };
        let mut staged: Vec<(Staged, u64)> = Vec::new();
        let mut alone = Vec::new();
        let mut planned = Vec::with_capacity(streams.len());
        for claimed in batch.take_claimed() {
            let stream = claimed.key;
            let plan = match self.plan(reg, claimed, options).await {
                Ok(plan) => plan,
                Err(e) => return fail_all(streams, e, items),
            };
            match plan {
                Plan::Skip => planned.push(SyncItem::Skipped { stream }),
                Plan::Failed(e) => planned.push(SyncItem::failed(stream, e)),
                Plan::Alone => alone.push(stream),
                Plan::Write(write, from) => staged.push((write, from)),
            }
        }
        // The bulk hook sees the batch's models at once; when it (or an
        // encoding) fails, each is synced on its own, which records it.
        let mut writes = Vec::with_capacity(staged.len());
        let mut done: Vec<(ApplyReport, u64, bool)> = Vec::with_capacity(staged.len());
        let finishing = staged.iter_mut().map(|(s, _)| s.finishing()).collect();
        match finish(self.model_format, reg, finishing).await {
            Ok(values) => {
                for ((mut s, from), model) in staged.into_iter().zip(values) {
                    s.write.model = model;
                    done.push((s.report, from, s.write.delete));
                    writes.push(s.write);
                }
            }
            Err(_) => alone.extend(staged.iter().map(|(s, _)| s.write.key)),
        }
        if writes.is_empty() {
            drop(batch);
        } else if let Err(e) = batch.commit(writes).await {
            let e = Arc::new(e);
            for (report, _, _) in &done {
                items.push(SyncItem::Failed {
                    stream: report.stream,
                    error: Arc::clone(&e),
                });
            }
            done.clear();
        }
        for (report, from, deleted) in &done {
            self.notify(report);
            items.push(SyncItem::applied(report, *from, *deleted));
        }
        items.extend(planned);
        for stream in alone {
            items.push(self.sync_alone(reg, stream, options).await);
        }
    }

    /// What to do with one model claimed in a batch.
    async fn plan(
        &self,
        reg: &'static PerspectiveRegistration,
        claimed: ClaimedModel,
        options: Options,
    ) -> Result<Plan> {
        if let Some(f) = &claimed.checkpoint.failure {
            if options.retry_failed {
                // A batch never records or clears a failure.
                return Ok(Plan::Alone);
            }
            return Ok(Plan::Failed(Error::PerspectiveFailed {
                perspective: reg.name,
                stream: claimed.key,
                version: f.version,
                message: f.message.clone(),
            }));
        }
        if options.full {
            let events = self.events.read_stream(claimed.key, 0).await?;
            return Ok(
                match refold(reg, claimed.key, &claimed.checkpoint, events) {
                    Refold::Nothing => Plan::Skip,
                    Refold::Failed(_) => Plan::Alone,
                    Refold::Write(staged) => Plan::Write(staged, claimed.checkpoint.version),
                },
            );
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
            return Ok(Plan::Skip);
        }
        let mut stored = claimed.model;
        let folded = fold(
            reg,
            &claimed.checkpoint,
            || decode_stored(reg, stored.take()),
            &events,
        );
        let Folded {
            model,
            progress,
            failed,
            deleted,
        } = folded;
        if failed.is_some() {
            // Caught up alone, which commits what applied and records the failure.
            return Ok(Plan::Alone);
        }
        let checkpoint = Checkpoint {
            version: progress.version,
            failure: None,
            skipped: claimed.checkpoint.skipped,
        };
        let write = if deleted {
            ModelWrite::deleting(claimed.key, checkpoint)
        } else {
            ModelWrite::new(claimed.key, None, checkpoint)
        };
        let report = ApplyReport::new(reg.name, claimed.key, progress.version, progress.applied);
        let staged = Staged {
            write,
            model,
            events,
            report,
        };
        Ok(Plan::Write(staged, claimed.checkpoint.version))
    }

    /// Syncs one stream under its own claim.
    async fn sync_alone(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        options: Options,
    ) -> SyncItem {
        let result = if options.full {
            self.refold_alone(reg, stream, options).await
        } else {
            self.catch_up_alone(reg, stream, options).await
        };
        result.unwrap_or_else(|e| SyncItem::failed(stream, e))
    }

    /// Incremental, one stream: the engine's catch-up (or its retry).
    async fn catch_up_alone(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        options: Options,
    ) -> Result<SyncItem> {
        if options.retry_failed {
            let checkpoint = self.perspectives.checkpoint(reg.name, stream).await?;
            if checkpoint.failure.is_some() {
                let report = self.recover(reg, stream, Recovery::Retry).await?;
                return Ok(item_of(&report, self, reg).await);
            }
        }
        Ok(match self.catch_up(reg, stream).await? {
            Some(report) => item_of(&report, self, reg).await,
            None => SyncItem::Skipped { stream },
        })
    }

    /// Full, one stream: claim, refold from version 0, commit.
    async fn refold_alone(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        options: Options,
    ) -> Result<SyncItem> {
        let unit = self.perspectives.claim(reg.name, stream).await?;
        let checkpoint = unit.checkpoint().clone();
        if let Some(f) = &checkpoint.failure {
            if !options.retry_failed {
                return Err(Error::PerspectiveFailed {
                    perspective: reg.name,
                    stream,
                    version: f.version,
                    message: f.message.clone(),
                });
            }
        }
        let events = self.events.read_stream(stream, 0).await?;
        match refold(reg, stream, &checkpoint, events) {
            Refold::Nothing => Ok(SyncItem::Skipped { stream }),
            // The unit drops uncommitted: model and cursor stay as they were.
            Refold::Failed(e) => Err(e),
            Refold::Write(mut staged) => {
                let finishing = vec![staged.finishing()];
                let values = finish(self.model_format, reg, finishing).await;
                let mut write = staged.write;
                write.model = match values {
                    Ok(mut values) => values.pop().flatten(),
                    Err(message) => {
                        return Err(Error::FoldFailed {
                            perspective: reg.name,
                            stream,
                            version: staged.report.version,
                            message,
                        })
                    }
                };
                let report = staged.report;
                let deleted = write.delete;
                if deleted {
                    unit.commit_delete(write.checkpoint).await?;
                } else {
                    unit.commit(write.model, write.checkpoint).await?;
                }
                self.notify(&report);
                Ok(SyncItem::applied(&report, checkpoint.version, deleted))
            }
        }
    }
}

/// The item for a catch-up report: applied from the version before its
/// events (they are contiguous), deleted when the model is now gone.
async fn item_of(
    report: &ApplyReport,
    engine: &Engine,
    reg: &'static PerspectiveRegistration,
) -> SyncItem {
    let from = report.version.saturating_sub(report.applied.len() as u64);
    let deleted = matches!(
        engine
            .perspectives
            .load_model(reg.name, report.stream)
            .await,
        Ok(None)
    );
    SyncItem::applied(report, from, deleted)
}

fn fail_all(streams: &[StreamId], error: Error, items: &mut Vec<SyncItem>) {
    let error = Arc::new(error);
    let seen: std::collections::HashSet<StreamId> = items.iter().map(SyncItem::stream).collect();
    for &stream in streams {
        if !seen.contains(&stream) {
            items.push(SyncItem::Failed {
                stream,
                error: Arc::clone(&error),
            });
        }
    }
}

/// What a refold from version 0 yields.
enum Refold {
    /// The stream holds no event.
    Nothing,
    /// The fold failed (nothing is written).
    Failed(Error),
    /// The model and cursor to write in place of the old ones.
    Write(Staged),
}

/// Folds every event of `stream` into a fresh model, leaving out the events
/// `checkpoint` records as skipped; the cursor's failure is cleared.
fn refold(
    reg: &'static PerspectiveRegistration,
    stream: StreamId,
    checkpoint: &Checkpoint,
    events: Vec<Arc<StoredEvent>>,
) -> Refold {
    let Some(last) = events.last() else {
        return Refold::Nothing;
    };
    let from_zero = Checkpoint {
        version: 0,
        failure: None,
        skipped: checkpoint.skipped.clone(),
    };
    let Folded {
        model,
        progress,
        failed,
        deleted,
    } = fold(reg, &from_zero, || new_model(reg), &events);
    let fold_failed = |version: u64, message: String| {
        Refold::Failed(Error::FoldFailed {
            perspective: reg.name,
            stream,
            version,
            message,
        })
    };
    if let Some((at, message)) = failed {
        return fold_failed(events[at].stream_version, message);
    }
    let cursor = Checkpoint {
        version: progress.version.max(last.stream_version),
        failure: None,
        skipped: checkpoint.skipped.clone(),
    };
    let report = ApplyReport::new(reg.name, stream, cursor.version, progress.applied);
    if deleted {
        let write = ModelWrite::deleting(stream, cursor);
        return Refold::Write(Staged {
            write,
            model: None,
            events,
            report,
        });
    }
    // No event applied (all skipped): the model is a fresh one.
    let model = match model.map_or_else(|| new_model(reg), Ok) {
        Ok(m) => m,
        Err(message) => return fold_failed(0, message),
    };
    Refold::Write(Staged {
        write: ModelWrite::new(stream, None, cursor),
        model: Some(model),
        events,
        report,
    })
}

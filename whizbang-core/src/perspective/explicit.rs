//! Explicit sync: the caller says when a perspective is brought up to date.
//!
//! [`Runtime::sync`] returns a [`PerspectiveSync`] builder: for named streams
//! ([`streams`](PerspectiveSync::streams), incremental), for every stream
//! holding events the perspective handles ([`all`](PerspectiveSync::all)),
//! or from scratch ([`full`](PerspectiveSync::full)). Many streams are one
//! batch: the store claims a chunk of models at once and commits them in
//! one transaction ([`PerspectiveStore::claim_many`]), so a thousand ids cost
//! a few round trips, not a thousand. [`run`](PerspectiveSync::run) syncs in
//! the caller's task; [`deferred`](PerspectiveSync::deferred) spawns it and
//! hands back a [`SyncHandle`]; [`Runtime::sync_many`] runs several
//! perspectives in parallel.
//!
//! The semantics are the engine's: each model is applied exactly once under
//! its claim, a failed cursor stays failed (reported as such, unless the
//! caller asks [`retry_failed`](PerspectiveSync::retry_failed)), waiters are
//! woken by every commit, and dropping a run mid-way leaves every model
//! either as it was or as committed (each chunk commits atomically). One
//! stream's failure does not fail the run: the [`SyncReport`] lists what was
//! applied, skipped and failed.
//!
//! [`PerspectiveStore::claim_many`]: crate::store::PerspectiveStore::claim_many

use super::engine::{decode_stored, encode, fold, new_model, Engine, Folded, Recovery};
use super::{ApplyReport, PerspectiveRegistration};
use crate::dispatch::Runtime;
use crate::error::{Error, Result};
use crate::message::StreamId;
use crate::perspective::Perspective;
use crate::store::{Checkpoint, ClaimedModel, ModelWrite, StoredEvent};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

/// Which streams a sync visits.
#[derive(Clone, Debug)]
enum Target {
    Streams(Vec<StreamId>),
    All,
}

/// An explicit sync of one perspective, being set up: from
/// [`Runtime::sync`] or [`Runtime::sync_named`]. Nothing happens until
/// [`run`](Self::run) or [`deferred`](Self::deferred).
///
/// Without [`streams`](Self::streams) it syncs every stream
/// ([`all`](Self::all)).
#[must_use = "a sync does nothing until `.run().await` or `.deferred()`"]
#[derive(Clone)]
pub struct PerspectiveSync {
    runtime: Runtime,
    perspective: std::result::Result<&'static PerspectiveRegistration, String>,
    target: Target,
    full: bool,
    retry_failed: bool,
    chunk: usize,
}

impl std::fmt::Debug for PerspectiveSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerspectiveSync")
            .field("perspective", &self.perspective.as_ref().map(|r| r.name))
            .field("target", &self.target)
            .field("full", &self.full)
            .field("retry_failed", &self.retry_failed)
            .field("chunk", &self.chunk)
            .finish()
    }
}

impl PerspectiveSync {
    /// Syncs these streams (incremental unless [`full`](Self::full)), as
    /// one batch. Ids given twice are synced once; an empty list is a no-op
    /// run with an empty report.
    pub fn streams<I>(mut self, ids: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<StreamId>,
    {
        self.target = Target::Streams(ids.into_iter().map(Into::into).collect());
        self
    }

    /// Syncs every stream holding events the perspective handles, up to
    /// the head (the default). Needs an event store that lists streams
    /// ([`EventStore::streams_with_types`](crate::store::EventStore::streams_with_types)).
    pub fn all(mut self) -> Self {
        self.target = Target::All;
        self
    }

    /// Refolds from scratch: each model is claimed, folded from version 0
    /// into a fresh model and committed in place of the old one (a model
    /// whose fold fails keeps its old state and cursor, and is reported
    /// failed). For the named streams, or all.
    pub fn full(mut self) -> Self {
        self.full = true;
        self
    }

    /// Retries failed cursors instead of reporting them failed: clears the
    /// failure and applies again from the failing event (as
    /// [`Runtime::retry_perspective`] does).
    pub fn retry_failed(mut self) -> Self {
        self.retry_failed = true;
        self
    }

    /// Claims and commits at most `n` models per transaction (default
    /// [`DEFAULT_SYNC_CHUNK`]). `0` is refused when the sync runs.
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk = n;
        self
    }

    /// The mode this sync runs in.
    #[must_use]
    pub fn mode(&self) -> SyncMode {
        match (&self.target, self.full) {
            (Target::Streams(_), false) => SyncMode::Streams,
            (Target::All, false) => SyncMode::All,
            (Target::Streams(_), true) => SyncMode::FullStreams,
            (Target::All, true) => SyncMode::FullAll,
        }
    }

    /// Runs the sync now, in the caller's task.
    ///
    /// Dropping the future mid-way is safe: every model is either as it was
    /// or as committed by a chunk that completed.
    ///
    /// # Errors
    /// [`Error::UnknownPerspective`] when the perspective is not registered
    /// in this runtime; [`Error::InvalidInput`] for a chunk size of 0; a
    /// backend error listing the streams for [`all`](Self::all). Per-stream
    /// failures (a failed cursor, an apply error, a backend error on one
    /// chunk) are not errors: they are [`SyncItem::Failed`] in the report.
    pub async fn run(self) -> Result<SyncReport> {
        let started = Instant::now();
        let started_at = std::time::SystemTime::now();
        let mode = self.mode();
        let name = match &self.perspective {
            Ok(reg) => reg.name,
            Err(name) => name.as_str(),
        }
        .to_owned();
        let span = tracing::info_span!(
            "whizbang.sync.run",
            perspective = %name,
            mode = mode.as_str(),
            streams = tracing::field::Empty,
            applied = tracing::field::Empty,
            skipped = tracing::field::Empty,
            failed = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let runtime = self.runtime.clone();
        let target = super::sync_log::target_summary(match &self.target {
            Target::Streams(ids) => Some(ids),
            Target::All => None,
        });
        let result = tracing::Instrument::instrument(self.run_inner(started), span.clone()).await;
        let started = (started_at, started);
        super::sync_log::finish(&runtime, &span, &name, mode, target, started, &result).await;
        result
    }

    async fn run_inner(self, started: Instant) -> Result<SyncReport> {
        let reg = self
            .perspective
            .clone()
            .map_err(|name| Error::UnknownPerspective { name })?;
        if self.chunk == 0 {
            return Err(Error::InvalidInput(format!(
                "explicit sync of perspective `{}`: a chunk size of 0 claims nothing; give at \
                 least 1 (the default is {DEFAULT_SYNC_CHUNK})",
                reg.name
            )));
        }
        let mode = self.mode();
        let engine = &self.runtime.inner.engine;
        let streams = match self.target {
            Target::Streams(mut ids) => {
                ids.sort_unstable();
                ids.dedup();
                ids
            }
            Target::All => {
                let behind = (!self.full).then_some(reg.name);
                engine
                    .events
                    .streams_with_types(behind, reg.event_types)
                    .await?
            }
        };
        tracing::Span::current().record("streams", streams.len());
        let options = Options {
            full: self.full,
            retry_failed: self.retry_failed,
        };
        let mut items = Vec::with_capacity(streams.len());
        for chunk in streams.chunks(self.chunk) {
            engine.sync_chunk(reg, chunk, options, &mut items).await;
        }
        Ok(SyncReport {
            perspective: reg.name,
            mode,
            items,
            duration: started.elapsed(),
        })
    }

    /// Runs the sync on a new task and returns its handle: await it for the
    /// report, or drop it and the sync still runs to the end.
    pub fn deferred(self) -> SyncHandle {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => SyncHandle(Deferred::Running(handle.spawn(self.run()))),
            Err(_) => SyncHandle(Deferred::Failed(Some(Error::NoTokioRuntime))),
        }
    }
}

/// A sync running on its own task, from [`PerspectiveSync::deferred`]:
/// await it for the report. Dropping it does not cancel the sync.
#[derive(Debug)]
#[must_use = "await the handle for the report, or drop it to let the sync finish unobserved"]
pub struct SyncHandle(Deferred);

#[derive(Debug)]
enum Deferred {
    Running(tokio::task::JoinHandle<Result<SyncReport>>),
    Failed(Option<Error>),
}

impl SyncHandle {
    /// Whether the sync has finished (the handle would resolve at once).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        match &self.0 {
            Deferred::Running(h) => h.is_finished(),
            Deferred::Failed(_) => true,
        }
    }
}

impl Future for SyncHandle {
    type Output = Result<SyncReport>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Deferred::Running(handle) => Pin::new(handle).poll(cx).map(|joined| {
                joined.unwrap_or_else(|e| {
                    Err(Error::Invariant(format!(
                        "the task running a deferred sync ended without a report: {e}"
                    )))
                })
            }),
            Deferred::Failed(error) => Poll::Ready(Err(error.take().unwrap_or_else(|| {
                Error::Invariant("a deferred sync's handle was polled after it resolved".into())
            }))),
        }
    }
}

impl Runtime {
    /// An explicit sync of perspective `P`: set it up, then
    /// [`run`](PerspectiveSync::run) it or run it
    /// [`deferred`](PerspectiveSync::deferred).
    ///
    /// ```
    /// # use whizbang_core::{perspective, Event, Runtime, StreamId};
    /// # #[derive(Event, serde::Serialize, serde::Deserialize)]
    /// # #[event(name = "doc.sync.opened")] struct Opened { #[stream_key] id: uuid::Uuid }
    /// # struct Counts;
    /// # #[perspective(model = u32, name = "doc.sync.counts")]
    /// # impl Counts { fn opened(n: &mut u32, _: &Opened) { *n += 1; } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
    /// let runtime = Runtime::in_memory()?;
    /// let (a, b) = (StreamId::new(), StreamId::new());
    /// let report = runtime.sync::<Counts>().streams([a, b]).run().await?;
    /// assert_eq!(report.totals().skipped, 2); // nothing to apply yet
    /// let everything = runtime.sync::<Counts>().all().deferred();
    /// assert!(everything.await?.items.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn sync<P: Perspective>(&self) -> PerspectiveSync {
        let perspective = self
            .inner
            .registry
            .perspective::<P>()
            .map_err(|_| P::NAME.to_owned());
        self.sync_with(perspective)
    }

    /// An explicit sync of the perspective called `name` (for tools that
    /// have only its name). An unknown name fails when the sync runs, with
    /// [`Error::UnknownPerspective`].
    pub fn sync_named(&self, name: &str) -> PerspectiveSync {
        let perspective = self
            .inner
            .registry
            .perspective_named(name)
            .ok_or_else(|| name.to_owned());
        self.sync_with(perspective)
    }

    fn sync_with(
        &self,
        perspective: std::result::Result<&'static PerspectiveRegistration, String>,
    ) -> PerspectiveSync {
        PerspectiveSync {
            runtime: self.clone(),
            perspective,
            target: Target::All,
            full: false,
            retry_failed: false,
            chunk: DEFAULT_SYNC_CHUNK,
        }
    }

    /// Runs several syncs in parallel, each on its own task, and returns
    /// their results in the order given. Dropping the future does not
    /// cancel the syncs (see [`PerspectiveSync::deferred`]).
    ///
    /// ```
    /// # use whizbang_core::{perspective, Event, Runtime};
    /// # #[derive(Event, serde::Serialize, serde::Deserialize)]
    /// # #[event(name = "doc.many.opened")] struct Opened { #[stream_key] id: uuid::Uuid }
    /// # struct A; struct B;
    /// # #[perspective(model = u32, name = "doc.many.a")]
    /// # impl A { fn opened(n: &mut u32, _: &Opened) { *n += 1; } }
    /// # #[perspective(model = u32, name = "doc.many.b")]
    /// # impl B { fn opened(n: &mut u32, _: &Opened) { *n += 1; } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
    /// let runtime = Runtime::in_memory()?;
    /// let results = runtime.sync_many([runtime.sync::<A>(), runtime.sync::<B>().full()]).await;
    /// assert!(results.iter().all(Result::is_ok));
    /// # Ok(()) }
    /// ```
    pub async fn sync_many(
        &self,
        syncs: impl IntoIterator<Item = PerspectiveSync>,
    ) -> Vec<Result<SyncReport>> {
        let handles: Vec<SyncHandle> = syncs.into_iter().map(PerspectiveSync::deferred).collect();
        let mut results = Vec::with_capacity(handles.len());
        for handle in handles {
            results.push(handle.await);
        }
        results
    }
}

/// How a chunk is synced.
#[derive(Clone, Copy, Debug)]
struct Options {
    full: bool,
    retry_failed: bool,
}

/// What a claimed model needs, decided under the claim.
enum Plan {
    /// Nothing to apply.
    Skip,
    /// Write this, in the batch.
    Write(ModelWrite, ApplyReport, u64),
    /// The cursor failed and stays failed.
    Failed(Error),
    /// Sync it on its own after the batch (a failure to record, a failed
    /// cursor to retry).
    Alone,
}

impl Engine {
    /// Syncs `streams` (sorted, distinct) of `reg` as one batch when the
    /// store claims many at once (else one by one), appending an item per
    /// stream to `items`. Never fails as a whole: a backend error fails the
    /// chunk's streams.
    async fn sync_chunk(
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
        let mut writes = Vec::new();
        let mut done: Vec<(ApplyReport, u64, bool)> = Vec::new();
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
                Plan::Write(write, report, from) => {
                    done.push((report, from, write.delete));
                    writes.push(write);
                }
            }
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
                match refold(self, reg, claimed.key, &claimed.checkpoint, &events) {
                    Refold::Nothing => Plan::Skip,
                    Refold::Failed(_) => Plan::Alone,
                    Refold::Write(write, report) => {
                        Plan::Write(write, report, claimed.checkpoint.version)
                    }
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
        let Ok(model) = model.map(|m| encode(self.model_format, reg, m)).transpose() else {
            return Ok(Plan::Alone);
        };
        let checkpoint = Checkpoint {
            version: progress.version,
            failure: None,
            skipped: claimed.checkpoint.skipped,
        };
        let write = if deleted {
            ModelWrite::deleting(claimed.key, checkpoint)
        } else {
            ModelWrite::new(claimed.key, model, checkpoint)
        };
        let report = ApplyReport::new(reg.name, claimed.key, progress.version, progress.applied);
        Ok(Plan::Write(write, report, claimed.checkpoint.version))
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
        match refold(self, reg, stream, &checkpoint, &events) {
            Refold::Nothing => Ok(SyncItem::Skipped { stream }),
            // The unit drops uncommitted: model and cursor stay as they were.
            Refold::Failed(e) => Err(e),
            Refold::Write(write, report) => {
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
    Write(ModelWrite, ApplyReport),
}

/// Folds every event of `stream` into a fresh model, leaving out the events
/// `checkpoint` records as skipped; the cursor's failure is cleared.
fn refold(
    engine: &Engine,
    reg: &'static PerspectiveRegistration,
    stream: StreamId,
    checkpoint: &Checkpoint,
    events: &[Arc<StoredEvent>],
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
    } = fold(reg, &from_zero, || new_model(reg), events);
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
        return Refold::Write(ModelWrite::deleting(stream, cursor), report);
    }
    // No event applied (all skipped): the model is a fresh one.
    let model = match model.map_or_else(|| new_model(reg), Ok) {
        Ok(m) => m,
        Err(message) => return fold_failed(0, message),
    };
    match encode(engine.model_format, reg, model) {
        Ok(value) => Refold::Write(ModelWrite::new(stream, Some(value), cursor), report),
        Err(message) => fold_failed(progress.version, message),
    }
}

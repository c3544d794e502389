//! Explicit sync, the caller's side: [`Runtime::sync`] returns a
//! [`PerspectiveSync`] builder: for named streams
//! ([`streams`](PerspectiveSync::streams), incremental), for every stream
//! holding events the perspective handles ([`all`](PerspectiveSync::all)),
//! or from scratch ([`full`](PerspectiveSync::full)). Many streams are one
//! batch (see [`SyncReport`]); [`run`](PerspectiveSync::run) syncs in the
//! caller's task, [`deferred`](PerspectiveSync::deferred) spawns it and hands
//! back a [`SyncHandle`], and [`Runtime::sync_many`] runs several
//! perspectives in parallel.
//!
//! Every run is recorded: a `whizbang.sync.run` span, `metrics` facade
//! counters and a histogram (listed on [`SyncLog`](crate::perspective::SyncLog)), and a [`SyncRun`] in
//! the runtime's [`SyncLog`](crate::perspective::SyncLog) ([`Runtime::sync_log`]). Other runs (a
//! strategy's, a rebuild) record through [`Runtime::record_sync_run`].

use super::Runtime;
use crate::error::{Error, Result};
use crate::message::StreamId;
use crate::perspective::explicit::Options;
use crate::perspective::{
    Perspective, PerspectiveRegistration, SyncCondition, SyncMode, SyncReport, SyncRun,
    DEFAULT_SYNC_CHUNK,
};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

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
    condition: Option<SyncCondition>,
}

impl std::fmt::Debug for PerspectiveSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerspectiveSync")
            .field("perspective", &self.perspective.as_ref().map(|r| r.name))
            .field("target", &self.target)
            .field("full", &self.full)
            .field("retry_failed", &self.retry_failed)
            .field("chunk", &self.chunk)
            .field("condition", &self.condition)
            .finish()
    }
}

impl PerspectiveSync {
    /// Syncs these streams (incremental unless [`full`](Self::full)), as
    /// one batch. Ids given twice are synced once; an empty list is a no-op
    /// run with an empty report.
    ///
    /// For a keyed perspective (`key = ..`), whose models gather events of
    /// many streams under one cursor, no stream can be synced alone: the
    /// cursor is caught up to the head, and the report lists every stream
    /// it passed (`from`/`to` are the cursor's global positions); a named
    /// id that is a model key the run wrote is applied (`to` the position
    /// its model reflects), any other named id skipped (or failed, when the
    /// run stopped at a failure, which is also reported for
    /// [`KEYED_CURSOR`](crate::perspective::KEYED_CURSOR)).
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
    ///
    /// A keyed perspective's models gather events of many streams, so a
    /// full sync of one is refused with [`Error::InvalidInput`]: rebuild it
    /// with [`Runtime::rebuild`] instead.
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

    /// Runs only when `condition` holds on the perspective's status when
    /// the sync starts (its lag, or the time since it last applied); else
    /// the sync does nothing and its report's
    /// [`not_needed`](SyncReport::not_needed) says why. For a read model
    /// that needs to be fresh only to a point:
    ///
    /// ```
    /// # async fn doc(runtime: whizbang_core::Runtime) -> whizbang_core::Result<()> {
    /// use std::time::Duration;
    /// use whizbang_core::SyncCondition;
    /// let report = runtime
    ///     .sync_named("reports.daily")
    ///     .when(SyncCondition::LagOlderThan(Duration::from_secs(60)))
    ///     .run()
    ///     .await?;
    /// if report.not_needed.is_some() {
    ///     // less than a minute behind: nothing ran
    /// }
    /// # Ok(()) }
    /// ```
    pub fn when(mut self, condition: SyncCondition) -> Self {
        self.condition = Some(condition);
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
    /// in this runtime; [`Error::InvalidInput`] for a chunk size of 0 or a
    /// full sync of a keyed perspective; a
    /// backend error listing the streams for [`all`](Self::all). Per-stream
    /// failures (a failed cursor, an apply error, a backend error on one
    /// chunk) are not errors: they are [`SyncItem::Failed`](crate::SyncItem::Failed) in the report.
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
        let target = target_summary(match &self.target {
            Target::Streams(ids) => Some(ids),
            Target::All => None,
        });
        let result = tracing::Instrument::instrument(self.run_inner(started), span.clone()).await;
        let started = (started_at, started);
        finish(&runtime, &span, &name, mode, target, started, &result).await;
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
        if let Some(condition) = self.condition {
            let status = self.runtime.perspective_status_of(reg).await?;
            if !condition.holds(&status, SystemTime::now()) {
                tracing::debug!(perspective = reg.name, ?condition, "sync not needed");
                return Ok(SyncReport {
                    perspective: reg.name,
                    mode,
                    items: Vec::new(),
                    duration: started.elapsed(),
                    not_needed: Some(condition),
                });
            }
        }
        let engine = &self.runtime.inner.engine;
        if reg.is_keyed() {
            return self.run_keyed(reg, started).await;
        }
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
            not_needed: None,
        })
    }

    /// The explicit sync of a keyed perspective: its models gather events
    /// of many streams under one cursor, so an incremental sync catches
    /// that cursor up (for named streams as for everything) and a full one
    /// is a rebuild.
    async fn run_keyed(
        self,
        reg: &'static PerspectiveRegistration,
        started: Instant,
    ) -> Result<SyncReport> {
        let mode = self.mode();
        if self.full {
            return Err(Error::InvalidInput(format!(
                "a full sync of keyed perspective `{}` would refold models that gather events \
                 of many streams, so no stream can be refolded alone: rebuild it instead with \
                 `runtime.rebuild::<P>()` (or `whizbang rebuild {}`), which refolds every model \
                 beside the live ones and swaps them in atomically; nothing was changed",
                reg.name, reg.name
            )));
        }
        let options = Options {
            full: false,
            retry_failed: self.retry_failed,
        };
        let named = match self.target {
            Target::Streams(mut ids) => {
                ids.sort_unstable();
                ids.dedup();
                Some(ids)
            }
            Target::All => None,
        };
        let mut items = Vec::new();
        self.runtime
            .inner
            .engine
            .sync_keyed_items(reg, named.as_deref(), options, &mut items)
            .await?;
        tracing::Span::current().record("streams", items.len());
        Ok(SyncReport {
            perspective: reg.name,
            mode,
            items,
            duration: started.elapsed(),
            not_needed: None,
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
            condition: None,
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

impl Runtime {
    /// The most recent sync runs this runtime's [`SyncLog`](crate::perspective::SyncLog) keeps, newest
    /// first, at most `limit`.
    ///
    /// # Errors
    /// The log's backend errors.
    pub async fn sync_log(&self, limit: usize) -> Result<Vec<SyncRun>> {
        self.inner.sync_log.recent(limit).await
    }

    /// Records a sync run: emits its metrics (listed on [`SyncLog`](crate::perspective::SyncLog)) and
    /// writes it to the [`SyncLog`](crate::perspective::SyncLog). Explicit
    /// syncs call it; other runs (a strategy's, a rebuild) may too. A log
    /// that cannot write is reported with `tracing`, never as an error.
    pub async fn record_sync_run(&self, run: &SyncRun) {
        emit_metrics(run);
        if let Err(e) = self.inner.sync_log.record(run).await {
            tracing::warn!(
                perspective = %run.perspective, mode = %run.mode, error = %e,
                "could not record a sync run in the sync log; the run itself stands"
            );
        }
    }
}

fn emit_metrics(run: &SyncRun) {
    let labels = [
        ("perspective", run.perspective.clone()),
        ("mode", run.mode.clone()),
    ];
    let mut with_outcome = labels.to_vec();
    with_outcome.push(("outcome", run.outcome.as_str().to_owned()));
    metrics::counter!("whizbang_sync_runs_total", &with_outcome).increment(1);
    metrics::counter!("whizbang_sync_applied_total", &labels).increment(run.applied);
    metrics::counter!("whizbang_sync_skipped_total", &labels).increment(run.skipped);
    metrics::counter!("whizbang_sync_failed_total", &labels).increment(run.failed);
    metrics::histogram!("whizbang_sync_duration_seconds", &labels)
        .record(run.duration.as_secs_f64());
}

/// What an explicit sync covered, in short.
fn target_summary(streams: Option<&[crate::message::StreamId]>) -> String {
    const SHOWN: usize = 3;
    match streams {
        None => "all streams".to_owned(),
        Some(ids) => {
            let shown: Vec<String> = ids.iter().take(SHOWN).map(ToString::to_string).collect();
            let more = ids.len().saturating_sub(SHOWN);
            let list = shown.join(", ");
            match (ids.len(), more) {
                (0, _) => "no streams".to_owned(),
                (1, _) => format!("1 stream: {list}"),
                (n, 0) => format!("{n} streams: {list}"),
                (n, more) => format!("{n} streams: {list} and {more} more"),
            }
        }
    }
}

/// Ends an explicit sync run: records the counts and outcome on its span,
/// emits its metrics and writes its [`SyncRun`].
async fn finish(
    runtime: &Runtime,
    span: &tracing::Span,
    perspective: &str,
    mode: SyncMode,
    target: String,
    (started_at, started): (SystemTime, Instant),
    result: &Result<SyncReport>,
) {
    let run = match result {
        Ok(report) => {
            let t = report.totals();
            SyncRun::new(
                perspective,
                mode.as_str(),
                target,
                started_at,
                report.duration,
                (t.applied as u64, t.skipped as u64, t.failed as u64),
            )
        }
        Err(e) => SyncRun::new(
            perspective,
            mode.as_str(),
            target,
            started_at,
            started.elapsed(),
            (0, 0, 0),
        )
        .with_error(e.to_string()),
    };
    span.record("applied", run.applied);
    span.record("skipped", run.skipped);
    span.record("failed", run.failed);
    span.record("outcome", run.outcome.as_str());
    if let Err(Error::UnknownPerspective { .. }) = result {
        // Nothing ran: no record, no metrics for a name that is not a perspective.
        return;
    }
    runtime.record_sync_run(&run).await;
}

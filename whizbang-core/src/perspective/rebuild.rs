//! Rebuilds beside live: a perspective's read models built again from the
//! event store while the live ones keep serving and keep being applied,
//! then swapped in atomically.
//!
//! [`Runtime::rebuild`](crate::Runtime::rebuild) (or
//! [`rebuild_named`](crate::Runtime::rebuild_named)):
//! 1. **Build**: lists the streams holding the perspective's event types
//!    ([`EventStore::stream_heads`](crate::store::EventStore::stream_heads)) and
//!    folds them, a chunk of streams per transaction, into the shadow
//!    generation ([`shadow_name`]: the same store, the name
//!    `<name>~rebuild`). No listener hears of these commits: waiters only
//!    ever see the live models. It repeats over what arrived meanwhile until
//!    little is left.
//! 2. **Swap**: fences the live perspective
//!    ([`RebuildStore::fence`]: its claims wait), folds the last events into
//!    the shadow, and swaps it in with one atomic step
//!    ([`RebuildFence::swap`]) that also records the version the models are
//!    built with. Readers see the old models or the new ones, never a mix;
//!    a waiter told "applied" is told so by the cursors of the models it
//!    reads, before the swap and after it.
//!
//! The shadow's cursors are its progress: a rebuild stopped anywhere (an
//! error, its future dropped, its process killed) leaves the live models as
//! they were, and the next rebuild to the same version resumes from the
//! shadow instead of from zero. A rebuild whose new code fails on a stream
//! stops before the swap with [`Error::PerspectiveFailed`]: the live models
//! stay, and the shadow keeps the failed cursor until the next rebuild.
//!
//! Progress ([`RebuildProgress`]: events done out of total, rate, time left)
//! goes to an optional watch channel ([`RebuildOptions::progress`]) and to the
//! store ([`RebuildStore::save_progress`]), where other processes read it.
//!
//! Versions: `#[perspective(model = M, version = 2)]` declares the version of
//! the apply code ([`Perspective::VERSION`](crate::Perspective::VERSION)).
//! [`Runtime::check_perspective_versions`](crate::Runtime::check_perspective_versions)(crate::Runtime::check_perspective_versions)
//! compares each with the version the store recorded and, per
//! [`VersionPolicy`], rebuilds the ones that are behind or refuses to go on.

use super::engine::{decode_stored, finish, fold, ApplyReport, Engine, Finishing};
use super::key::KEYED_CURSOR;
use super::PerspectiveRegistration;
use crate::error::{Error, Result};
use crate::message::StreamId;
use crate::store::rebuild::final_write;
pub use crate::store::rebuild::{
    shadow_name, KeyedBehind, RebuildFence, RebuildPhase, RebuildProgress, RebuildStart,
    RebuildStore, SHADOW_SUFFIX,
};
use crate::store::{ClaimedModel, PerspectiveStore};
use crate::util::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How a rebuild runs. Builder-style.
///
/// ```
/// use whizbang_core::perspective::rebuild::RebuildOptions;
/// let (options, progress) = RebuildOptions::default().chunk_events(5_000).watch();
/// assert_eq!(options.chunk_events, 5_000);
/// assert_eq!(progress.borrow().done, 0);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RebuildOptions {
    /// About how many events one transaction of the build folds (default
    /// 20,000; whole streams, at least one per transaction).
    pub chunk_events: u64,
    /// Catch-up passes stop, and the fence is taken, once at most this many
    /// events are left to fold (default 1,000): the fence is held while they
    /// are folded.
    pub fence_below: u64,
    /// At most this many catch-up passes before the fence is taken anyway
    /// (default 5).
    pub max_passes: u32,
    /// Chunks folded at once (default 2: one reads while another folds
    /// and commits).
    pub parallel: usize,
    /// Where progress is sent after each chunk (default none).
    pub progress: Option<watch::Sender<RebuildProgress>>,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        RebuildOptions {
            chunk_events: 20_000,
            fence_below: 1_000,
            max_passes: 5,
            parallel: 2,
            progress: None,
        }
    }
}

impl RebuildOptions {
    /// Sets [`chunk_events`](Self::chunk_events) (at least 1).
    #[must_use]
    pub fn chunk_events(mut self, n: u64) -> Self {
        self.chunk_events = n.max(1);
        self
    }

    /// Sets [`parallel`](Self::parallel) (at least 1).
    #[must_use]
    pub fn parallel(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }

    /// Sets [`fence_below`](Self::fence_below).
    #[must_use]
    pub fn fence_below(mut self, n: u64) -> Self {
        self.fence_below = n;
        self
    }

    /// These options sending progress to a new watch channel, and its receiver.
    #[must_use]
    pub fn watch(mut self) -> (Self, watch::Receiver<RebuildProgress>) {
        let (tx, rx) = watch::channel(RebuildProgress::default());
        self.progress = Some(tx);
        (self, rx)
    }
}

/// What a finished rebuild did.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RebuildReport {
    /// The perspective (live name).
    pub perspective: &'static str,
    /// The version its models are now built with.
    pub version: u32,
    /// Models swapped in.
    pub models: usize,
    /// Events the new models reflect.
    pub events: u64,
    /// Events folded by this run (less than [`events`](Self::events) after a resume).
    pub folded: u64,
    /// Whether it resumed an interrupted rebuild.
    pub resumed: bool,
    /// How long it took, fence included.
    pub elapsed: Duration,
    /// How long the live perspective was fenced.
    pub fenced: Duration,
}

/// What [`Runtime::check_perspective_versions`](crate::Runtime::check_perspective_versions) does with a perspective whose
/// declared version is above the recorded one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VersionPolicy {
    /// Rebuild it now, beside live (the default).
    #[default]
    Rebuild,
    /// Fail with [`Error::PerspectiveVersion`], telling the user to rebuild.
    Refuse,
}

/// What [`Runtime::check_perspective_versions`](crate::Runtime::check_perspective_versions) found for one perspective.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum VersionCheck {
    /// No version was recorded: the declared one is recorded now.
    Recorded(u32),
    /// The recorded version is the declared one (or a newer one, from a
    /// newer release running beside this one: left alone).
    Current(u32),
    /// Rebuilt from the recorded version to the declared one.
    Rebuilt(RebuildReport),
}

/// Streams of one pass: (stream, head, what the shadow reflects).
type Todo = Vec<(StreamId, u64, u64)>;

/// A copy of `reg` under its shadow name, interned per perspective.
pub(crate) fn shadow_registration(
    reg: &'static PerspectiveRegistration,
) -> &'static PerspectiveRegistration {
    static SHADOWS: Mutex<Vec<&'static PerspectiveRegistration>> = Mutex::new(Vec::new());
    let shadow = shadow_name(reg.name);
    let mut all = lock(&SHADOWS);
    if let Some(found) = all.iter().find(|r| r.name == shadow) {
        return found;
    }
    let leaked: &'static PerspectiveRegistration = Box::leak(Box::new(PerspectiveRegistration {
        name: shadow,
        type_name: reg.type_name,
        module_path: reg.module_path,
        mode: reg.mode,
        event_types: reg.event_types,
        version: reg.version,
        perspective_type: reg.perspective_type,
        reads_metadata: reg.reads_metadata,
        new_model: reg.new_model,
        decode_model: reg.decode_model,
        apply: reg.apply,
        key_of: reg.key_of,
        strategy: reg.strategy,
        bulk: reg.bulk,
    }));
    all.push(leaked);
    leaked
}

/// Folds `chunk` into `target`: in one transaction when the store claims
/// many models at once, else one stream at a time (which also records a
/// stream's failure in its cursor and reports it).
pub(crate) async fn fold_chunk(
    engine: &Engine,
    target: &'static PerspectiveRegistration,
    chunk: &[StreamId],
) -> Result<()> {
    if engine.catch_up_together(target, chunk).await?.is_some() {
        return Ok(());
    }
    for stream in chunk {
        engine.catch_up(target, *stream).await?;
    }
    Ok(())
}

/// The rebuilds running in this process, by (perspective store, name): a
/// second rebuild of the same perspective on the same store is refused
/// while the first runs (the store refuses one from another process).
static RUNNING: Mutex<Vec<(usize, &'static str)>> = Mutex::new(Vec::new());

/// Holds a perspective's entry in [`RUNNING`]; dropped with the rebuild's
/// future, so a dropped rebuild can be started again at once.
pub(crate) struct Running((usize, &'static str));

impl Running {
    pub(crate) fn claim(store: &dyn PerspectiveStore, live: &'static str) -> Result<Running> {
        let key = (std::ptr::from_ref(store).cast::<()>() as usize, live);
        let mut running = lock(&RUNNING);
        if running.contains(&key) {
            return Err(Error::InvalidInput(format!(
                "rebuild perspective `{live}`: a rebuild of it is already running in this \
                 process; wait for it to finish"
            )));
        }
        running.push(key);
        Ok(Running(key))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&RUNNING).retain(|k| *k != self.0);
    }
}

/// One rebuild's state.
pub(crate) struct Rebuilder<'r> {
    /// Folds into the shadow: its commits are heard by nobody.
    pub(crate) engine: Engine,
    /// The runtime's engine: tells the listeners of the swap.
    pub(crate) notify: Engine,
    pub(crate) store: &'r dyn RebuildStore,
    pub(crate) perspectives: &'r dyn PerspectiveStore,
    pub(crate) live: &'static PerspectiveRegistration,
    /// What is folded into: the shadow (a rebuild) or the live perspective
    /// (a catch-up to the head).
    pub(crate) shadow: &'static PerspectiveRegistration,
    pub(crate) options: RebuildOptions,
    pub(crate) progress: RebuildProgress,
    pub(crate) started: Instant,
    pub(crate) folded: u64,
}

impl Rebuilder<'_> {
    /// What the shadow reflects of each stream (its cursor versions).
    pub(crate) async fn shadow_versions(&self) -> Result<HashMap<StreamId, u64>> {
        Ok(self
            .perspectives
            .list_models(self.shadow.name)
            .await?
            .into_iter()
            .map(|row| (row.id, row.version))
            .collect())
    }

    /// The streams the shadow is behind on; updates the totals.
    pub(crate) async fn pass(&mut self) -> Result<Todo> {
        let heads = self
            .engine
            .events
            .stream_heads(self.live.event_types)
            .await?;
        let done = self.shadow_versions().await?;
        let mut todo = Vec::new();
        let (mut total, mut reflected) = (0, 0);
        for (stream, head) in heads {
            let at = done.get(&stream).copied().unwrap_or(0).min(head);
            total += head;
            reflected += at;
            if at < head {
                todo.push((stream, head, at));
            }
        }
        self.progress.total = total;
        self.progress.done = reflected;
        Ok(todo)
    }

    /// Sends the progress to the watch channel only (a catch-up stores none).
    pub(crate) fn send(&self) {
        if let Some(tx) = &self.options.progress {
            tx.send_replace(self.progress.clone());
        }
    }

    pub(crate) fn measure(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        if self.folded > 0 && secs > 0.0 {
            self.progress.rate = self.folded as f64 / secs;
            let left = self.progress.total.saturating_sub(self.progress.done) as f64;
            self.progress.eta = Some(Duration::from_secs_f64(left / self.progress.rate));
        }
    }

    pub(crate) async fn publish(&mut self) -> Result<()> {
        self.measure();
        self.send();
        if self.shadow.name != self.live.name {
            self.store.save_progress(&self.progress).await?;
        }
        // A long rebuild on an in-process store never waits: let the
        // runner, readers and writers on this thread have their turn.
        tokio::task::yield_now().await;
        Ok(())
    }

    /// Folds `todo` into the shadow, a chunk of streams per transaction,
    /// [`RebuildOptions::parallel`] chunks at a time (one reads while
    /// another folds and commits). Dropping it aborts the chunks in flight:
    /// each commits whole or not at all.
    pub(crate) async fn build(&mut self, todo: Todo) -> Result<()> {
        let mut in_flight: tokio::task::JoinSet<(u64, Result<()>)> = tokio::task::JoinSet::new();
        let mut chunk: Vec<StreamId> = Vec::new();
        let mut chunk_events = 0;
        let mut rest = todo.into_iter().peekable();
        while let Some((stream, head, at)) = rest.next() {
            chunk.push(stream);
            chunk_events += head - at;
            if chunk_events < self.options.chunk_events && rest.peek().is_some() {
                continue;
            }
            while in_flight.len() >= self.options.parallel.max(1) {
                self.chunk_done(in_flight.join_next().await).await?;
            }
            let (engine, shadow) = (self.engine.clone(), self.shadow);
            let streams = std::mem::take(&mut chunk);
            let events = std::mem::take(&mut chunk_events);
            in_flight.spawn(async move { (events, fold_chunk(&engine, shadow, &streams).await) });
        }
        while let Some(done) = in_flight.join_next().await {
            self.chunk_done(Some(done)).await?;
        }
        Ok(())
    }

    /// Counts a finished chunk (or fails with its error).
    pub(crate) async fn chunk_done(
        &mut self,
        done: Option<std::result::Result<(u64, Result<()>), tokio::task::JoinError>>,
    ) -> Result<()> {
        let (events, result) = match done {
            Some(Ok(done)) => done,
            Some(Err(e)) => {
                return Err(Error::Invariant(format!(
                    "a rebuild chunk of perspective `{}` ended without an answer: {e}",
                    self.live.name
                )))
            }
            None => return Ok(()),
        };
        result.map_err(|e| self.failed(e))?;
        self.folded += events;
        self.progress.done += events;
        self.progress.total = self.progress.total.max(self.progress.done);
        self.publish().await
    }

    /// A shadow failure, named for the live perspective.
    pub(crate) fn failed(&self, e: Error) -> Error {
        if self.shadow.name == self.live.name {
            return e;
        }
        match e {
            Error::PerspectiveFailed {
                stream,
                version,
                message,
                ..
            } => Error::PerspectiveFailed {
                perspective: self.live.name,
                stream,
                version,
                message: format!(
                    "{message} (while rebuilding it at version {}; the live models were left \
                     as they were: fix the apply code and rebuild again)",
                    self.live.version
                ),
            },
            other => other,
        }
    }

    /// Fenced: the last events into the shadow, and the swap.
    pub(crate) async fn swap(&mut self) -> Result<(usize, Duration)> {
        // Read before the fence: under it, a store's connections may all be
        // held by applies waiting on it.
        let known = self.shadow_versions().await?;
        let mut fence = self.store.fence(self.live.name).await?;
        let fenced_at = Instant::now();
        self.progress.phase = RebuildPhase::Swapping;
        let claimed = match fence
            .behind(self.shadow.name, self.live.event_types)
            .await?
        {
            Some(claimed) => claimed,
            None => {
                let mut claimed = Vec::new();
                for (stream, _, at) in self.pass().await? {
                    let model = self
                        .perspectives
                        .load_model(self.shadow.name, stream)
                        .await?
                        .map(|row| row.model);
                    let checkpoint = crate::store::Checkpoint {
                        version: at,
                        ..Default::default()
                    };
                    claimed.push(ClaimedModel::new(stream, checkpoint, model, None));
                }
                claimed
            }
        };
        // Fold every stream, then the bulk hook over them all, then encode.
        let mut staged = Vec::with_capacity(claimed.len());
        for c in claimed {
            let (stream, at) = (c.key, c.checkpoint.version);
            let events = match c.events {
                Some(events) => events,
                None => self.engine.events.read_stream(stream, at).await?,
            };
            let mut stored = c.model;
            let folded = fold(
                self.shadow,
                &c.checkpoint,
                || decode_stored(self.shadow, stored.take()),
                &events,
            );
            if let Some((i, message)) = folded.failed {
                return Err(self.failed(Error::PerspectiveFailed {
                    perspective: self.shadow.name,
                    stream,
                    version: events[i].stream_version,
                    message,
                }));
            }
            staged.push((stream, at, events, folded));
        }
        let finishing = staged
            .iter_mut()
            .map(|(stream, _, events, folded)| {
                Finishing::of(*stream, folded.model.take(), folded.deleted, events)
            })
            .collect();
        let values = match finish(self.engine.model_format, self.shadow, finishing).await {
            Ok(values) => values,
            Err(message) => {
                let error = match staged.first() {
                    Some((stream, at, ..)) => Error::PerspectiveFailed {
                        perspective: self.shadow.name,
                        stream: *stream,
                        version: at + 1,
                        message,
                    },
                    None => Error::Invariant(message),
                };
                return Err(self.failed(error));
            }
        };
        let mut writes = Vec::with_capacity(staged.len());
        for ((stream, at, _, folded), model) in staged.into_iter().zip(values) {
            let n = folded.progress.version - at;
            self.folded += n;
            self.progress.done += n;
            let mut write = final_write(stream, model, folded.progress.version);
            // A tombstone among the last events deletes the shadow model.
            write.delete = folded.deleted;
            writes.push(write);
        }
        // Events that arrived after the count were folded too.
        self.progress.total = self.progress.total.max(self.progress.done);
        let models = known.len()
            + writes
                .iter()
                .filter(|w| !known.contains_key(&w.key))
                .count();
        let moved = fence
            .swap(self.live.name, self.shadow.name, writes, self.live.version)
            .await?;
        let fenced = fenced_at.elapsed();
        // Waiters on the models that moved ahead re-ask (their events may be
        // applied now, by the new models).
        for (key, version) in moved {
            self.notify
                .notify(&ApplyReport::new(self.live.name, key, version, Vec::new()));
        }
        Ok((models, fenced))
    }

    pub(crate) async fn run(&mut self) -> Result<RebuildReport> {
        let start = self
            .store
            .begin(self.live.name, self.shadow.name, self.live.version)
            .await?;
        if self.live.is_keyed() {
            return self.run_keyed(start).await;
        }
        self.progress.phase = RebuildPhase::Building;
        let mut todo = self.pass().await?;
        self.progress.resumed_from = self.progress.done;
        self.publish().await?;
        let mut passes = 0;
        loop {
            let left: u64 = todo.iter().map(|(_, head, at)| head - at).sum();
            if left <= self.options.fence_below || passes >= self.options.max_passes {
                break;
            }
            self.build(todo).await?;
            passes += 1;
            todo = self.pass().await?;
        }
        let (models, fenced) = self.swap().await?;
        Ok(self.done(start, models, fenced))
    }

    /// The report of a rebuild swapped in; the last progress sent.
    fn done(&mut self, start: RebuildStart, models: usize, fenced: Duration) -> RebuildReport {
        self.progress.phase = RebuildPhase::Done;
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.progress.rate = self.folded as f64 / secs;
        }
        self.progress.eta = Some(Duration::ZERO);
        self.send();
        RebuildReport {
            perspective: self.live.name,
            version: self.live.version,
            models,
            events: self.progress.done,
            folded: self.folded,
            resumed: start == RebuildStart::Resume,
            elapsed: self.started.elapsed(),
            fenced,
        }
    }
}

impl Rebuilder<'_> {
    /// The rebuild of a keyed perspective: its shadow generation follows
    /// the store's global order with a cursor of its own (keyed batches,
    /// each committed with that cursor, as the live perspective applies),
    /// pass after pass while events keep coming; then, fenced, the last
    /// events are folded into the shadow's stored models (read, not
    /// claimed: the fence holds the cursors) and swapped in. Progress is in
    /// global positions: `done` is the shadow cursor's, `total` the head's
    /// as far as it has read. A shadow cursor left failed by an earlier
    /// attempt is retried.
    async fn run_keyed(&mut self, start: RebuildStart) -> Result<RebuildReport> {
        let shadow = self.shadow;
        let cursor = self
            .perspectives
            .checkpoint(shadow.name, KEYED_CURSOR)
            .await?;
        if cursor.failure.is_some() {
            self.engine.clear_keyed_failure(shadow, None).await?;
        }
        self.progress.phase = RebuildPhase::Building;
        self.progress.done = cursor.version;
        self.progress.total = cursor.version;
        self.progress.resumed_from = cursor.version;
        self.publish().await?;
        let mut passes = 0;
        loop {
            let reports = match self.engine.catch_up_keyed(shadow).await {
                Ok(reports) => reports,
                Err(e) => return Err(self.failed(e)),
            };
            let folded: u64 = reports.iter().map(|r| r.applied.len() as u64).sum();
            self.folded += folded;
            let at = reports.last().map_or(self.progress.done, |r| r.version);
            self.progress.done = at;
            self.progress.total = self.progress.total.max(at);
            self.publish().await?;
            passes += 1;
            if folded <= self.options.fence_below || passes >= self.options.max_passes {
                break;
            }
        }
        let mut fence = self.store.fence(self.live.name).await?;
        let fenced_at = Instant::now();
        self.progress.phase = RebuildPhase::Swapping;
        let (writes, read) = match self.engine.keyed_tail(shadow, &mut *fence).await {
            Ok(tail) => tail,
            Err(e) => return Err(self.failed(e)),
        };
        self.folded += read;
        if let Some(cursor) = writes.iter().find(|w| w.key == KEYED_CURSOR) {
            self.progress.done = cursor.checkpoint.version;
        }
        self.progress.total = self.progress.total.max(self.progress.done);
        let moved = fence
            .swap(self.live.name, shadow.name, writes, self.live.version)
            .await?;
        let fenced = fenced_at.elapsed();
        for (key, version) in moved {
            self.notify
                .notify(&ApplyReport::new(self.live.name, key, version, Vec::new()));
        }
        let models = self.perspectives.list_models(self.live.name).await?.len();
        Ok(self.done(start, models, fenced))
    }
}

/// What [`Runtime::catch_up_to_head`](crate::Runtime::catch_up_to_head) did.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CatchUpReport {
    /// The perspective.
    pub perspective: &'static str,
    /// Streams it was behind on.
    pub streams: usize,
    /// Events applied (or moved past).
    pub events: u64,
    /// How long it took.
    pub elapsed: Duration,
}

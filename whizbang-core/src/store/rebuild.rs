//! The store seam of rebuilds beside live: what a perspective store offers so
//! that [`Runtime::rebuild`](crate::Runtime::rebuild) can build a
//! perspective's models again in a shadow generation and swap them in.
//!
//! The shadow generation is an ordinary perspective of the store under the
//! name [`shadow_name`] gives (`<name>~rebuild`): the runtime claims,
//! applies and commits it with the store's usual units and batches, and no
//! listener hears of those commits (the shadow has no waiters). What a store
//! adds is [`RebuildStore`]: a fence on the live perspective's applies, the
//! atomic swap, the version its live models were built with, and where a
//! rebuild's progress is kept. The memory store implements it here; the
//! PostgreSQL backend in its own crate.

use super::memory::MemoryPerspectiveStore;
use super::{BoxFuture, Checkpoint, ClaimedModel, ModelKey, ModelValue, ModelWrite};
use crate::error::{Error, Result};
use crate::util::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The name of the shadow generation of perspective `live`: `<live>~rebuild`.
/// Interned: the same `&'static str` for the same name, leaked once per
/// perspective name for the life of the process.
#[must_use]
pub fn shadow_name(live: &str) -> &'static str {
    static NAMES: Mutex<Vec<(&'static str, &'static str)>> = Mutex::new(Vec::new());
    let mut names = lock(&NAMES);
    if let Some((_, shadow)) = names.iter().find(|(l, _)| *l == live) {
        return shadow;
    }
    let live: &'static str = Box::leak(live.to_owned().into_boxed_str());
    let shadow: &'static str = Box::leak(format!("{live}{SHADOW_SUFFIX}").into_boxed_str());
    names.push((live, shadow));
    shadow
}

/// What [`shadow_name`] appends to a perspective's name.
pub const SHADOW_SUFFIX: &str = "~rebuild";

/// Where a rebuild stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RebuildPhase {
    /// Not started yet.
    #[default]
    Starting,
    /// Folding the event store into the shadow generation, live models untouched.
    Building,
    /// Live applies fenced: the last events go to the shadow and it is swapped in.
    Swapping,
    /// Swapped: the rebuilt models are the live ones.
    Done,
    /// Stopped with an error; the live models are as they were.
    Failed,
}

impl RebuildPhase {
    /// The phase as stored and shown (`building`, `swapping`, ..).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RebuildPhase::Starting => "starting",
            RebuildPhase::Building => "building",
            RebuildPhase::Swapping => "swapping",
            RebuildPhase::Done => "done",
            RebuildPhase::Failed => "failed",
        }
    }

    /// The phase [`as_str`](Self::as_str) names, if any.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        [
            RebuildPhase::Starting,
            RebuildPhase::Building,
            RebuildPhase::Swapping,
            RebuildPhase::Done,
            RebuildPhase::Failed,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }
}

/// How far a rebuild got: events folded into the shadow out of the events of
/// the streams it covers, the rate, and the time left at that rate.
#[derive(Clone, Debug, PartialEq, Default)]
#[non_exhaustive]
pub struct RebuildProgress {
    /// The perspective being rebuilt (its live name).
    pub perspective: String,
    /// The version of the apply code it is rebuilt with.
    pub version: u32,
    /// Where it stands.
    pub phase: RebuildPhase,
    /// Events the shadow reflects (done before a resume included).
    pub done: u64,
    /// Events of the streams the perspective handles, at the last count
    /// (grows while new events arrive).
    pub total: u64,
    /// Events folded per second in this run (0 until measured).
    pub rate: f64,
    /// Time left at [`rate`](Self::rate) (`None` until measured).
    pub eta: Option<Duration>,
    /// Events the shadow already reflected when this run started (a resume).
    pub resumed_from: u64,
    /// The error a failed rebuild stopped with.
    pub error: Option<String>,
}

impl RebuildProgress {
    /// A progress report (for a store reading one back).
    #[must_use]
    pub fn new(perspective: impl Into<String>, version: u32, phase: RebuildPhase) -> Self {
        RebuildProgress {
            perspective: perspective.into(),
            version,
            phase,
            ..Self::default()
        }
    }

    /// `done / total`, from 0.0 to 1.0 (1.0 when there is nothing to do).
    #[must_use]
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        }
    }
}

/// What [`RebuildStore::begin`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RebuildStart {
    /// No shadow to resume: it starts from an empty shadow.
    Fresh,
    /// An interrupted rebuild to the same version left a shadow: it resumes
    /// from the shadow's cursors.
    Resume,
}

/// The live perspective fenced: no apply of it commits (its claims wait)
/// until [`swap`](Self::swap) commits or the fence is dropped, which lifts
/// it and changes nothing.
pub trait RebuildFence: Send {
    /// Read under the fence, where the store can (in the fence's own
    /// transaction): every stream holding one of `event_types` that the
    /// shadow generation `shadow` is behind on, as a [`ClaimedModel`] with
    /// the shadow's cursor, its model and the stream's events after it.
    /// `None`, the default: the runtime reads them through the stores.
    ///
    /// # Errors
    /// A backend error.
    fn behind<'a>(
        &'a mut self,
        shadow: &'static str,
        event_types: &'a [&'static str],
    ) -> BoxFuture<'a, Result<Option<Vec<ClaimedModel>>>> {
        let _ = (shadow, event_types);
        Box::pin(async { Ok(None) })
    }

    /// In one atomic step: writes `writes` to the shadow generation `shadow`
    /// (the last events, folded while fenced; each with the checkpoint it
    /// reaches), replaces every model and cursor of `live` with the
    /// shadow's, removes the shadow, records `version` as the one the live
    /// models are built with, ends the rebuild's record, and lifts the
    /// fence. Readers see the old models or the new ones, never a mix.
    ///
    /// Returns the models whose cursor the swap moved ahead of the old live
    /// one, with the new cursor version: their waiters are woken (a store
    /// shared by processes also wakes the other processes' waiters, as a
    /// commit does).
    fn swap(
        self: Box<Self>,
        live: &'static str,
        shadow: &'static str,
        writes: Vec<ModelWrite>,
        version: u32,
    ) -> BoxFuture<'static, Result<Vec<(ModelKey, u64)>>>;
}

/// What a perspective store offers for rebuilds beside live
/// ([`PerspectiveStore::rebuilds`](super::PerspectiveStore::rebuilds)).
pub trait RebuildStore: Send + Sync {
    /// Starts (or resumes) the rebuild of `live` to `version`, as the only
    /// one running for it: a store shared by processes refuses a second one
    /// while the first is alive ([`Error::InvalidInput`] naming it) and lets
    /// a new one take over a rebuild whose process died. A shadow left by a
    /// rebuild to another version is discarded.
    ///
    /// # Errors
    /// When another rebuild of `live` runs; a backend error.
    fn begin<'a>(
        &'a self,
        live: &'static str,
        shadow: &'static str,
        version: u32,
    ) -> BoxFuture<'a, Result<RebuildStart>>;

    /// Records how far the rebuild got (readable by other processes with
    /// [`progress`](Self::progress)) and keeps its claim alive.
    ///
    /// # Errors
    /// When the rebuild was taken over by another process; a backend error.
    fn save_progress<'a>(&'a self, progress: &'a RebuildProgress) -> BoxFuture<'a, Result<()>>;

    /// The last progress recorded for `live`'s rebuild (`None`: none ran).
    ///
    /// # Errors
    /// A backend error.
    fn progress<'a>(&'a self, live: &'a str) -> BoxFuture<'a, Result<Option<RebuildProgress>>>;

    /// Ends a rebuild that stopped with `error` (the shadow stays, so a
    /// later rebuild to the same version resumes from it).
    ///
    /// # Errors
    /// A backend error.
    fn abandon<'a>(&'a self, live: &'static str, error: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Fences `live`: waits until no unit of it is held, and holds off new
    /// claims until the fence is swapped or dropped.
    ///
    /// # Errors
    /// A backend error.
    fn fence<'a>(&'a self, live: &'static str) -> BoxFuture<'a, Result<Box<dyn RebuildFence>>>;

    /// The version of the apply code `live`'s models were built with
    /// (`None`: never recorded).
    ///
    /// # Errors
    /// A backend error.
    fn built_version<'a>(&'a self, live: &'a str) -> BoxFuture<'a, Result<Option<u32>>>;

    /// Records `version` as the one `live`'s models are built with, when none
    /// is recorded yet (a first start). Never lowers or changes a recorded one.
    ///
    /// # Errors
    /// A backend error.
    fn record_version<'a>(&'a self, live: &'a str, version: u32) -> BoxFuture<'a, Result<()>>;
}

/// The error of a store without [`RebuildStore`].
pub(crate) fn unsupported(perspective: &str) -> Error {
    Error::Unsupported(format!(
        "rebuild perspective `{perspective}`: the perspective store offers no rebuild beside \
         live (PerspectiveStore::rebuilds is None); use the memory or PostgreSQL store, or \
         implement RebuildStore for yours"
    ))
}

/// The memory store's rebuild records.
#[derive(Default)]
pub(crate) struct MemoryRebuilds {
    versions: HashMap<String, u32>,
    /// Per live name: the version of the unfinished rebuild its shadow holds.
    running: HashMap<String, u32>,
    progress: HashMap<String, RebuildProgress>,
}

struct MemoryFence {
    store: MemoryPerspectiveStore,
    _fence: tokio::sync::OwnedRwLockWriteGuard<()>,
}

impl RebuildFence for MemoryFence {
    fn swap(
        self: Box<Self>,
        live: &'static str,
        shadow: &'static str,
        writes: Vec<ModelWrite>,
        version: u32,
    ) -> BoxFuture<'static, Result<Vec<(ModelKey, u64)>>> {
        let store = &self.store;
        let mut moved = Vec::new();
        // Under the slot map's lock: readers look a slot up under it, so
        // they see every live slot before the swap or every one after.
        {
            let mut slots = lock(&store.slots);
            let mut rebuilt = slots.remove(shadow).unwrap_or_default();
            for w in writes {
                let slot = rebuilt.entry(w.key).or_default();
                let mut committed = lock(&slot.committed);
                if let Some(model) = w.model {
                    committed.model = Some(model);
                }
                committed.checkpoint = w.checkpoint;
            }
            let old = slots.get(live);
            for (key, slot) in &rebuilt {
                let new = lock(&slot.committed).checkpoint.version;
                let was = old
                    .and_then(|o| o.get(key))
                    .map_or(0, |s| lock(&s.committed).checkpoint.version);
                if new > was {
                    moved.push((*key, new));
                }
            }
            slots.insert(live, rebuilt);
        }
        let mut book = lock(&store.rebuilds);
        book.versions.insert(live.to_owned(), version);
        book.running.remove(live);
        if let Some(p) = book.progress.get_mut(live) {
            p.phase = RebuildPhase::Done;
            p.done = p.total.max(p.done);
            p.eta = Some(Duration::ZERO);
        }
        drop(book);
        // `self` (the fence) drops here, after the swap: claims go on, on the new slots.
        Box::pin(async { Ok(moved) })
    }
}

impl RebuildStore for MemoryPerspectiveStore {
    fn begin<'a>(
        &'a self,
        live: &'static str,
        shadow: &'static str,
        version: u32,
    ) -> BoxFuture<'a, Result<RebuildStart>> {
        // One at a time per process is the runtime's guard; an in-process
        // store has no other process to refuse.
        let mut book = lock(&self.rebuilds);
        let start = match book.running.get(live).copied() {
            Some(target) if target == version => RebuildStart::Resume,
            _ => {
                lock(&self.slots).remove(shadow);
                RebuildStart::Fresh
            }
        };
        book.running.insert(live.to_owned(), version);
        drop(book);
        Box::pin(async move { Ok(start) })
    }

    fn save_progress<'a>(&'a self, progress: &'a RebuildProgress) -> BoxFuture<'a, Result<()>> {
        lock(&self.rebuilds)
            .progress
            .insert(progress.perspective.clone(), progress.clone());
        Box::pin(async { Ok(()) })
    }

    fn progress<'a>(&'a self, live: &'a str) -> BoxFuture<'a, Result<Option<RebuildProgress>>> {
        let p = lock(&self.rebuilds).progress.get(live).cloned();
        Box::pin(async move { Ok(p) })
    }

    fn abandon<'a>(&'a self, live: &'static str, error: &'a str) -> BoxFuture<'a, Result<()>> {
        let mut book = lock(&self.rebuilds);
        if let Some(p) = book.progress.get_mut(live) {
            p.phase = RebuildPhase::Failed;
            p.error = Some(error.to_owned());
        }
        drop(book);
        Box::pin(async { Ok(()) })
    }

    fn fence<'a>(&'a self, live: &'static str) -> BoxFuture<'a, Result<Box<dyn RebuildFence>>> {
        let gate = self.gate(live);
        let store = self.clone();
        Box::pin(async move {
            let fence = gate.write_owned().await;
            Ok(Box::new(MemoryFence {
                store,
                _fence: fence,
            }) as Box<dyn RebuildFence>)
        })
    }

    fn built_version<'a>(&'a self, live: &'a str) -> BoxFuture<'a, Result<Option<u32>>> {
        let v = lock(&self.rebuilds).versions.get(live).copied();
        Box::pin(async move { Ok(v) })
    }

    fn record_version<'a>(&'a self, live: &'a str, version: u32) -> BoxFuture<'a, Result<()>> {
        lock(&self.rebuilds)
            .versions
            .entry(live.to_owned())
            .or_insert(version);
        Box::pin(async { Ok(()) })
    }
}

/// A write of the last events folded while fenced.
pub(crate) fn final_write(key: ModelKey, model: Option<ModelValue>, version: u64) -> ModelWrite {
    ModelWrite::new(
        key,
        model,
        Checkpoint {
            version,
            failure: None,
            skipped: Vec::new(),
        },
    )
}

/// Shared gate per perspective (the memory store's fence).
pub(crate) type Gates = Arc<Mutex<HashMap<&'static str, Arc<tokio::sync::RwLock<()>>>>>;

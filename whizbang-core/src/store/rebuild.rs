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
use super::{BoxFuture, Checkpoint, ModelKey, ModelValue, ModelWrite};
pub use super::{
    KeyedBehind, RebuildFence, RebuildPhase, RebuildProgress, RebuildStart, RebuildStore,
};
use crate::error::{Error, Result};
use crate::util::lock;
use std::sync::Mutex;
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

/// The error of a store without [`RebuildStore`].
pub(crate) fn unsupported(perspective: &str) -> Error {
    Error::Unsupported(format!(
        "rebuild perspective `{perspective}`: the perspective store offers no rebuild beside \
         live (PerspectiveStore::rebuilds is None); use the memory or PostgreSQL store, or \
         implement RebuildStore for yours"
    ))
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
                // A write without a model deletes it (a tombstone among the
                // last events), as a database store's swap does: keeping the
                // shadow's older model would leave it stale under a cursor
                // already past the tombstone.
                committed.model = if w.delete { None } else { w.model };
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

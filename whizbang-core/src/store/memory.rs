//! In-memory event and perspective stores: the quick start's backend and the
//! reference behaviour every other backend is tested against.

use super::{
    BoxFuture, Checkpoint, EventLocation, EventStore, ModelRow, ModelValue, PerspectiveStore,
    PerspectiveUnit, StoredEvent, StreamAppend,
};
use crate::error::{Error, Result};
use crate::message::{EventId, StreamId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Hashes UUID-keyed maps cheaply: ids are random (v7) or caller-chosen, and
/// this in-process backend is for development and tests, not hostile input,
/// so SipHash's flood resistance buys nothing here and costs on every append.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(buf))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them half-written (every
    // critical section validates before it mutates), so poisoning is ignored.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct EventLog {
    all: Vec<Arc<StoredEvent>>,
    streams: IdMap<StreamId, Vec<Arc<StoredEvent>>>,
    by_id: IdMap<EventId, Arc<StoredEvent>>,
}

/// An event store in memory. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct MemoryEventStore {
    log: Arc<Mutex<EventLog>>,
}

impl std::fmt::Debug for MemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEventStore")
            .field("events", &lock(&self.log).all.len())
            .finish()
    }
}

impl MemoryEventStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event, in global order.
    #[must_use]
    pub fn all_events(&self) -> Vec<Arc<StoredEvent>> {
        lock(&self.log).all.clone()
    }

    /// Appends synchronously (the async trait method delegates here).
    ///
    /// # Errors
    /// [`Error::Concurrency`] when a stream's version does not match;
    /// [`Error::DuplicateEventId`] when an event id is already stored or appears
    /// twice in `streams`. Nothing is appended either way.
    pub fn append_now(&self, streams: Vec<StreamAppend>) -> Result<Vec<Arc<StoredEvent>>> {
        let mut log = lock(&self.log);
        // Validate everything first: all or nothing.
        let mut planned: IdMap<StreamId, u64> = IdMap::default();
        for s in &streams {
            let current = match planned.get(&s.stream_id) {
                Some(v) => *v,
                None => log.streams.get(&s.stream_id).map_or(0, |v| v.len() as u64),
            };
            if !s.expected.admits(current) {
                return Err(Error::Concurrency {
                    stream: s.stream_id,
                    expected: s.expected,
                    actual: current,
                });
            }
            planned.insert(s.stream_id, current + s.events.len() as u64);
        }
        // One id twice, in the store or within this append, is refused like a
        // primary key would: nothing is appended.
        let mut fresh: IdMap<EventId, ()> = IdMap::default();
        for s in &streams {
            for e in &s.events {
                if log.by_id.contains_key(&e.event_id) || fresh.insert(e.event_id, ()).is_some() {
                    return Err(Error::DuplicateEventId {
                        event_id: e.event_id,
                    });
                }
            }
        }
        let mut out = Vec::with_capacity(streams.iter().map(|s| s.events.len()).sum());
        for s in streams {
            for e in s.events {
                let position = log.all.len() as u64 + 1;
                let stream = log.streams.entry(s.stream_id).or_default();
                let stored = Arc::new(StoredEvent {
                    position,
                    event_id: e.event_id,
                    stream_id: s.stream_id,
                    stream_version: stream.len() as u64 + 1,
                    event_type: std::borrow::Cow::Borrowed(e.event_type),
                    data: e.data,
                    metadata: e.metadata,
                    typed: e.typed,
                });
                stream.push(Arc::clone(&stored));
                log.by_id.insert(stored.event_id, Arc::clone(&stored));
                log.all.push(Arc::clone(&stored));
                out.push(stored);
            }
        }
        Ok(out)
    }
}

impl EventStore for MemoryEventStore {
    fn append(&self, streams: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>> {
        let r = self.append_now(streams);
        Box::pin(async move { r })
    }

    fn read_stream(
        &self,
        stream: StreamId,
        after_version: u64,
    ) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>> {
        let events = lock(&self.log)
            .streams
            .get(&stream)
            .map(|s| {
                let from = usize::try_from(after_version)
                    .unwrap_or(usize::MAX)
                    .min(s.len());
                s[from..].to_vec()
            })
            .unwrap_or_default();
        Box::pin(async move { Ok(events) })
    }

    fn stream_version(&self, stream: StreamId) -> BoxFuture<'_, Result<u64>> {
        let v = lock(&self.log)
            .streams
            .get(&stream)
            .map_or(0, |s| s.len() as u64);
        Box::pin(async move { Ok(v) })
    }

    fn locate<'a>(&'a self, ids: &'a [EventId]) -> BoxFuture<'a, Result<Vec<EventLocation>>> {
        let log = lock(&self.log);
        let found = ids
            .iter()
            .filter_map(|id| log.by_id.get(id))
            .map(|e| EventLocation {
                event_id: e.event_id,
                stream_id: e.stream_id,
                stream_version: e.stream_version,
                event_type: e.event_type.clone(),
            })
            .collect();
        drop(log);
        Box::pin(async move { Ok(found) })
    }
}

/// What readers see of one (perspective, stream): the last commit.
#[derive(Default)]
struct Committed {
    checkpoint: Checkpoint,
    model: Option<Box<dyn crate::perspective::AnyModel>>,
}

/// One (perspective, stream). The claim and the committed state are separate
/// locks, so readers never wait for a claim: a unit works on a copy of the
/// model and its commit swaps the new state in under the short std lock.
#[derive(Default)]
struct Slot {
    claim: Arc<tokio::sync::Mutex<()>>,
    committed: Mutex<Committed>,
}

type SlotRef = Arc<Slot>;

/// Read models and cursors in memory. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct MemoryPerspectiveStore {
    slots: Arc<Mutex<HashMap<&'static str, IdMap<StreamId, SlotRef>>>>,
}

impl std::fmt::Debug for MemoryPerspectiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPerspectiveStore")
            .finish_non_exhaustive()
    }
}

impl MemoryPerspectiveStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, perspective: &'static str, stream: StreamId) -> SlotRef {
        Arc::clone(
            lock(&self.slots)
                .entry(perspective)
                .or_default()
                .entry(stream)
                .or_default(),
        )
    }

    fn existing(&self, perspective: &str, stream: StreamId) -> Option<SlotRef> {
        lock(&self.slots)
            .get(perspective)
            .and_then(|m| m.get(&stream))
            .cloned()
    }
}

struct MemoryUnit {
    slot: SlotRef,
    checkpoint: Checkpoint,
    _claim: tokio::sync::OwnedMutexGuard<()>,
}

impl PerspectiveUnit for MemoryUnit {
    fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    fn take_model(&mut self) -> Option<ModelValue> {
        // A copy: the committed model stays readable, and dropping the unit
        // without committing leaves it as it was.
        lock(&self.slot.committed)
            .model
            .as_ref()
            .map(|m| ModelValue::Typed(m.clone_box()))
    }

    fn commit(
        self: Box<Self>,
        model: Option<ModelValue>,
        checkpoint: Checkpoint,
    ) -> BoxFuture<'static, Result<()>> {
        let model = match model {
            None => None,
            Some(ModelValue::Typed(m)) => Some(m),
            Some(ModelValue::Json(_)) => {
                return Box::pin(async {
                    Err(Error::InvalidInput(
                        "the in-memory perspective store keeps typed models; commit \
                         ModelValue::Typed"
                            .into(),
                    ))
                })
            }
        };
        let mut committed = lock(&self.slot.committed);
        if let Some(m) = model {
            // The old model drops after the lock is released.
            let old = committed.model.replace(m);
            committed.checkpoint = checkpoint;
            drop(committed);
            drop(old);
        } else {
            committed.checkpoint = checkpoint;
            drop(committed);
        }
        // `self` (and with it the claim) is released here, after the swap.
        Box::pin(async { Ok(()) })
    }
}

fn snapshot(id: StreamId, slot: &Slot) -> Option<ModelRow> {
    let committed = lock(&slot.committed);
    committed.model.as_ref().map(|m| ModelRow {
        id,
        version: committed.checkpoint.version,
        model: ModelValue::Typed(m.clone_box()),
    })
}

impl PerspectiveStore for MemoryPerspectiveStore {
    fn claim<'a>(
        &'a self,
        perspective: &'static str,
        stream: StreamId,
    ) -> BoxFuture<'a, Result<Box<dyn PerspectiveUnit>>> {
        let slot = self.slot(perspective, stream);
        Box::pin(async move {
            let claim = Arc::clone(&slot.claim).lock_owned().await;
            let checkpoint = lock(&slot.committed).checkpoint.clone();
            Ok(Box::new(MemoryUnit {
                slot,
                checkpoint,
                _claim: claim,
            }) as Box<dyn PerspectiveUnit>)
        })
    }

    fn checkpoint<'a>(
        &'a self,
        perspective: &'a str,
        stream: StreamId,
    ) -> BoxFuture<'a, Result<Checkpoint>> {
        let cp = self
            .existing(perspective, stream)
            .map(|s| lock(&s.committed).checkpoint.clone())
            .unwrap_or_default();
        Box::pin(async move { Ok(cp) })
    }

    fn load_model<'a>(
        &'a self,
        perspective: &'a str,
        id: StreamId,
    ) -> BoxFuture<'a, Result<Option<ModelRow>>> {
        let row = self
            .existing(perspective, id)
            .and_then(|s| snapshot(id, &s));
        Box::pin(async move { Ok(row) })
    }

    fn list_models<'a>(&'a self, perspective: &'a str) -> BoxFuture<'a, Result<Vec<ModelRow>>> {
        let mut slots: Vec<(StreamId, SlotRef)> = lock(&self.slots)
            .get(perspective)
            .map(|m| m.iter().map(|(k, v)| (*k, Arc::clone(v))).collect())
            .unwrap_or_default();
        slots.sort_unstable_by_key(|(id, _)| *id);
        let rows = slots
            .iter()
            .filter_map(|(id, s)| snapshot(*id, s))
            .collect();
        Box::pin(async move { Ok(rows) })
    }
}

//! In-memory event and perspective stores: the quick start's backend and the
//! reference behaviour every other backend is tested against.

use super::{
    BoxFuture, Checkpoint, ClaimedModel, EventLocation, EventStore, ModelFormat, ModelKey,
    ModelRow, ModelValue, ModelWrite, OutboxSink, PerspectiveBatch, PerspectiveStore,
    PerspectiveUnit, StoredEvent, StreamAppend,
};
use crate::error::Stored;
use crate::error::{Error, Result};
use crate::message::{EventId, StreamId};
use crate::util::{lock, IdMap};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct EventLog {
    all: Vec<Arc<StoredEvent>>,
    streams: IdMap<StreamId, Vec<Arc<StoredEvent>>>,
    by_id: IdMap<EventId, Arc<StoredEvent>>,
}

/// An event store in memory. Cheap to clone (shared).
///
/// [`new`](Self::new) keeps each event's typed payload (the fast path);
/// [`json`](Self::json) keeps only its JSON, as a database does.
#[derive(Clone, Default)]
pub struct MemoryEventStore {
    log: Arc<Mutex<EventLog>>,
    json_only: bool,
    outbox: Option<Arc<dyn OutboxSink>>,
}

impl std::fmt::Debug for MemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEventStore")
            .field("events", &lock(&self.log).all.len())
            .field("json_only", &self.json_only)
            .finish()
    }
}

impl MemoryEventStore {
    /// An empty store that keeps typed payloads.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that drops typed payloads and keeps only the JSON, like
    /// a database: every read decodes. Runs the serialised path in tests.
    ///
    /// ```
    /// use whizbang_core::backend::MemoryEventStore;
    /// let store = MemoryEventStore::json();
    /// assert!(store.all_events().is_empty());
    /// ```
    #[must_use]
    pub fn json() -> Self {
        MemoryEventStore {
            json_only: true,
            ..Self::default()
        }
    }

    /// This store, writing its outbound events
    /// ([`NewEvent::outbound`](super::NewEvent::outbound)) to `outbox` inside
    /// each append, under the same lock: an append that fails writes nothing
    /// to it, one that succeeds writes every outbound event of it. Without an
    /// outbox, outbound events are stored and not published.
    #[must_use]
    pub fn with_outbox(mut self, outbox: impl OutboxSink) -> Self {
        self.outbox = Some(Arc::new(outbox));
        self
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
        let mut outbound = Vec::new();
        for s in streams {
            for e in s.events {
                let is_outbound = e.outbound;
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
                    typed: if self.json_only { None } else { e.typed },
                });
                stream.push(Arc::clone(&stored));
                log.by_id.insert(stored.event_id, Arc::clone(&stored));
                log.all.push(Arc::clone(&stored));
                if is_outbound {
                    outbound.push(Arc::clone(&stored));
                }
                out.push(stored);
            }
        }
        if let (Some(outbox), false) = (&self.outbox, outbound.is_empty()) {
            // Still under the log's lock: the append and its outbox rows are one step.
            outbox.write(&outbound);
        }
        Ok(out)
    }
}

impl MemoryEventStore {
    /// Every stream holding an event of one of `event_types`, with its
    /// version (all its events counted), ordered by stream.
    fn heads_of(&self, event_types: &[&str]) -> Vec<(StreamId, u64)> {
        let log = lock(&self.log);
        let mut heads: Vec<(StreamId, u64)> = log
            .streams
            .iter()
            .filter(|(_, events)| {
                events
                    .iter()
                    .any(|e| event_types.contains(&e.event_type.as_ref()))
            })
            .map(|(id, events)| (*id, events.len() as u64))
            .collect();
        drop(log);
        heads.sort_unstable_by_key(|(id, _)| *id);
        heads
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

    fn streams_with_types<'a>(
        &'a self,
        _behind: Option<&'a str>,
        event_types: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<StreamId>>> {
        let streams = self.heads_of(event_types).into_iter().map(|(id, _)| id);
        let streams = streams.collect();
        Box::pin(async move { Ok(streams) })
    }

    fn stream_heads<'a>(
        &'a self,
        event_types: &'a [&'static str],
    ) -> BoxFuture<'a, Result<Vec<(StreamId, u64)>>> {
        let heads = self.heads_of(event_types);
        Box::pin(async move { Ok(heads) })
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

    fn read_global(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<Arc<StoredEvent>>>>> {
        // Positions are assigned under the log's lock, gap-free: every
        // event is safe to consume as soon as it is stored.
        let log = lock(&self.log);
        let from = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(log.all.len());
        let to = from.saturating_add(limit).min(log.all.len());
        let events = log.all[from..to].to_vec();
        drop(log);
        Box::pin(async move { Ok(Some(events)) })
    }

    fn global_positions<'a>(
        &'a self,
        ids: &'a [EventId],
    ) -> BoxFuture<'a, Result<Option<super::GlobalPositions>>> {
        let log = lock(&self.log);
        let found = ids
            .iter()
            .filter_map(|id| log.by_id.get(id))
            .map(|e| (e.event_id, e.position))
            .collect();
        drop(log);
        Box::pin(async move { Ok(Some(found)) })
    }
}

/// What readers see of one (perspective, key): the last commit.
#[derive(Default)]
pub(super) struct Committed {
    pub(super) checkpoint: Checkpoint,
    pub(super) model: Option<ModelValue>,
}

/// One (perspective, key). The claim and the committed state are separate
/// locks, so readers never wait for a claim: a unit works on a copy of the
/// model and its commit swaps the new state in under the short std lock.
#[derive(Default)]
pub(super) struct Slot {
    claim: Arc<tokio::sync::Mutex<()>>,
    pub(super) committed: Mutex<Committed>,
}

type SlotRef = Arc<Slot>;

/// Read models and cursors in memory. Cheap to clone (shared).
///
/// [`new`](Self::new) keeps typed models ([`ModelFormat::Typed`]: no
/// serialisation, a clone per read); [`json`](Self::json) keeps JSON
/// ([`ModelFormat::Json`]), as a database does, and refuses typed models.
#[derive(Clone)]
pub struct MemoryPerspectiveStore {
    pub(super) slots: Arc<Mutex<HashMap<&'static str, IdMap<ModelKey, SlotRef>>>>,
    format: ModelFormat,
    /// Per perspective: every claim holds its read side, a rebuild's fence its write side.
    gates: Gates,
    pub(super) rebuilds: Arc<Mutex<MemoryRebuilds>>,
}

impl Default for MemoryPerspectiveStore {
    fn default() -> Self {
        MemoryPerspectiveStore {
            slots: Arc::default(),
            format: ModelFormat::Typed,
            gates: Arc::default(),
            rebuilds: Arc::default(),
        }
    }
}

impl std::fmt::Debug for MemoryPerspectiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryPerspectiveStore")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl MemoryPerspectiveStore {
    /// An empty store that keeps typed models.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that keeps models as JSON, like a database: the runtime
    /// serialises each model on commit and every read decodes. Runs the
    /// serialised path in tests without a database.
    ///
    /// ```
    /// use whizbang_core::backend::{MemoryPerspectiveStore, ModelFormat, PerspectiveStore};
    /// assert_eq!(MemoryPerspectiveStore::json().model_format(), ModelFormat::Json);
    /// assert_eq!(MemoryPerspectiveStore::new().model_format(), ModelFormat::Typed);
    /// ```
    #[must_use]
    pub fn json() -> Self {
        MemoryPerspectiveStore {
            format: ModelFormat::Json,
            ..Self::default()
        }
    }

    fn slot(&self, perspective: &'static str, key: ModelKey) -> SlotRef {
        Arc::clone(
            lock(&self.slots)
                .entry(perspective)
                .or_default()
                .entry(key)
                .or_default(),
        )
    }

    /// The gate of `perspective` (see [`RebuildStore::fence`](super::rebuild::RebuildStore::fence)).
    pub(super) fn gate(&self, perspective: &'static str) -> Arc<tokio::sync::RwLock<()>> {
        Arc::clone(lock(&self.gates).entry(perspective).or_default())
    }

    fn existing(&self, perspective: &str, key: ModelKey) -> Option<SlotRef> {
        lock(&self.slots)
            .get(perspective)
            .and_then(|m| m.get(&key))
            .cloned()
    }
}

struct MemoryUnit {
    slot: SlotRef,
    perspective: &'static str,
    key: ModelKey,
    format: ModelFormat,
    checkpoint: Checkpoint,
    _claim: tokio::sync::OwnedMutexGuard<()>,
    /// Released after the claim (fields drop in order).
    _gate: tokio::sync::OwnedRwLockReadGuard<()>,
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
            .map(ModelValue::clone_value)
    }

    fn commit(
        self: Box<Self>,
        model: Option<ModelValue>,
        checkpoint: Checkpoint,
    ) -> BoxFuture<'static, Result<()>> {
        if let Err(err) = check_format(self.format, self.perspective, self.key, model.as_ref()) {
            return Box::pin(async move { Err(err) });
        }
        swap_in(&self.slot, model.map(Some), checkpoint);
        // `self` (and with it the claim) is released here, after the swap.
        Box::pin(async { Ok(()) })
    }

    fn commit_delete(self: Box<Self>, checkpoint: Checkpoint) -> BoxFuture<'static, Result<()>> {
        swap_in(&self.slot, Some(None), checkpoint);
        Box::pin(async { Ok(()) })
    }
}

/// Refuses a typed model for a store that keeps JSON.
fn check_format(
    format: ModelFormat,
    perspective: &str,
    key: ModelKey,
    model: Option<&ModelValue>,
) -> Result<()> {
    if format == ModelFormat::Json && matches!(model, Some(ModelValue::Typed(_))) {
        return Err(Error::backend(
            "memory",
            format!("commit the model of perspective `{perspective}` for {key}"),
            Stored::Nothing,
            "this store keeps JSON models (MemoryPerspectiveStore::json) and was handed a \
             typed one; commit ModelValue::Json (the runtime does, since the store declares \
             ModelFormat::Json)",
        ));
    }
    Ok(())
}

/// Makes `model` and `checkpoint` the committed state of `slot`: `None`
/// keeps the stored model, `Some(None)` deletes it (a tombstone),
/// `Some(Some(m))` replaces it.
fn swap_in(slot: &Slot, model: Option<Option<ModelValue>>, checkpoint: Checkpoint) {
    let mut committed = lock(&slot.committed);
    let old = match model {
        Some(m) => std::mem::replace(&mut committed.model, m),
        None => None,
    };
    committed.checkpoint = checkpoint;
    drop(committed);
    // The old model drops after the lock is released.
    drop(old);
}

/// Several claimed (perspective, key) slots, committed together: every
/// write is checked before any is swapped in, so a commit is all or nothing.
struct MemoryBatch {
    perspective: &'static str,
    format: ModelFormat,
    /// The claimed slots with their key, in the order the keys were given.
    slots: Vec<(ModelKey, SlotRef)>,
    _claims: Vec<tokio::sync::OwnedMutexGuard<()>>,
}

impl PerspectiveBatch for MemoryBatch {
    fn take_claimed(&mut self) -> Vec<ClaimedModel> {
        self.slots
            .iter()
            .map(|(key, slot)| {
                let committed = lock(&slot.committed);
                ClaimedModel::new(
                    *key,
                    committed.checkpoint.clone(),
                    committed.model.as_ref().map(ModelValue::clone_value),
                    None,
                )
            })
            .collect()
    }

    fn commit(self: Box<Self>, writes: Vec<ModelWrite>) -> BoxFuture<'static, Result<()>> {
        let mut planned = Vec::with_capacity(writes.len());
        for write in writes {
            let checked = check_format(
                self.format,
                self.perspective,
                write.key,
                write.model.as_ref(),
            )
            .and_then(|()| {
                self.slots
                    .iter()
                    .find(|(key, _)| *key == write.key)
                    .map(|(_, slot)| Arc::clone(slot))
                    .ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "a batch of perspective `{}` was asked to commit a model for {}, \
                             which it did not claim; nothing was committed",
                            self.perspective, write.key
                        ))
                    })
            });
            match checked {
                Ok(slot) => planned.push((slot, write)),
                Err(err) => return Box::pin(async move { Err(err) }),
            }
        }
        // In the order written: a writer that puts a cursor last makes it
        // visible after the models it covers.
        for (slot, write) in planned {
            let model = if write.delete {
                Some(None)
            } else {
                write.model.map(Some)
            };
            swap_in(&slot, model, write.checkpoint);
        }
        Box::pin(async { Ok(()) })
    }
}

fn snapshot(id: ModelKey, slot: &Slot) -> Option<ModelRow> {
    let committed = lock(&slot.committed);
    committed.model.as_ref().map(|m| ModelRow {
        id,
        version: committed.checkpoint.version,
        model: m.clone_value(),
    })
}

impl PerspectiveStore for MemoryPerspectiveStore {
    fn model_format(&self) -> ModelFormat {
        self.format
    }

    fn rebuilds(&self) -> Option<&dyn super::RebuildStore> {
        Some(self)
    }

    fn claim<'a>(
        &'a self,
        perspective: &'static str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Box<dyn PerspectiveUnit>>> {
        let gate = self.gate(perspective);
        let format = self.format;
        Box::pin(async move {
            // The gate first: a rebuild's swap replaces the slots, so the
            // slot is looked up only once no fence is held.
            let gate = gate.read_owned().await;
            let slot = self.slot(perspective, key);
            let claim = Arc::clone(&slot.claim).lock_owned().await;
            let checkpoint = lock(&slot.committed).checkpoint.clone();
            Ok(Box::new(MemoryUnit {
                slot,
                perspective,
                key,
                format,
                checkpoint,
                _claim: claim,
                _gate: gate,
            }) as Box<dyn PerspectiveUnit>)
        })
    }

    fn claim_many<'a>(
        &'a self,
        perspective: &'static str,
        keys: &'a [ModelKey],
    ) -> BoxFuture<'a, Result<Option<Box<dyn PerspectiveBatch>>>> {
        let format = self.format;
        // The keys as given (each once), and the same slots in key order to claim.
        let mut seen: IdMap<ModelKey, ()> = IdMap::default();
        let ordered: Vec<(ModelKey, SlotRef)> = keys
            .iter()
            .filter(|key| seen.insert(**key, ()).is_none())
            .map(|key| (*key, self.slot(perspective, *key)))
            .collect();
        let mut by_key: Vec<SlotRef> = {
            let mut sorted: Vec<&(ModelKey, SlotRef)> = ordered.iter().collect();
            sorted.sort_unstable_by_key(|(key, _)| *key);
            sorted
                .into_iter()
                .map(|(_, slot)| Arc::clone(slot))
                .collect()
        };
        Box::pin(async move {
            // Claimed in key order, as every claimant of several keys does:
            // no two batches wait for each other in a cycle.
            let mut claims = Vec::with_capacity(by_key.len());
            for slot in by_key.drain(..) {
                claims.push(slot.claim.clone().lock_owned().await);
            }
            Ok(Some(Box::new(MemoryBatch {
                perspective,
                format,
                slots: ordered,
                _claims: claims,
            }) as Box<dyn PerspectiveBatch>))
        })
    }

    fn checkpoint<'a>(
        &'a self,
        perspective: &'a str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Checkpoint>> {
        let cp = self
            .existing(perspective, key)
            .map(|s| lock(&s.committed).checkpoint.clone())
            .unwrap_or_default();
        Box::pin(async move { Ok(cp) })
    }

    fn load_model<'a>(
        &'a self,
        perspective: &'a str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Option<ModelRow>>> {
        let row = self
            .existing(perspective, key)
            .and_then(|s| snapshot(key, &s));
        Box::pin(async move { Ok(row) })
    }

    fn list_models<'a>(&'a self, perspective: &'a str) -> BoxFuture<'a, Result<Vec<ModelRow>>> {
        let mut slots: Vec<(ModelKey, SlotRef)> = lock(&self.slots)
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

/// The memory store's rebuild records.
#[derive(Default)]
pub(crate) struct MemoryRebuilds {
    pub(crate) versions: HashMap<String, u32>,
    /// Per live name: the version of the unfinished rebuild its shadow holds.
    pub(crate) running: HashMap<String, u32>,
    pub(crate) progress: HashMap<String, super::RebuildProgress>,
}

/// Shared gate per perspective (the memory store's fence).
pub(crate) type Gates = Arc<Mutex<HashMap<&'static str, Arc<tokio::sync::RwLock<()>>>>>;

//! The storage traits and their in-memory implementation.
//!
//! This module owns the contracts a backend must honour: an [`EventStore`]
//! that appends with optimistic concurrency, and a [`PerspectiveStore`] whose
//! [`PerspectiveUnit`] commits a model, its cursor and the applied status as one
//! atomic unit. It knows nothing about routing. These traits are the seam a
//! storage backend implements; [`memory`] is the reference implementation every
//! other backend is held to. The contract as a whole (these traits, the sync
//! backend, the wake-ups and the conformance suite) is documented in
//! [`backend`](crate::backend). It also owns what a model is ([`Model`], the
//! erased [`AnyModel`]) since stores keep models. It imports only `message`,
//! `error` and `util`.

pub mod memory;
pub mod rebuild;
mod rebuild_state;

pub use rebuild_state::{RebuildPhase, RebuildProgress, RebuildStart};

use crate::error::Result;
use crate::message::{EventId, ExpectedVersion, MessageId, Metadata, StreamId};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::value::RawValue;
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

/// A boxed, `Send` future: the return type of the object-safe store traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The ids that travel with a stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct EventMetadata {
    /// The conversation this event belongs to.
    pub correlation_id: MessageId,
    /// The message whose handling emitted it.
    pub causation_id: Option<MessageId>,
    /// When it was emitted.
    pub timestamp: SystemTime,
    /// Free-form metadata.
    pub extra: Metadata,
}

/// An event ready to append.
pub struct NewEvent {
    /// Its id (UUID v7).
    pub event_id: EventId,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// The event's wire name.
    pub event_type: &'static str,
    /// The serialized payload (JSON).
    pub data: Box<RawValue>,
    /// Correlation, causation, time, extra.
    pub metadata: EventMetadata,
    /// The typed payload: an optional fast path an in-process store may keep
    /// (into [`StoredEvent::typed`]) to spare a decode. Any store may ignore
    /// it; `data` is the event.
    pub typed: Option<Arc<dyn Any + Send + Sync>>,
    /// Whether the event leaves the service ([`Event::PUBLISH`](crate::Event::PUBLISH)):
    /// a store writes an outbox row for it in the append's own transaction
    /// (all or nothing with the event).
    pub outbound: bool,
}

impl std::fmt::Debug for NewEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewEvent")
            .field("event_id", &self.event_id)
            .field("stream_id", &self.stream_id)
            .field("event_type", &self.event_type)
            .field("outbound", &self.outbound)
            .finish_non_exhaustive()
    }
}

/// The events for one stream in an append, with the version the writer expects.
#[derive(Debug)]
pub struct StreamAppend {
    /// The stream.
    pub stream_id: StreamId,
    /// The version the stream must be at before this append.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

/// An event as stored.
pub struct StoredEvent {
    /// Global position in the store (1-based, gap-free in memory).
    pub position: u64,
    /// Its id.
    pub event_id: EventId,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version within the stream (1-based).
    pub stream_version: u64,
    /// Its wire name (borrowed from the type when stored in process).
    pub event_type: std::borrow::Cow<'static, str>,
    /// The serialized payload.
    pub data: Box<RawValue>,
    /// Correlation, causation, time, extra.
    pub metadata: EventMetadata,
    /// The typed payload, when the store kept it (in-process stores only).
    /// `None` is always valid: readers decode `data` then.
    pub typed: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for StoredEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredEvent")
            .field("position", &self.position)
            .field("event_id", &self.event_id)
            .field("stream_id", &self.stream_id)
            .field("stream_version", &self.stream_version)
            .field("event_type", &self.event_type)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

/// Where an event sits, for answering "has perspective P applied it?".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLocation {
    /// The event.
    pub event_id: EventId,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its wire name.
    pub event_type: std::borrow::Cow<'static, str>,
}

/// Where an in-process event store writes its outbound events
/// ([`NewEvent::outbound`]) inside an append
/// ([`MemoryEventStore::with_outbox`](memory::MemoryEventStore::with_outbox)).
/// A database store writes its outbox rows in the append's transaction
/// instead. The outbox (`whizbang_core::outbox::MemoryOutbox`) implements it.
pub trait OutboxSink: Send + Sync + 'static {
    /// Records `events`, all appended by one append that succeeded, in order.
    /// Called while the store holds its lock: do not call back into the store.
    fn write(&self, events: &[Arc<StoredEvent>]);
}

/// The durable event log.
pub trait EventStore: Send + Sync + 'static {
    /// Appends every stream's events atomically: all or nothing. A stream whose
    /// version does not match its `expected` fails the whole append with
    /// [`Error::Concurrency`](crate::Error::Concurrency).
    fn append(&self, streams: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>>;

    /// The events of `stream` with a version greater than `after_version`, in order.
    fn read_stream(
        &self,
        stream: StreamId,
        after_version: u64,
    ) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>>;

    /// The stream's current version (0 when it has no events).
    fn stream_version(&self, stream: StreamId) -> BoxFuture<'_, Result<u64>>;

    /// Where each known id sits; ids the store does not hold are absent.
    fn locate<'a>(&'a self, ids: &'a [EventId]) -> BoxFuture<'a, Result<Vec<EventLocation>>>;

    /// The streams holding events of any of `event_types`, ordered by id,
    /// each once: what an explicit sync of every stream of a perspective
    /// ([`PerspectiveSync::all`](crate::PerspectiveSync::all)) visits. With
    /// `behind` (the perspective's name), a store that also keeps the
    /// perspective's cursors (a database) may leave out the streams whose
    /// cursor is already at or past their last event of those types; a
    /// store that does not returns them all (the sync reports them
    /// skipped). `None`: every such stream (a full refold).
    ///
    /// The default refuses: the store cannot list its streams, so name the
    /// streams to sync instead.
    ///
    /// # Errors
    /// [`Error::Backend`](crate::Error::Backend) from the default (listing
    /// unsupported); backend errors.
    fn streams_with_types<'a>(
        &'a self,
        behind: Option<&'a str>,
        event_types: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<StreamId>>> {
        let _ = (behind, event_types);
        Box::pin(async move {
            Err(crate::Error::backend(
                "event store",
                "list the streams holding a perspective's events",
                crate::error::Stored::Nothing,
                "this event store cannot list its streams by event type (it keeps the \
                 default of EventStore::streams_with_types); name the streams to sync with \
                 `.streams(ids)` instead of `.all()`",
            ))
        })
    }

    /// Every stream holding an event of one of `event_types`, with its
    /// current version (all its events counted), each once: what a rebuild
    /// covers ([`Runtime::rebuild`](crate::Runtime::rebuild)), in the order
    /// its chunks take them. Any order is correct; a store returns the one
    /// it reads fastest in chunks of neighbours (PostgreSQL: by where each
    /// stream's first event lies, so streams written together, whose events
    /// share pages, are read together; the memory store: by stream).
    ///
    /// # Errors
    /// The default: [`Error::Unsupported`](crate::Error::Unsupported) (the
    /// store cannot list streams, so its perspectives cannot be rebuilt).
    fn stream_heads<'a>(
        &'a self,
        event_types: &'a [&'static str],
    ) -> BoxFuture<'a, Result<Vec<(StreamId, u64)>>> {
        let _ = event_types;
        Box::pin(async {
            Err(crate::Error::Unsupported(
                "list the streams of a perspective's event types (EventStore::stream_heads): \
                 this event store does not, so rebuilds cannot run on it"
                    .to_owned(),
            ))
        })
    }

    /// Up to `limit` events with a global position greater than `after`, in
    /// global order: the feed a keyed perspective
    /// ([`IntoModelKey`](crate::IntoModelKey)) consumes with one cursor.
    /// Only events that are safe to consume: once an event is returned, no
    /// event can later appear at or below its position (a database returns
    /// only events of transactions below its snapshot horizon). The events'
    /// [`StoredEvent::position`] is their place in this order, which a store
    /// may number apart from its other positions (PostgreSQL numbers its
    /// safe feed order without gaps).
    ///
    /// `Ok(None)`, the default: the store offers no such order, and keyed
    /// perspectives fail with [`Error::KeyedUnsupported`](crate::Error::KeyedUnsupported).
    fn read_global(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<Arc<StoredEvent>>>>> {
        let _ = (after, limit);
        Box::pin(async { Ok(None) })
    }

    /// The global position (the [`StoredEvent::position`] that
    /// [`read_global`](Self::read_global) returns it with) of each id the
    /// store has placed in its global order. Ids it does not hold are absent,
    /// and so are ids it holds but has not placed yet (a store may place an
    /// event only once it is safe to consume): a keyed sync answer takes
    /// those as pending. `Ok(None)`, the default: the store offers no global
    /// order.
    fn global_positions<'a>(
        &'a self,
        ids: &'a [EventId],
    ) -> BoxFuture<'a, Result<Option<GlobalPositions>>> {
        let _ = ids;
        Box::pin(async { Ok(None) })
    }

    /// Appends as [`append`](Self::append) does and, when the store can,
    /// applies the inline perspectives `inline` names **in the same
    /// transaction**: events, models, cursors (and a failed cursor's record)
    /// commit together or not at all.
    ///
    /// A store that implements it, after its append and before its commit,
    /// for each of [`InlineApply::targets`] (in a deadlock-free order of its
    /// choosing; each target once): locks the target's cursor (waiting for a
    /// claim that holds it), reads its checkpoint, its model and the stream's
    /// events after the checkpoint (the appended ones included), hands them to
    /// [`InlineApply::apply`] as a [`ClaimedModel`] whose `events` is `Some`,
    /// and writes the [`ModelWrite`] it returns (if any) as a
    /// [`PerspectiveUnit::commit`] would: model, cursor (with its failure when
    /// it has one) and the store's applied wake-up. It returns the targets it
    /// did this for in [`InlineAppended::applied`]; the runtime applies the
    /// others later, as it does for a store that keeps the default.
    ///
    /// The default appends with [`append`](Self::append) and applies nothing
    /// (`applied` is empty): the runtime applies the inline perspectives when
    /// the scope flushes, in a second step. Dropping the future before it
    /// completes must leave either everything (events and models) or nothing.
    ///
    /// # Errors
    /// As [`append`](Self::append); an error writing a model or a cursor fails
    /// the whole append (nothing stored). A perspective's own failure is not
    /// an error here: it is in the cursor the fold writes.
    fn append_inline<'a>(
        &'a self,
        streams: Vec<StreamAppend>,
        inline: &'a dyn InlineApply,
    ) -> BoxFuture<'a, Result<InlineAppended>> {
        let _ = inline;
        Box::pin(async move {
            Ok(InlineAppended {
                events: self.append(streams).await?,
                applied: Vec::new(),
            })
        })
    }
}

/// What [`EventStore::global_positions`] answers: each id the store holds
/// with its global position.
pub type GlobalPositions = Vec<(EventId, u64)>;

/// One model an [`EventStore::append_inline`] applies: an inline
/// perspective and the key of its model (today the stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InlineTarget {
    /// The perspective's name.
    pub perspective: &'static str,
    /// The model's key.
    pub key: ModelKey,
}

/// The runtime's side of [`EventStore::append_inline`]: which models to
/// apply and the fold that applies them. The store calls back into it from
/// inside its transaction; [`apply`](Self::apply) is synchronous, runs no
/// I/O, and contains the perspective's errors and panics (they come back as
/// a failed cursor in the write, never as a panic).
pub trait InlineApply: Send + Sync {
    /// The models to apply, each once.
    fn targets(&self) -> &[InlineTarget];

    /// Folds the events of `claimed` (the target at `index` of
    /// [`targets`](Self::targets), as read under its lock; `events` must be
    /// `Some`) into its model, and returns what to write in the append's
    /// transaction: the new model (`None`: keep the stored one) and the new
    /// checkpoint, which carries the failure when an event failed to apply.
    /// `None`: write nothing (nothing to apply, or its cursor was already
    /// failed). May be called again for the same target if the store retries
    /// its transaction; the last call counts.
    fn apply(&self, index: usize, claimed: ClaimedModel) -> Option<ModelWrite>;
}

/// What [`EventStore::append_inline`] stored and applied.
#[derive(Debug)]
#[non_exhaustive]
pub struct InlineAppended {
    /// The appended events, as [`EventStore::append`] returns them.
    pub events: Vec<Arc<StoredEvent>>,
    /// The indexes (into [`InlineApply::targets`]) of the targets applied in
    /// the append's transaction, which committed. Empty from a store that
    /// applies inline perspectives later (the default).
    pub applied: Vec<usize>,
}

impl InlineAppended {
    /// What a store returns: the stored events and the targets it applied.
    #[must_use]
    pub fn new(events: Vec<Arc<StoredEvent>>, applied: Vec<usize>) -> Self {
        InlineAppended { events, applied }
    }
}

/// The state of one perspective's progress on one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The highest stream version applied (0 = none). Skipped events count as
    /// applied: the cursor moved past them.
    pub version: u64,
    /// Set when an apply failed; the perspective stops on this stream until the
    /// failure is retried or skipped
    /// ([`Runtime::retry_perspective`](crate::Runtime::retry_perspective),
    /// [`Runtime::skip_failed_event`](crate::Runtime::skip_failed_event)).
    pub failure: Option<CheckpointFailure>,
    /// Events an operator skipped on this stream, oldest first. Kept so the
    /// record of what the model does not reflect survives; replays leave them out.
    pub skipped: Vec<SkippedEvent>,
}

/// An event the perspective moved past without applying it, by an operator's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedEvent {
    /// Its version in the stream.
    pub version: u64,
    /// Its id.
    pub event_id: EventId,
    /// Why it was skipped (as given to
    /// [`Runtime::skip_failed_event`](crate::Runtime::skip_failed_event)).
    pub reason: String,
    /// The failure that stopped the perspective on it.
    pub failure: String,
}

/// Why a perspective stopped on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFailure {
    /// The version that failed to apply.
    pub version: u64,
    /// The error message.
    pub message: String,
}

/// The key of one read model of a perspective.
///
/// A perspective keyed by stream keeps one model per stream, keyed by the
/// stream's id. A keyed (multi-stream) perspective
/// ([`IntoModelKey`](crate::IntoModelKey)) keeps one model per value taken
/// from its events (a customer across its order streams), and its one
/// cursor under [`KEYED_CURSOR`](crate::perspective::KEYED_CURSOR). Both are
/// ids, so this is [`StreamId`]; a backend treats the key as an opaque id of
/// the model row, never as naming a stream in the event store.
pub type ModelKey = StreamId;

/// How a perspective store keeps read models, declared by
/// [`PerspectiveStore::model_format`] and honoured by the runtime: it commits
/// [`ModelValue::Typed`] only to a store that keeps typed models, and
/// [`ModelValue::Json`] to every other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelFormat {
    /// The store keeps the typed model (in-process stores): no serialisation
    /// on commit, a clone on read. Such a store must also accept a
    /// [`ModelValue::Json`] (it may keep it as is).
    Typed,
    /// The store keeps JSON (a database): the runtime serialises each model
    /// on commit, and checks when the runtime is built that every registered
    /// perspective's model survives a JSON round trip.
    Json,
}

/// A read model as stored: typed in process, JSON in a database.
///
/// The typed form is an optional fast path: a store that declares
/// [`ModelFormat::Json`] is never handed one. Readers (lenses, the engine)
/// accept either form from any store.
pub enum ModelValue {
    /// The typed model (in-process stores).
    Typed(Box<dyn AnyModel>),
    /// The serialized model.
    Json(Box<RawValue>),
}

impl ModelValue {
    /// A copy (the typed model through its `Clone`).
    #[must_use]
    pub fn clone_value(&self) -> ModelValue {
        match self {
            ModelValue::Typed(m) => ModelValue::Typed(m.clone_box()),
            ModelValue::Json(j) => ModelValue::Json(j.clone()),
        }
    }

    /// The model as JSON (serialising a typed model).
    ///
    /// # Errors
    /// When a typed model's `Serialize` impl fails.
    pub fn to_json(&self) -> std::result::Result<Box<RawValue>, serde_json::Error> {
        match self {
            ModelValue::Typed(m) => m.to_json(),
            ModelValue::Json(j) => Ok(j.clone()),
        }
    }
}

impl std::fmt::Debug for ModelValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelValue::Typed(_) => f.write_str("ModelValue::Typed(..)"),
            ModelValue::Json(j) => write!(f, "ModelValue::Json({})", j.get()),
        }
    }
}

/// A stored read model with the stream version it reflects.
#[derive(Debug)]
pub struct ModelRow {
    /// The model's key (today its stream; see [`ModelKey`]).
    pub id: ModelKey,
    /// The version of the model's cursor: the stream version it reflects.
    pub version: u64,
    /// The model, in the form the store keeps.
    pub model: ModelValue,
}

/// Exclusive work on one (perspective, stream): read the checkpoint and model,
/// then commit the new model and checkpoint together. Dropping a unit without
/// committing releases it unchanged: the stored model and checkpoint stay as
/// they were, whether or not [`take_model`](Self::take_model) was called.
/// Holding a unit never blocks readers: [`PerspectiveStore::checkpoint`],
/// [`PerspectiveStore::load_model`] and [`PerspectiveStore::list_models`] read
/// the last committed state without waiting for the claim.
pub trait PerspectiveUnit: Send {
    /// The checkpoint at claim time.
    fn checkpoint(&self) -> &Checkpoint;
    /// The stored model, for the unit to work on (`None` when there is none yet).
    /// The stored copy is not changed until [`commit`](Self::commit).
    fn take_model(&mut self) -> Option<ModelValue>;
    /// The stream's events after the claimed checkpoint, in version order,
    /// when the store read them together with the claim (a database store
    /// can, in the claim's own transaction, saving the runtime a read on
    /// another connection). `None`, the default, makes the runtime read them
    /// from the event store. Called at most once, right after the claim.
    fn take_events(&mut self) -> Option<Vec<Arc<StoredEvent>>> {
        None
    }
    /// Commits the model and the checkpoint atomically and releases the unit.
    /// A `model` of `None` leaves the stored model as it is (only the checkpoint
    /// changes).
    fn commit(
        self: Box<Self>,
        model: Option<ModelValue>,
        checkpoint: Checkpoint,
    ) -> BoxFuture<'static, Result<()>>;

    /// Deletes the stored model (a tombstone: the perspective's apply
    /// returned [`Tombstone`](crate::Tombstone)) and commits `checkpoint`,
    /// atomically, and releases the unit. The cursor is kept, so the events
    /// it is past are never applied again; readers see no model
    /// ([`PerspectiveStore::load_model`] returns `None`, lists leave it out)
    /// until a later event creates a fresh one.
    ///
    /// The default refuses (nothing is committed): a store that keeps the
    /// default cannot run perspectives that delete their models.
    ///
    /// # Errors
    /// As [`commit`](Self::commit); the default's refusal.
    fn commit_delete(self: Box<Self>, checkpoint: Checkpoint) -> BoxFuture<'static, Result<()>> {
        let version = checkpoint.version;
        Box::pin(async move {
            Err(crate::Error::backend(
                "perspective store",
                format!("delete a model (a tombstone) with its cursor at version {version}"),
                crate::error::Stored::Nothing,
                "this perspective store does not implement PerspectiveUnit::commit_delete, so \
                 it cannot run perspectives whose apply returns a Tombstone",
            ))
        })
    }
}

/// One model claimed by a [`PerspectiveBatch`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ClaimedModel {
    /// The model's key.
    pub key: ModelKey,
    /// Its checkpoint at claim time.
    pub checkpoint: Checkpoint,
    /// The stored model (`None` when there is none yet).
    pub model: Option<ModelValue>,
    /// The stream's events after the checkpoint, in version order, when the
    /// store read them with the claim; `None`: the runtime reads them.
    pub events: Option<Vec<Arc<StoredEvent>>>,
}

impl ClaimedModel {
    /// A claimed model (for stores implementing [`PerspectiveStore::claim_many`]).
    #[must_use]
    pub fn new(
        key: ModelKey,
        checkpoint: Checkpoint,
        model: Option<ModelValue>,
        events: Option<Vec<Arc<StoredEvent>>>,
    ) -> Self {
        ClaimedModel {
            key,
            checkpoint,
            model,
            events,
        }
    }
}

/// What a [`PerspectiveBatch`] commits for one of its models.
#[derive(Debug)]
#[non_exhaustive]
pub struct ModelWrite {
    /// The model's key (one of the batch's).
    pub key: ModelKey,
    /// The new model; `None` leaves the stored one as it is.
    pub model: Option<ModelValue>,
    /// The new checkpoint (never a failure in a [`PerspectiveBatch`]: a
    /// failing model is not committed in a batch; it may be one from
    /// [`InlineApply::apply`]).
    pub checkpoint: Checkpoint,
    /// Delete the stored model (a tombstone) instead of writing `model`
    /// (which is then `None`); the cursor is written all the same. See
    /// [`PerspectiveUnit::commit_delete`].
    pub delete: bool,
}

impl ModelWrite {
    /// A write of `model` (`None`: keep the stored one) and `checkpoint` for `key`.
    #[must_use]
    pub fn new(key: ModelKey, model: Option<ModelValue>, checkpoint: Checkpoint) -> Self {
        ModelWrite {
            key,
            model,
            checkpoint,
            delete: false,
        }
    }

    /// A write that deletes the model of `key` (a tombstone) and writes
    /// `checkpoint`: the cursor stays, the model row goes.
    #[must_use]
    pub fn deleting(key: ModelKey, checkpoint: Checkpoint) -> Self {
        ModelWrite {
            key,
            model: None,
            checkpoint,
            delete: true,
        }
    }
}

/// Exclusive work on several models of one perspective, committed in one
/// transaction: from [`PerspectiveStore::claim_many`]. Dropping it without
/// committing changes nothing and releases every model.
pub trait PerspectiveBatch: Send {
    /// The claimed models, in the order of the keys claimed. Called once.
    fn take_claimed(&mut self) -> Vec<ClaimedModel>;
    /// Commits every write (models, checkpoints) atomically and releases
    /// the batch; models without a write stay as they were. A write with
    /// [`ModelWrite::delete`] deletes its model and keeps its cursor.
    fn commit(self: Box<Self>, writes: Vec<ModelWrite>) -> BoxFuture<'static, Result<()>>;
}

/// Read models, cursors and applied status.
///
/// Each (perspective, [`ModelKey`]) pair has a cursor ([`Checkpoint`]) and at
/// most one model. Today the key is the stream the model folds (see
/// [`ModelKey`] for the keys to come).
pub trait PerspectiveStore: Send + Sync + 'static {
    /// How this store keeps models. The default, [`ModelFormat::Json`], is
    /// what a database backend wants: the runtime serialises models before
    /// [`PerspectiveUnit::commit`]. Return [`ModelFormat::Typed`] only from a
    /// store that keeps models in process.
    fn model_format(&self) -> ModelFormat {
        ModelFormat::Json
    }

    /// Rebuilds beside live ([`RebuildStore`]): `None`, the default,
    /// when the store offers none ([`Runtime::rebuild`](crate::Runtime::rebuild)
    /// then fails with [`Error::Unsupported`](crate::Error::Unsupported)).
    fn rebuilds(&self) -> Option<&dyn RebuildStore> {
        None
    }

    /// Claims exclusive work on (`perspective`, `key`), waiting while another
    /// unit holds it (until that unit commits or is dropped).
    fn claim<'a>(
        &'a self,
        perspective: &'static str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Box<dyn PerspectiveUnit>>>;

    /// Claims several keys of `perspective` at once, so that what is applied
    /// to all of them commits in one transaction (a database store saves a
    /// commit per model). Waits while another unit holds one of them. `None`,
    /// the default: the store claims one key at a time ([`claim`](Self::claim)).
    fn claim_many<'a>(
        &'a self,
        perspective: &'static str,
        keys: &'a [ModelKey],
    ) -> BoxFuture<'a, Result<Option<Box<dyn PerspectiveBatch>>>> {
        let _ = (perspective, keys);
        Box::pin(async { Ok(None) })
    }

    /// [`claim_many`](Self::claim_many) for a perspective whose apply code
    /// never reads an event's metadata
    /// ([`Perspective::READS_METADATA`](crate::Perspective::READS_METADATA)
    /// is `false`): the claimed events' [`StoredEvent::metadata`] may be left
    /// empty (nil ids, the epoch, no extra) instead of read, which spares a
    /// database store reading and decoding it. The default is
    /// [`claim_many`](Self::claim_many).
    fn claim_many_payloads<'a>(
        &'a self,
        perspective: &'static str,
        keys: &'a [ModelKey],
    ) -> BoxFuture<'a, Result<Option<Box<dyn PerspectiveBatch>>>> {
        self.claim_many(perspective, keys)
    }

    /// The last committed checkpoint of (`perspective`, `key`); the default
    /// checkpoint (version 0) when none was committed. Never waits for a claim.
    fn checkpoint<'a>(
        &'a self,
        perspective: &'a str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Checkpoint>>;

    /// One read model, as last committed. Never waits for a claim.
    fn load_model<'a>(
        &'a self,
        perspective: &'a str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Option<ModelRow>>>;

    /// Every read model of a perspective, as last committed, ordered by key.
    /// Never waits for a claim.
    fn list_models<'a>(&'a self, perspective: &'a str) -> BoxFuture<'a, Result<Vec<ModelRow>>>;

    /// The read models of a perspective that `query` selects, in its order,
    /// paged by its offset and limit. Never waits for a claim.
    ///
    /// The default runs the query in memory over
    /// [`list_models`](Self::list_models) (serialising typed models to JSON to
    /// filter and order them). A database store overrides it to run where the
    /// models live (PostgreSQL: `data @> $1`, ordered and paged in SQL), with
    /// the same result.
    fn query_models<'a>(
        &'a self,
        perspective: &'a str,
        query: &'a ModelQuery,
    ) -> BoxFuture<'a, Result<Vec<ModelRow>>> {
        Box::pin(async move { query.run(self.list_models(perspective).await?) })
    }
}

/// How [`PerspectiveStore::query_models`] orders models. Ties are broken by
/// key, ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelOrder {
    /// By key, ascending (what [`PerspectiveStore::list_models`] returns).
    #[default]
    Key,
    /// By the JSON value at `path` (object keys, or array indexes written in
    /// decimal). Values of different JSON types order as PostgreSQL's `jsonb`
    /// does: null < string < number < boolean < array < object. Numbers compare
    /// by value, strings by their UTF-8 bytes (collation `"C"`), booleans false
    /// first; arrays and objects among themselves tie. Models without a value at
    /// `path` come last in either direction.
    Path {
        /// The path from the model's root.
        path: Vec<String>,
        /// Largest first.
        descending: bool,
    },
}

/// A query over one perspective's read models that a store can run where the
/// models live: a JSON containment filter, an order, a page.
///
/// ```
/// use whizbang_core::store::ModelQuery;
/// let q = ModelQuery::new()
///     .contains(serde_json::json!({ "status": "open" }))
///     .order_by_desc(&["total"])
///     .offset(20)
///     .limit(10);
/// assert_eq!(q.limit, Some(10));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ModelQuery {
    /// Keep only models that contain this JSON, with the semantics of
    /// PostgreSQL's `jsonb @>`: every key of an object present with a contained
    /// value, every element of an array contained in some element, scalars
    /// equal (numbers by value); at the top level an array also contains a
    /// scalar it holds.
    pub contains: Option<serde_json::Value>,
    /// The order.
    pub order: ModelOrder,
    /// Matches to skip.
    pub offset: usize,
    /// At most this many matches (`None`: all).
    pub limit: Option<usize>,
}

impl ModelQuery {
    /// Every model, by key.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps only models containing `json` (see [`contains`](Self::contains)).
    #[must_use]
    pub fn contains(mut self, json: serde_json::Value) -> Self {
        self.contains = Some(json);
        self
    }

    /// Orders by the value at `path`, smallest first.
    #[must_use]
    pub fn order_by(self, path: &[&str]) -> Self {
        self.ordered(path, false)
    }

    /// Orders by the value at `path`, largest first.
    #[must_use]
    pub fn order_by_desc(self, path: &[&str]) -> Self {
        self.ordered(path, true)
    }

    fn ordered(mut self, path: &[&str], descending: bool) -> Self {
        self.order = ModelOrder::Path {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            descending,
        };
        self
    }

    /// Skips the first `n` matches.
    #[must_use]
    pub fn offset(mut self, n: usize) -> Self {
        self.offset = n;
        self
    }

    /// Returns at most `n` matches.
    #[must_use]
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Runs the query in memory over `rows` (ordered by key, as
    /// [`PerspectiveStore::list_models`] returns them): the reference
    /// behaviour of [`PerspectiveStore::query_models`].
    ///
    /// # Errors
    /// [`Error::Serialization`](crate::Error::Serialization) when a typed
    /// model's `Serialize` impl fails.
    pub fn run(&self, rows: Vec<ModelRow>) -> Result<Vec<ModelRow>> {
        let needs_json = self.contains.is_some() || self.order != ModelOrder::Key;
        let mut kept: Vec<(ModelRow, Option<serde_json::Value>)> = Vec::with_capacity(rows.len());
        for row in rows {
            let json = if needs_json {
                let raw = row.model.to_json().map_err(json_error)?;
                Some(serde_json::from_str::<serde_json::Value>(raw.get()).map_err(json_error)?)
            } else {
                None
            };
            let keep = match (&self.contains, &json) {
                (Some(wanted), Some(json)) => json_contains_top(json, wanted),
                _ => true,
            };
            if keep {
                kept.push((row, json));
            }
        }
        if let ModelOrder::Path { path, descending } = &self.order {
            kept.sort_by(|(a, ja), (b, jb)| {
                let va = ja.as_ref().and_then(|j| json_at(j, path));
                let vb = jb.as_ref().and_then(|j| json_at(j, path));
                json_order(va, vb, *descending).then(a.id.cmp(&b.id))
            });
        }
        Ok(kept
            .into_iter()
            .map(|(row, _)| row)
            .skip(self.offset)
            .take(self.limit.unwrap_or(usize::MAX))
            .collect())
    }
}

fn json_error(source: serde_json::Error) -> crate::Error {
    crate::Error::Serialization {
        type_name: "read model (to query it as JSON)",
        source,
    }
}

/// The value at `path` (`#>` in PostgreSQL).
fn json_at<'v>(value: &'v serde_json::Value, path: &[String]) -> Option<&'v serde_json::Value> {
    path.iter().try_fold(value, |v, key| match v {
        serde_json::Value::Object(map) => map.get(key),
        serde_json::Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// `jsonb`'s order of types: null < string < number < boolean < array < object.
fn json_rank(value: &serde_json::Value) -> u8 {
    match value {
        serde_json::Value::Null => 0,
        serde_json::Value::String(_) => 1,
        serde_json::Value::Number(_) => 2,
        serde_json::Value::Bool(_) => 3,
        serde_json::Value::Array(_) => 4,
        serde_json::Value::Object(_) => 5,
    }
}

/// See [`ModelOrder::Path`]: missing values last in either direction.
fn json_order(
    a: Option<&serde_json::Value>,
    b: Option<&serde_json::Value>,
    descending: bool,
) -> std::cmp::Ordering {
    use serde_json::Value;
    use std::cmp::Ordering;
    let (a, b) = match (a, b) {
        (None, None) => return Ordering::Equal,
        (None, Some(_)) => return Ordering::Greater,
        (Some(_), None) => return Ordering::Less,
        (Some(a), Some(b)) => (a, b),
    };
    let by_value = json_rank(a).cmp(&json_rank(b)).then_with(|| match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.total_cmp(&y)
        }
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => Ordering::Equal,
    });
    if descending {
        by_value.reverse()
    } else {
        by_value
    }
}

/// `haystack @> needle` at the top level, where an array also contains a
/// scalar it holds.
fn json_contains_top(haystack: &serde_json::Value, needle: &serde_json::Value) -> bool {
    match (haystack, needle) {
        (serde_json::Value::Array(items), n) if !n.is_array() && !n.is_object() => {
            items.iter().any(|item| json_contains(item, n))
        }
        _ => json_contains(haystack, needle),
    }
}

/// `haystack @> needle` below the top level.
fn json_contains(haystack: &serde_json::Value, needle: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (haystack, needle) {
        (Value::Object(h), Value::Object(n)) => n
            .iter()
            .all(|(k, nv)| h.get(k).is_some_and(|hv| json_contains(hv, nv))),
        (Value::Array(h), Value::Array(n)) => {
            n.iter().all(|nv| h.iter().any(|hv| json_contains(hv, nv)))
        }
        (Value::Number(h), Value::Number(n)) => h.as_f64() == n.as_f64(),
        (h, n) => !h.is_array() && !h.is_object() && h == n,
    }
}

/// A read model: what a perspective folds events into.
///
/// Blanket-implemented for every `Default + Clone + Serialize + DeserializeOwned`
/// type. `Clone` lets in-process stores hand out snapshots without a serde round trip.
pub trait Model: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static> Model for T {}

/// A type-erased [`Model`].
pub trait AnyModel: Any + Send + Sync {
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn AnyModel>;
    /// The model as JSON.
    ///
    /// # Errors
    /// When the model's `Serialize` impl fails.
    fn to_json(&self) -> std::result::Result<Box<RawValue>, serde_json::Error>;
    /// As `&dyn Any`, to downcast.
    fn as_any(&self) -> &dyn Any;
    /// As `&mut dyn Any`, to downcast.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// As `Box<dyn Any>`, to downcast by value.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<M: Model> AnyModel for M {
    fn clone_box(&self) -> Box<dyn AnyModel> {
        Box::new(self.clone())
    }
    fn to_json(&self) -> std::result::Result<Box<RawValue>, serde_json::Error> {
        serde_json::value::to_raw_value(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// What a fence reads of a keyed perspective's shadow
/// ([`RebuildFence::keyed_behind`]): its one cursor and every event after it
/// in the global order.
pub type KeyedBehind = (Checkpoint, Vec<Arc<StoredEvent>>);

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

    /// A keyed perspective's shadow `shadow`, read inside the fence: its
    /// one cursor (the checkpoint of
    /// [`KEYED_CURSOR`](crate::perspective::KEYED_CURSOR)) and every event
    /// after it in the global order (newly safe ones numbered first).
    /// `None` (the default): the fence holds nothing to read with; the
    /// rebuild reads through the stores (the in-memory fence). A store whose
    /// fence blocks the applies that hold its connections should answer, so
    /// that the last step never waits for a connection.
    ///
    /// # Errors
    /// A backend error.
    fn keyed_behind<'a>(
        &'a mut self,
        shadow: &'static str,
    ) -> BoxFuture<'a, Result<Option<KeyedBehind>>> {
        let _ = shadow;
        Box::pin(async { Ok(None) })
    }

    /// The stored models of `keys` in the shadow `shadow`, read inside the
    /// fence (see [`keyed_behind`](Self::keyed_behind)); `None` (the
    /// default): read them through the stores.
    ///
    /// # Errors
    /// A backend error.
    fn models<'a>(
        &'a mut self,
        shadow: &'static str,
        keys: &'a [ModelKey],
    ) -> BoxFuture<'a, Result<Option<HashMap<ModelKey, ModelValue>>>> {
        let _ = (shadow, keys);
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
/// ([`PerspectiveStore::rebuilds`]).
pub trait RebuildStore: Send + Sync {
    /// Starts (or resumes) the rebuild of `live` to `version`, as the only
    /// one running for it: a store shared by processes refuses a second one
    /// while the first is alive ([`Error::InvalidInput`](crate::Error::InvalidInput) naming it) and lets
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

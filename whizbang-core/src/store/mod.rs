//! The storage traits and their in-memory implementation.
//!
//! This module owns the contracts a backend must honour: an [`EventStore`]
//! that appends with optimistic concurrency, and a [`PerspectiveStore`] whose
//! [`PerspectiveUnit`] commits a model, its cursor and the applied status as one
//! atomic unit. It knows nothing about routing. These traits are the seam a
//! storage backend implements; [`memory`] is the reference implementation every
//! other backend is held to.

pub mod memory;

use crate::error::Result;
use crate::message::{EventId, ExpectedVersion, MessageId, Metadata, StreamId};
use crate::perspective::AnyModel;
use serde_json::value::RawValue;
use std::any::Any;
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
    /// The typed payload, kept by in-process stores to spare a decode.
    pub typed: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for NewEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewEvent")
            .field("event_id", &self.event_id)
            .field("stream_id", &self.stream_id)
            .field("event_type", &self.event_type)
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

/// A read model as stored: typed in process, JSON in a database.
pub enum ModelValue {
    /// The typed model (in-process stores).
    Typed(Box<dyn AnyModel>),
    /// The serialized model.
    Json(Box<RawValue>),
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
    /// The model's id (its stream).
    pub id: StreamId,
    /// The stream version it reflects.
    pub version: u64,
    /// The model.
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
    /// Commits the model and the checkpoint atomically and releases the unit.
    /// A `model` of `None` leaves the stored model as it is (only the checkpoint
    /// changes).
    fn commit(
        self: Box<Self>,
        model: Option<ModelValue>,
        checkpoint: Checkpoint,
    ) -> BoxFuture<'static, Result<()>>;
}

/// Read models, cursors and applied status.
pub trait PerspectiveStore: Send + Sync + 'static {
    /// Claims exclusive work on (`perspective`, `stream`), waiting for another holder.
    fn claim<'a>(
        &'a self,
        perspective: &'static str,
        stream: StreamId,
    ) -> BoxFuture<'a, Result<Box<dyn PerspectiveUnit>>>;

    /// The last committed checkpoint of (`perspective`, `stream`). Never waits
    /// for a claim.
    fn checkpoint<'a>(
        &'a self,
        perspective: &'a str,
        stream: StreamId,
    ) -> BoxFuture<'a, Result<Checkpoint>>;

    /// One read model, as last committed. Never waits for a claim.
    fn load_model<'a>(
        &'a self,
        perspective: &'a str,
        id: StreamId,
    ) -> BoxFuture<'a, Result<Option<ModelRow>>>;

    /// Every read model of a perspective, as last committed, ordered by id.
    /// Never waits for a claim.
    fn list_models<'a>(&'a self, perspective: &'a str) -> BoxFuture<'a, Result<Vec<ModelRow>>>;
}

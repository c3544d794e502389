//! Keyed (multi-stream) perspectives: the key a model is folded under, taken
//! from each event.
//!
//! `#[perspective(model = M, key = customer_id)]` declares that every event
//! the perspective handles has a field `customer_id` whose type converts
//! into the model key ([`IntoModelKey`]); the compiler checks it for each
//! handled event type. Such a perspective keeps one model per key, built
//! from events of any number of streams, and one cursor for the whole
//! perspective: a position in the event store's global order
//! ([`EventStore::read_global`](crate::store::EventStore::read_global)),
//! stored as the checkpoint of the reserved key [`KEYED_CURSOR`]. The
//! runtime reads the events after the cursor in that order, groups them by
//! key, folds each key's model and commits every model and the cursor in
//! one transaction: exactly once, in order. Read-your-writes is exact: an
//! event is applied when the cursor has passed its global position.
//!
//! - Read a model with [`Lens::get_by_key`](crate::Lens::get_by_key); its
//!   version ([`Lens::get_versioned`](crate::Lens::get_versioned)) is the
//!   global position of the last event applied to it.
//! - Waits (`send_and_sync`, `#[await_perspective_sync]`, a lens
//!   `with_sync`) work as for any async perspective and are exact.
//! - A failure stops the whole perspective at the failing event's global
//!   position (the cursor is one); retry or skip it with
//!   [`Runtime::retry_perspective`](crate::Runtime::retry_perspective) /
//!   [`Runtime::skip_failed_event`](crate::Runtime::skip_failed_event)
//!   (the stream argument is ignored: pass [`KEYED_CURSOR`]).
//! - A keyed perspective is always async, and a stream fold
//!   ([`Runtime::aggregate`](crate::Runtime::aggregate)) of one is refused.
//! - The backend must offer a global order and batches: the memory stores
//!   and PostgreSQL do; others answer
//!   [`Error::KeyedUnsupported`](crate::Error::KeyedUnsupported).
//!
//! ```
//! use whizbang_core::{perspective, Event, StreamId};
//! use uuid::Uuid;
//!
//! #[derive(Event, serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced {
//!     #[stream_key]
//!     order_id: StreamId,
//!     customer_id: Uuid,
//!     amount: u64,
//! }
//!
//! #[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
//! struct CustomerTotals {
//!     orders: u64,
//!     total: u64,
//! }
//!
//! struct CustomerTotalsPerspective;
//!
//! #[perspective(model = CustomerTotals, key = customer_id)]
//! impl CustomerTotalsPerspective {
//!     fn placed(m: &mut CustomerTotals, e: &OrderPlaced) {
//!         m.orders += 1;
//!         m.total += e.amount;
//!     }
//! }
//! ```

use crate::message::{StreamId, StreamKey};
use crate::store::ModelKey;

/// The reserved key under which a keyed perspective keeps its cursor (the
/// nil id): its checkpoint's `version` is the global position of the last
/// event the perspective moved past. No model is stored under it; an event
/// whose key is nil is refused (the perspective fails on it).
pub const KEYED_CURSOR: ModelKey = StreamId(uuid::Uuid::nil());

/// A value that names a read model of a keyed perspective: the type of the
/// field named by `#[perspective(key = field)]`.
///
/// Implemented for every [`StreamKey`] ([`Uuid`](uuid::Uuid),
/// [`StreamId`], your stream id newtypes); implement it for other id types.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot key a read model",
    label = "the field named by `key = ..` must convert into a model key",
    note = "implement `whizbang_core::IntoModelKey` (or `StreamKey`) for `{Self}`; `Uuid` and `StreamId` already do"
)]
pub trait IntoModelKey {
    /// The model key this value names.
    fn to_model_key(&self) -> ModelKey;
}

impl<T: StreamKey + ?Sized> IntoModelKey for T {
    fn to_model_key(&self) -> ModelKey {
        self.to_stream_id()
    }
}

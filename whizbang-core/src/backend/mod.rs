//! The backend seam: everything a storage backend implements and uses, in one
//! place.
//!
//! A backend (the in-memory one in [`memory`](crate::store::memory), a
//! PostgreSQL crate, ..) plugs into a [`Runtime`](crate::Runtime) through
//! [`RuntimeBuilder`](crate::RuntimeBuilder): `event_store`,
//! `perspective_store`, `sync_backend` and `apply_listener`. This module
//! re-exports what those need and states the contract each must honour. The
//! conformance suite (`backend::conformance`, behind the cargo feature
//! `conformance`; see `whizbang_core::conformance_tests!`) turns the contract into tests
//! a backend runs against itself; the memory stores pass it in both model
//! formats.
//!
//! # The event store ([`EventStore`])
//! - [`append`](EventStore::append) is all or nothing across every
//!   [`StreamAppend`] in the call. Each stream's [`ExpectedVersion`](crate::ExpectedVersion)
//!   is checked against its version before the call (plus what earlier entries
//!   of the same call add to it): `Any` admits every version, `NoStream` only 0,
//!   `Exact(n)` only `n`. A mismatch is [`Error::Concurrency`](crate::Error::Concurrency)
//!   naming the stream, the expectation and the actual version. An event id
//!   already stored, or twice in one call, is
//!   [`Error::DuplicateEventId`](crate::Error::DuplicateEventId). Either way
//!   nothing is appended. Stream versions start at 1 and have no gaps.
//! - [`read_stream`](EventStore::read_stream) returns the events after a version,
//!   in version order; [`stream_version`](EventStore::stream_version) is 0 for a
//!   stream with no events; [`locate`](EventStore::locate) leaves out ids it
//!   does not hold (an id never seen is "not arrived", never "applied").
//! - The typed payload ([`NewEvent::typed`]) is a fast path a store may drop:
//!   [`StoredEvent::typed`] of `None` is always valid, readers decode `data`.
//!
//! # Inline perspectives in the append ([`EventStore::append_inline`])
//! - When a send's events are handled by inline perspectives, the runtime
//!   appends with [`append_inline`](EventStore::append_inline), handing the
//!   store an [`InlineApply`]: the (perspective, model) [`InlineTarget`]s and
//!   the runtime's own fold (the one the flush and the runner use). A store
//!   that overrides it applies them between its append and its commit (lock
//!   each cursor, read checkpoint, model and the stream's events after it,
//!   fold, write model and cursor, one applied wake-up) and returns the
//!   targets it applied; the runtime then tells the [`ApplyListener`]s (so
//!   waiters wake), records a failed target for
//!   [`Scope::complete`](crate::Scope::complete) to report, and does not claim
//!   those targets again when the scope flushes. The result is the documented
//!   inline semantics, made atomic: a perspective's error or panic does not
//!   undo the append (its cursor is written failed, with the message and the
//!   version, in the same transaction), the other perspectives still apply,
//!   and `complete()` returns [`Error::PerspectiveFailed`](crate::Error::PerspectiveFailed).
//! - The default keeps the two steps: append, then apply the inline
//!   perspectives when the scope flushes. The memory stores keep it (an
//!   in-process crash loses both anyway). The PostgreSQL backend overrides it.
//! - While any event receptor of the runtime fires at a perspective stage
//!   (`Pre/PostPerspective`, `PostAllPerspectives`, inline or detached), the
//!   runtime does not use `append_inline` at all: those stages must run
//!   around each apply, so every inline perspective applies at the flush, as
//!   before.
//!
//! # The perspective store ([`PerspectiveStore`], [`PerspectiveUnit`])
//! - Keys: one cursor ([`Checkpoint`]) and at most one model per
//!   (perspective, [`ModelKey`]). Today the key is the stream the model folds;
//!   keep it an opaque model id in storage (see [`ModelKey`]).
//! - [`claim`](PerspectiveStore::claim) is exclusive: a second claim on the same
//!   pair waits until the first unit commits or is dropped. A dropped unit
//!   (also after [`take_model`](PerspectiveUnit::take_model)) changes nothing.
//!   [`commit`](PerspectiveUnit::commit) writes model and checkpoint
//!   atomically (with the failure and skipped records); a `None` model keeps
//!   the stored one.
//! - Reads ([`checkpoint`](PerspectiveStore::checkpoint),
//!   [`load_model`](PerspectiveStore::load_model),
//!   [`list_models`](PerspectiveStore::list_models), ordered by key) return
//!   the last commit and never wait for a claim.
//! - [`model_format`](PerspectiveStore::model_format) says how models are kept.
//!   [`ModelFormat::Json`] (the default) gets [`ModelValue::Json`] only, and the
//!   runtime checks at build time that every perspective's model survives a JSON
//!   round trip ([`Error::ModelNotJson`](crate::Error::ModelNotJson)).
//!   [`ModelFormat::Typed`] gets typed models and must also accept JSON ones.
//!
//! # Sync ([`SyncBackend`])
//! Answers a batch of [`SyncInquiry`]s with an [`EventSyncStatus`] per id:
//! `Applied` when the perspective's cursor on the event's stream reached its
//! version (skipped events count), `Pending` when stored but not yet applied,
//! `NotArrived` when the store does not hold it, `NotApplicable` when the
//! perspective does not handle its type, `Failed` when the cursor failed at or
//! before it. [`StoreSyncBackend`] answers from any event store and
//! perspective store pair; a database backend may answer in one query.
//!
//! # Keyed perspectives ([`EventStore::read_global`])
//! A keyed (multi-stream) perspective ([`IntoModelKey`](crate::IntoModelKey))
//! needs three things of a backend, each with a default that declines
//! ([`Error::KeyedUnsupported`](crate::Error::KeyedUnsupported)):
//! - [`read_global`](EventStore::read_global): the events after a position
//!   in one global order, only those safe to consume (none can later appear
//!   behind one returned); [`global_positions`](EventStore::global_positions):
//!   where ids sit in it (absent until placed).
//! - [`claim_many`](PerspectiveStore::claim_many): the cursor (the key
//!   [`KEYED_CURSOR`](crate::perspective::KEYED_CURSOR)) and the models of
//!   one batch claimed and committed in one transaction; the failure of a
//!   keyed cursor is recorded through a [`PerspectiveUnit`] (a batch never
//!   records one).
//! - A sync answer for [`SyncInquiry::keyed`] from the perspective's one
//!   cursor: [`keyed_status`] decides each id.
//!
//! The contracts are in `conformance::keyed`, apart from the others (a
//! backend may not offer keyed perspectives). A report of the cursor's
//! commit (its key is [`KEYED_CURSOR`](crate::perspective::KEYED_CURSOR))
//! fed to a [`WakeupSink`] wakes every wait on that perspective.
//!
//! # Wake-ups, both ways
//! - Out: the runtime tells every [`ApplyListener`] registered with
//!   [`RuntimeBuilder::apply_listener`](crate::RuntimeBuilder::apply_listener)
//!   of each local commit with an [`ApplyReport`]; a backend shared by many
//!   processes NOTIFYs the others from there (or inside its unit's commit).
//! - In: reports of commits made elsewhere go to
//!   [`Runtime::notify_applied`](crate::Runtime::notify_applied) or a
//!   [`WakeupSink`] (from [`Runtime::wakeup_sink`](crate::Runtime::wakeup_sink)),
//!   so local waiters wake at once instead of at their next re-ask.
//!
//! # Plugging a backend in
//! ```
//! use std::sync::Arc;
//! use whizbang_core::backend::{
//!     ApplyReport, BoxFuture, EventLocation, EventStore, MemoryEventStore,
//!     MemoryPerspectiveStore, StoredEvent, StreamAppend,
//! };
//! use whizbang_core::{EventId, Result, Runtime, StreamId};
//! # #[derive(whizbang_core::Command, serde::Serialize, serde::Deserialize)] struct Ping;
//! # #[derive(Default)] struct R;
//! # #[whizbang_core::receptor] impl whizbang_core::Receptor<Ping> for R {
//! #   async fn handle(&self, _: Ping, _: &mut whizbang_core::Context) -> whizbang_core::Result<()> { Ok(()) } }
//!
//! /// An event store that logs appends and delegates the rest.
//! struct LoggedEvents(MemoryEventStore);
//!
//! impl EventStore for LoggedEvents {
//!     fn append(&self, streams: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>> {
//!         println!("appending to {} streams", streams.len());
//!         self.0.append(streams)
//!     }
//!     fn read_stream(&self, stream: StreamId, after: u64) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>> {
//!         self.0.read_stream(stream, after)
//!     }
//!     fn stream_version(&self, stream: StreamId) -> BoxFuture<'_, Result<u64>> {
//!         self.0.stream_version(stream)
//!     }
//!     fn locate<'a>(&'a self, ids: &'a [EventId]) -> BoxFuture<'a, Result<Vec<EventLocation>>> {
//!         self.0.locate(ids)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
//! let runtime = Runtime::builder()
//!     .event_store(LoggedEvents(MemoryEventStore::json()))
//!     .perspective_store(MemoryPerspectiveStore::json())
//!     // Out: hear local commits (a database backend would NOTIFY here).
//!     .apply_listener(|report: &ApplyReport| {
//!         println!("{} is at {} on {}", report.perspective, report.version, report.stream);
//!     })
//!     .build()?;
//! // In: a LISTEN task feeds other processes' commits to local waiters.
//! let sink = runtime.wakeup_sink();
//! tokio::spawn(async move {
//!     let report = ApplyReport::new("orders.summary", StreamId::new(), 1, vec![EventId::new()]);
//!     sink.notify(&report); // false once the runtime is gone: stop listening
//! });
//! # Ok(()) }
//! ```

#[cfg(feature = "conformance")]
pub mod conformance;

#[doc(inline)]
pub use crate::dispatch::Backend;
#[doc(inline)]
pub use crate::perspective::engine::{ApplyListener, ApplyReport};
#[doc(inline)]
pub use crate::perspective::{MemorySyncLog, SyncLog, SyncRun, SyncRunOutcome};
#[doc(inline)]
pub use crate::store::memory::{MemoryEventStore, MemoryPerspectiveStore};
#[doc(inline)]
pub use crate::store::AnyModel;
#[doc(inline)]
pub use crate::store::{
    BoxFuture, Checkpoint, CheckpointFailure, ClaimedModel, EventLocation, EventMetadata,
    EventStore, GlobalPositions, InlineAppended, InlineApply, InlineTarget, ModelFormat, ModelKey,
    ModelRow, ModelValue, ModelWrite, NewEvent, PerspectiveBatch, PerspectiveStore,
    PerspectiveUnit, SkippedEvent, StoredEvent, StreamAppend,
};
#[doc(inline)]
pub use crate::sync::{
    keyed_status, EventSyncStatus, StoreSyncBackend, SyncBackend, SyncInquiry, SyncInquiryResult,
    UnappliedQuery, WakeupSink,
};

//! Perspective synchronization: read-your-writes on async perspectives.
//!
//! This module owns the wait: the [`SyncFilter`] that selects events, the
//! trackers that know what was emitted ([`ScopedEventTracker`]) and what each
//! perspective still has to apply ([`SyncEventTracker`]), the batched
//! [`SyncInquiry`] a backend answers, the debugger-aware clock, and the
//! [`PerspectiveSyncAwaiter`]. It never applies anything and never reports
//! `Synced` unless the backend says every awaited id is applied: an id never
//! seen is `NotArrived`, not processed.
//!
//! ```
//! # use whizbang_core::sync::{PerspectiveSyncOptions, SyncFilter};
//! # use std::time::Duration;
//! let options = SyncFilter::current_scope().with_timeout(Duration::from_secs(2));
//! assert!(options.debugger_aware);
//! ```

mod awaiter;
mod clock;
mod filter;
mod help;
mod inquiry;
mod table;
mod tracker;
mod waiters;

pub use awaiter::{PerspectiveList, PerspectiveSyncAwaiter, SyncOutcome, SyncResult};
pub use clock::{ManualClock, SyncClock, TokioClock};
pub(crate) use filter::Candidate;
pub use filter::{EventTypeList, PerspectiveSyncOptions, SyncFilter};
pub(crate) use help::help_along;

pub use inquiry::{
    EventSyncStatus, StoreSyncBackend, SyncBackend, SyncInquiry, SyncInquiryResult, UnappliedQuery,
};
pub use tracker::{ScopedEventTracker, SyncEventTracker, WakeupSink};

use crate::error::Result;
use crate::perspective::engine::Engine;
use crate::perspective::runner::PerspectiveRunner;
use crate::registry::Registry;
use crate::store::{BoxFuture, EventLocation};
use std::sync::Arc;

/// What sync needs of a runtime, handed down by dispatch (which builds it and
/// holds it): the routing tables, the tracker and its backend, the default
/// clock, and the engine and runner a wait helps along or signals. Sync
/// imports nothing of dispatch; dispatch imports sync.
pub(crate) struct SyncRuntime {
    pub(crate) registry: Arc<Registry>,
    pub(crate) tracker: Arc<SyncEventTracker>,
    pub(crate) backend: Arc<dyn SyncBackend>,
    /// The default clock, shared by every wait.
    pub(crate) clock: Arc<dyn SyncClock>,
    /// Catch-ups for the help-along, and the stores a wait reads.
    pub(crate) engine: Engine,
    /// The async runner a wait signals when it finds stored, unapplied work.
    pub(crate) runner: PerspectiveRunner,
}

/// What a wait needs of the scope its awaiter is bound to (dispatch's scope
/// implements it): the events it emitted, and a flush of what it queued.
pub(crate) trait SyncScope: Send + Sync {
    /// Every event the scope appended, in order.
    fn emitted(&self) -> Vec<EventLocation>;

    /// How many events the scope appended.
    fn emitted_len(&self) -> usize;

    /// Flushes what the scope queued, keeping it open (inline perspectives
    /// apply, async ones are signalled). A failure that is not the caller's
    /// is kept for the scope's `complete()`.
    fn flush_queued(self: Arc<Self>) -> BoxFuture<'static, Result<()>>;
}

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
mod outcome;
mod scope;
mod table;
mod tracker;
mod trigger;
mod waiters;

pub use awaiter::{PerspectiveList, PerspectiveSyncAwaiter};
pub use clock::{ManualClock, SyncClock, TokioClock};
pub(crate) use filter::Candidate;
pub use filter::{EventTypeList, PerspectiveSyncOptions, SyncFilter};
pub(crate) use help::help_along;
pub use outcome::{StrategyRun, SyncOutcome, SyncResult};

pub use inquiry::{
    keyed_status, EventSyncStatus, StoreSyncBackend, SyncBackend, SyncInquiry, SyncInquiryResult,
    UnappliedQuery,
};
pub(crate) use scope::SyncScope;
pub(crate) use tracker::SyncRuntime;
pub use tracker::{ScopedEventTracker, SyncEventTracker, WakeupSink};
pub(crate) use trigger::{holds_back, may_trigger, strategy_run, target_streams, trigger_run};

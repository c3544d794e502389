//! Where each perspective stands: its strategy, when it last committed in
//! this process, how far it is behind the head (events and seconds), and
//! how many of its cursors failed.
//!
//! [`Runtime::perspective_status`](crate::Runtime::perspective_status)
//! answers for one perspective,
//! [`Runtime::perspective_statuses`](crate::Runtime::perspective_statuses)
//! for every registered one (computed in dispatch, which sees the stores and
//! the sync backend). This file holds the answer's type and the listener
//! that records each perspective's last commit.

use super::PerspectiveMode;
use crate::perspective::engine::{ApplyListener, ApplyReport};
use crate::util::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Where one perspective stands, from
/// [`Runtime::perspective_status`](crate::Runtime::perspective_status).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PerspectiveStatus {
    /// The perspective's name.
    pub name: &'static str,
    /// Inline or async.
    pub mode: PerspectiveMode,
    /// Its strategy, as [`SyncStrategy::describe`](super::strategy::SyncStrategy::describe)
    /// reads it (`"realtime"`, `"batch(100, 50ms)"`, ..).
    pub strategy: String,
    /// When it was last committed for (an apply, a failure, a recovery):
    /// by this process, or by any process sharing the store when the sync
    /// backend records it (PostgreSQL does:
    /// [`SyncBackend::last_applied`](crate::backend::SyncBackend::last_applied));
    /// `None` when nothing was committed for it that either knows of.
    pub last_sync: Option<SystemTime>,
    /// Events it handles that are stored and not yet applied (failed
    /// streams' included).
    pub lag_events: u64,
    /// How far behind the head it is: the age of the oldest of those events
    /// (zero when none).
    pub lag: Duration,
    /// Streams whose cursor has failed (retry or skip them).
    pub failed_cursors: u64,
}

/// When each perspective last committed in this process: an apply listener
/// the runtime installs.
#[derive(Debug, Default)]
pub(crate) struct LastSync {
    at: Mutex<HashMap<&'static str, SystemTime>>,
}

impl LastSync {
    /// When `perspective` last committed in this process.
    pub(crate) fn get(&self, perspective: &str) -> Option<SystemTime> {
        lock(&self.at).get(perspective).copied()
    }
}

impl ApplyListener for LastSync {
    fn on_apply(&self, report: &ApplyReport) {
        lock(&self.at).insert(report.perspective, SystemTime::now());
    }
}

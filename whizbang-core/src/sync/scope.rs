//! What a wait needs of the scope its awaiter is bound to: the [`SyncScope`]
//! trait, which dispatch's scope implements. Sync imports nothing of dispatch.

use crate::error::Result;
use crate::store::{BoxFuture, EventLocation};
use std::sync::Arc;

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

//! Asking a backend which awaited events a perspective has applied.
//!
//! One [`SyncInquiry`] per perspective; a backend answers a batch in one call
//! with a status per event id. [`StoreSyncBackend`] answers from any
//! [`EventStore`] + [`PerspectiveStore`] pair: an event is applied when the
//! perspective's cursor on its stream has reached its version. A SQL backend
//! can answer the same batch in one statement.

use crate::error::Result;
use crate::message::{EventId, StreamId};
use crate::store::{BoxFuture, EventStore, PerspectiveStore};
use std::collections::HashMap;
use std::sync::Arc;

/// Which of `event_ids` has `perspective` applied?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncInquiry {
    /// The perspective's name.
    pub perspective: &'static str,
    /// Wire names of the event types it handles.
    pub handled: &'static [&'static str],
    /// The ids expected.
    pub event_ids: Vec<EventId>,
    /// Whether the perspective is keyed ([`IntoModelKey`](crate::IntoModelKey)):
    /// then an event is applied when the perspective's one cursor (the
    /// checkpoint of [`KEYED_CURSOR`](crate::perspective::KEYED_CURSOR)) has
    /// reached its global position, not when a cursor on its stream has
    /// reached its version.
    pub keyed: bool,
}

/// Where one awaited event stands for one perspective. More statuses may
/// come: match with a `_` arm.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventSyncStatus {
    /// The perspective has applied it.
    Applied,
    /// Stored, not yet applied.
    Pending {
        /// Its stream.
        stream: StreamId,
        /// Its version.
        version: u64,
    },
    /// Not (yet) in the store: never counted as applied.
    NotArrived,
    /// Stored, but the perspective does not handle its type.
    NotApplicable,
    /// The perspective failed on its stream at or before it.
    Failed {
        /// The stream.
        stream: StreamId,
        /// The version that failed.
        version: u64,
        /// The failure.
        message: String,
    },
}

/// The answer to one [`SyncInquiry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncInquiryResult {
    /// The perspective.
    pub perspective: &'static str,
    /// The ids that were asked about.
    pub expected_ids: Vec<EventId>,
    /// The status of each, in the order asked.
    pub statuses: Vec<(EventId, EventSyncStatus)>,
}

impl SyncInquiryResult {
    /// Ids the perspective has applied.
    #[must_use]
    pub fn processed_ids(&self) -> Vec<EventId> {
        self.statuses
            .iter()
            .filter(|(_, s)| *s == EventSyncStatus::Applied)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ids still to apply (pending, not arrived, or failed).
    #[must_use]
    pub fn pending_ids(&self) -> Vec<EventId> {
        self.statuses
            .iter()
            .filter(|(_, s)| {
                !matches!(s, EventSyncStatus::Applied | EventSyncStatus::NotApplicable)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// How many are applied.
    #[must_use]
    pub fn processed_count(&self) -> usize {
        self.processed_ids().len()
    }

    /// How many are still to apply.
    #[must_use]
    pub fn pending_count(&self) -> usize {
        self.pending_ids().len()
    }

    /// Every expected id applied; when none was expected, nothing pending.
    /// Ids the perspective does not handle are not waited for.
    #[must_use]
    pub fn is_fully_synced(&self) -> bool {
        self.pending_count() == 0
    }

    /// Each id's status.
    pub(crate) fn by_id(&self) -> HashMap<EventId, &EventSyncStatus> {
        self.statuses.iter().map(|(id, s)| (*id, s)).collect()
    }

    /// The first failure, if the perspective failed on an awaited event.
    #[must_use]
    pub fn failure(&self) -> Option<&EventSyncStatus> {
        self.statuses
            .iter()
            .map(|(_, s)| s)
            .find(|s| matches!(s, EventSyncStatus::Failed { .. }))
    }
}

/// Which stored events has `perspective` not applied yet? Asked when a wait
/// begins whose filter reaches past the streams it names (`all()`, event
/// types), so that across processes it means "everything appended before the
/// wait began", not "what this process happens to know about".
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnappliedQuery {
    /// The perspective's name.
    pub perspective: &'static str,
    /// Wire names of the event types it handles (only these can be pending).
    pub handled: &'static [&'static str],
    /// Whether the perspective is keyed: unapplied means after its one
    /// cursor in the global order (see [`SyncInquiry::keyed`]).
    pub keyed: bool,
}

impl UnappliedQuery {
    /// The query for one perspective (keyed by stream).
    #[must_use]
    pub fn new(perspective: &'static str, handled: &'static [&'static str]) -> Self {
        UnappliedQuery {
            perspective,
            handled,
            keyed: false,
        }
    }

    /// The same query, for a keyed perspective.
    #[must_use]
    pub fn keyed(mut self) -> Self {
        self.keyed = true;
        self
    }
}

/// Answers sync inquiries: the part of a backend the awaiter needs.
pub trait SyncBackend: Send + Sync + 'static {
    /// Answers every inquiry, one result per inquiry, in order.
    fn inquire<'a>(
        &'a self,
        inquiries: &'a [SyncInquiry],
    ) -> BoxFuture<'a, Result<Vec<SyncInquiryResult>>>;

    /// The events stored now (as of the call: the store's high-water mark)
    /// that `query.perspective` handles and has not applied, with where they
    /// sit. A wait whose filter is open-ended (`all()`, event types) adds these
    /// to what the process tracks itself.
    ///
    /// The default answers "nothing beyond what this process tracks", which is
    /// exact for a store only this process appends to (the in-memory one). A
    /// store shared by several processes must answer from the store: leaving an
    /// event out could let such a wait report `Synced` before that event is
    /// applied.
    fn unapplied<'a>(
        &'a self,
        query: &'a UnappliedQuery,
    ) -> BoxFuture<'a, Result<Vec<crate::store::EventLocation>>> {
        let _ = query;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// When any process last committed for `perspective` (an apply, a
    /// failure, a recovery), as the store recorded it, for
    /// [`PerspectiveStatus::last_sync`](crate::perspective::PerspectiveStatus::last_sync).
    ///
    /// The default answers `None` ("not recorded"): right for a store only
    /// this process commits to (the in-memory one), whose commits the
    /// runtime hears itself. A store shared by several processes should
    /// answer, so that a process that runs no runner still sees when the
    /// others last applied.
    fn last_applied<'a>(
        &'a self,
        perspective: &'a str,
    ) -> BoxFuture<'a, Result<Option<std::time::SystemTime>>> {
        let _ = perspective;
        Box::pin(async { Ok(None) })
    }
}

/// Answers inquiries from an event store and a perspective store: it locates
/// the ids, then reads the perspective's cursor on each event's stream (one
/// read per stream); for a keyed perspective ([`SyncInquiry::keyed`]) it
/// compares the perspective's one cursor with each event's global position.
#[derive(Clone)]
pub struct StoreSyncBackend {
    events: Arc<dyn EventStore>,
    perspectives: Arc<dyn PerspectiveStore>,
}

impl std::fmt::Debug for StoreSyncBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSyncBackend").finish_non_exhaustive()
    }
}

impl StoreSyncBackend {
    /// A backend over these stores.
    #[must_use]
    pub fn new(events: Arc<dyn EventStore>, perspectives: Arc<dyn PerspectiveStore>) -> Self {
        StoreSyncBackend {
            events,
            perspectives,
        }
    }

    async fn answer(&self, inquiry: &SyncInquiry) -> Result<SyncInquiryResult> {
        if inquiry.keyed {
            return self.answer_keyed(inquiry).await;
        }
        let located = self.events.locate(&inquiry.event_ids).await?;
        let by_id: HashMap<EventId, &crate::store::EventLocation> =
            located.iter().map(|l| (l.event_id, l)).collect();
        let mut cursors: HashMap<StreamId, crate::store::Checkpoint> = HashMap::new();
        let mut statuses = Vec::with_capacity(inquiry.event_ids.len());
        for id in &inquiry.event_ids {
            let status = match by_id.get(id) {
                None => EventSyncStatus::NotArrived,
                Some(loc) if !inquiry.handled.contains(&&*loc.event_type) => {
                    EventSyncStatus::NotApplicable
                }
                Some(loc) => {
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        cursors.entry(loc.stream_id)
                    {
                        slot.insert(
                            self.perspectives
                                .checkpoint(inquiry.perspective, loc.stream_id)
                                .await?,
                        );
                    }
                    let cp = &cursors[&loc.stream_id];
                    match &cp.failure {
                        Some(f) if f.version <= loc.stream_version => EventSyncStatus::Failed {
                            stream: loc.stream_id,
                            version: f.version,
                            message: f.message.clone(),
                        },
                        _ if cp.version >= loc.stream_version => EventSyncStatus::Applied,
                        _ => EventSyncStatus::Pending {
                            stream: loc.stream_id,
                            version: loc.stream_version,
                        },
                    }
                }
            };
            statuses.push((*id, status));
        }
        Ok(SyncInquiryResult {
            perspective: inquiry.perspective,
            expected_ids: inquiry.event_ids.clone(),
            statuses,
        })
    }
}

/// The status of one awaited event for a keyed perspective, whose one
/// cursor is `cursor`: applied when the cursor has reached the event's
/// global `position` (skipped events count), failed when the cursor failed
/// at or before it, pending when it is stored but not reached (also when the
/// store has not given it a global position yet), not arrived when the
/// store does not hold it (`location` is `None`), not applicable when the
/// perspective does not handle its type. Every backend answers keyed
/// inquiries with it.
#[must_use]
pub fn keyed_status(
    handled: &[&str],
    location: Option<&crate::store::EventLocation>,
    position: Option<u64>,
    cursor: &crate::store::Checkpoint,
) -> EventSyncStatus {
    let Some(loc) = location else {
        return EventSyncStatus::NotArrived;
    };
    if !handled.contains(&&*loc.event_type) {
        return EventSyncStatus::NotApplicable;
    }
    let pending = EventSyncStatus::Pending {
        stream: loc.stream_id,
        version: loc.stream_version,
    };
    let Some(position) = position else {
        return pending;
    };
    match &cursor.failure {
        Some(f) if f.version <= position => EventSyncStatus::Failed {
            stream: loc.stream_id,
            version: f.version,
            message: f.message.clone(),
        },
        _ if cursor.version >= position => EventSyncStatus::Applied,
        _ => pending,
    }
}

impl StoreSyncBackend {
    /// The answer for a keyed perspective: an event is applied when the
    /// perspective's cursor has passed its global position (skipped events
    /// count), failed when the cursor failed at or before it.
    async fn answer_keyed(&self, inquiry: &SyncInquiry) -> Result<SyncInquiryResult> {
        let located = self.events.locate(&inquiry.event_ids).await?;
        let positions: HashMap<EventId, u64> = self
            .events
            .global_positions(&inquiry.event_ids)
            .await?
            .ok_or(crate::Error::KeyedUnsupported {
                perspective: inquiry.perspective,
                missing: "an event store with a global order",
            })?
            .into_iter()
            .collect();
        let cursor = self
            .perspectives
            .checkpoint(inquiry.perspective, crate::perspective::KEYED_CURSOR)
            .await?;
        let by_id: HashMap<EventId, &crate::store::EventLocation> =
            located.iter().map(|l| (l.event_id, l)).collect();
        let statuses = inquiry
            .event_ids
            .iter()
            .map(|id| {
                let status = keyed_status(
                    inquiry.handled,
                    by_id.get(id).copied(),
                    positions.get(id).copied(),
                    &cursor,
                );
                (*id, status)
            })
            .collect();
        Ok(SyncInquiryResult {
            perspective: inquiry.perspective,
            expected_ids: inquiry.event_ids.clone(),
            statuses,
        })
    }
}

impl SyncBackend for StoreSyncBackend {
    fn inquire<'a>(
        &'a self,
        inquiries: &'a [SyncInquiry],
    ) -> BoxFuture<'a, Result<Vec<SyncInquiryResult>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(inquiries.len());
            for q in inquiries {
                out.push(self.answer(q).await?);
            }
            Ok(out)
        })
    }

    /// For a keyed perspective, the handled events after its one cursor in
    /// the event store's global order (read in pages): exact whoever
    /// appended them, which matters most while a strategy holds the
    /// perspective back. For a perspective keyed by stream, nothing beyond
    /// what the process tracks (the trait's default).
    fn unapplied<'a>(
        &'a self,
        query: &'a UnappliedQuery,
    ) -> BoxFuture<'a, Result<Vec<crate::store::EventLocation>>> {
        Box::pin(async move {
            if !query.keyed || query.handled.is_empty() {
                return Ok(Vec::new());
            }
            let cursor = self
                .perspectives
                .checkpoint(query.perspective, crate::perspective::KEYED_CURSOR)
                .await?;
            let mut after = cursor.version;
            let mut out = Vec::new();
            loop {
                let page = self
                    .events
                    .read_global(after, UNAPPLIED_PAGE)
                    .await?
                    .ok_or(crate::Error::KeyedUnsupported {
                        perspective: query.perspective,
                        missing: "an event store with a global order",
                    })?;
                let Some(last) = page.last() else {
                    return Ok(out);
                };
                after = last.position;
                out.extend(
                    page.iter()
                        .filter(|e| query.handled.contains(&&*e.event_type))
                        .map(|e| crate::store::EventLocation {
                            event_id: e.event_id,
                            stream_id: e.stream_id,
                            stream_version: e.stream_version,
                            event_type: e.event_type.clone(),
                        }),
                );
                if page.len() < UNAPPLIED_PAGE {
                    return Ok(out);
                }
            }
        })
    }
}

/// Events read per page of the global order when listing a keyed
/// perspective's unapplied events.
const UNAPPLIED_PAGE: usize = 4096;

//! [`Runtime::perspective_status`]: where each perspective stands. The lag
//! is read from the stores (the sync backend's unapplied events plus those
//! this process tracks), so it counts events other processes appended too.

use super::Runtime;
use crate::error::Result;
use crate::message::{EventId, StreamId};
use crate::perspective::{Perspective, PerspectiveRegistration, PerspectiveStatus, KEYED_CURSOR};
use crate::sync::{EventSyncStatus, SyncInquiry, UnappliedQuery};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

impl Runtime {
    /// Where perspective `P` stands: strategy, last sync in this process,
    /// lag in events and in time behind the head, failed cursors.
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use whizbang_core::{perspective, Event, Runtime};
    /// # #[derive(Event, Serialize, Deserialize)]
    /// # struct Deposited { #[stream_key] account: uuid::Uuid }
    /// # #[derive(Default, Clone, Serialize, Deserialize)] struct Count { n: u32 }
    /// struct Hourly;
    /// #[perspective(model = Count, strategy = scheduled("1h"))]
    /// impl Hourly { fn deposited(c: &mut Count, _: &Deposited) { c.n += 1; } }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
    /// let runtime = Runtime::in_memory()?;
    /// let scope = runtime.scope();
    /// scope.publish(Deposited { account: uuid::Uuid::now_v7() }).await?;
    /// scope.complete().await?;
    /// let status = runtime.perspective_status::<Hourly>().await?;
    /// assert_eq!(status.strategy, "scheduled(1h)");
    /// assert_eq!(status.lag_events, 1); // held for the next hourly run
    /// assert_eq!(status.last_sync, None);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownPerspective`](crate::Error::UnknownPerspective) when
    /// `P` is not registered; backend errors.
    pub async fn perspective_status<P: Perspective>(&self) -> Result<PerspectiveStatus> {
        let reg = self.inner.registry.perspective::<P>()?;
        self.status_of(reg).await
    }

    /// [`perspective_status`](Self::perspective_status) of every registered
    /// perspective, in registry order.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn perspective_statuses(&self) -> Result<Vec<PerspectiveStatus>> {
        let mut out = Vec::new();
        for reg in self.inner.registry.perspectives() {
            out.push(self.status_of(reg).await?);
        }
        Ok(out)
    }

    pub(crate) async fn perspective_status_of(
        &self,
        reg: &'static PerspectiveRegistration,
    ) -> Result<PerspectiveStatus> {
        self.status_of(reg).await
    }

    async fn status_of(&self, reg: &'static PerspectiveRegistration) -> Result<PerspectiveStatus> {
        let (lag_events, lag, failed_cursors) = if reg.is_keyed() {
            self.keyed_lag(reg).await?
        } else {
            self.stream_lag(reg).await?
        };
        Ok(PerspectiveStatus {
            name: reg.name,
            mode: reg.mode,
            strategy: reg.strategy.describe(),
            last_sync: self
                .inner
                .last_sync
                .get(reg.name)
                .max(self.inner.sync.backend.last_applied(reg.name).await?),
            lag_events,
            lag,
            failed_cursors,
        })
    }

    /// The lag of a keyed perspective: the handled events its one cursor
    /// has not passed (asked of the sync backend, as a wait would), and
    /// whether that cursor failed.
    async fn keyed_lag(
        &self,
        reg: &'static PerspectiveRegistration,
    ) -> Result<(u64, Duration, u64)> {
        let sync = &self.inner.sync;
        let query = UnappliedQuery::new(reg.name, reg.event_types).keyed();
        let mut ids: Vec<EventId> = sync
            .tracker
            .pending_for(reg.name)
            .iter()
            .map(|c| c.event_id)
            .collect();
        ids.extend(
            sync.backend
                .unapplied(&query)
                .await?
                .iter()
                .map(|l| l.event_id),
        );
        ids.sort_unstable();
        ids.dedup();
        let engine = &self.inner.engine;
        let cursor = engine
            .perspectives
            .checkpoint(reg.name, KEYED_CURSOR)
            .await?;
        let failed_cursors = u64::from(cursor.failure.is_some());
        if ids.is_empty() {
            return Ok((0, Duration::ZERO, failed_cursors));
        }
        let inquiry = SyncInquiry {
            perspective: reg.name,
            handled: reg.event_types,
            event_ids: ids,
            keyed: true,
        };
        let answers = sync.backend.inquire(std::slice::from_ref(&inquiry)).await?;
        // Per stream, the first version not applied and the ids to count.
        let mut first: HashMap<StreamId, u64> = HashMap::new();
        let mut behind: HashSet<EventId> = HashSet::new();
        for (id, status) in answers.iter().flat_map(|a| &a.statuses) {
            if let EventSyncStatus::Pending { stream, version }
            | EventSyncStatus::Failed {
                stream, version, ..
            } = status
            {
                behind.insert(*id);
                let at = first.entry(*stream).or_insert(*version);
                *at = (*at).min(*version);
            }
        }
        let mut oldest: Option<SystemTime> = None;
        for (stream, version) in first {
            for ev in engine
                .events
                .read_stream(stream, version.saturating_sub(1))
                .await?
            {
                if behind.contains(&ev.event_id) {
                    let at = ev.metadata.timestamp;
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
            }
        }
        Ok((behind.len() as u64, since(oldest), failed_cursors))
    }

    /// The lag of a perspective keyed by stream: the handled events after
    /// its cursor on each stream with unapplied events, and its failed
    /// cursors among those streams.
    async fn stream_lag(
        &self,
        reg: &'static PerspectiveRegistration,
    ) -> Result<(u64, Duration, u64)> {
        let sync = &self.inner.sync;
        let query = UnappliedQuery::new(reg.name, reg.event_types);
        let mut streams: Vec<StreamId> = Vec::new();
        let mut seen: HashSet<StreamId> = HashSet::new();
        let tracked = sync.tracker.pending_for(reg.name);
        let stored = sync.backend.unapplied(&query).await?;
        let located = tracked
            .iter()
            .map(|c| c.stream_id)
            .chain(stored.iter().map(|l| l.stream_id));
        for stream in located {
            if seen.insert(stream) {
                streams.push(stream);
            }
        }
        let engine = &self.inner.engine;
        let (mut lag_events, mut failed_cursors) = (0u64, 0u64);
        let mut oldest: Option<SystemTime> = None;
        let mut counted: HashSet<EventId> = HashSet::new();
        for stream in streams {
            let cursor = engine.perspectives.checkpoint(reg.name, stream).await?;
            if cursor.failure.is_some() {
                failed_cursors += 1;
            }
            for ev in engine.events.read_stream(stream, cursor.version).await? {
                if reg.handles(&ev.event_type) && counted.insert(ev.event_id) {
                    lag_events += 1;
                    let at = ev.metadata.timestamp;
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
            }
        }
        Ok((lag_events, since(oldest), failed_cursors))
    }
}

/// How long ago `oldest` was (zero when there is none, or it is ahead of
/// this clock).
fn since(oldest: Option<SystemTime>) -> Duration {
    oldest
        .and_then(|o| SystemTime::now().duration_since(o).ok())
        .unwrap_or_default()
}

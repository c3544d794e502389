//! Sync inquiries answered by PostgreSQL in one statement per batch.

use crate::events::{db_error, location, to_u64, LocationRow};
use sqlx::PgPool;
use uuid::Uuid;
use whizbang_core::backend::{
    BoxFuture, EventLocation, EventSyncStatus, SyncBackend, SyncInquiry, SyncInquiryResult,
    UnappliedQuery,
};
use whizbang_core::error::Stored;
use whizbang_core::{Result, StreamId};

/// Answers sync inquiries from `wh_events` and `wh_perspective_cursors`, with
/// the same statuses as [`StoreSyncBackend`](whizbang_core::backend::StoreSyncBackend)
/// over [`PgEventStore`](crate::PgEventStore) and
/// [`PgPerspectiveStore`](crate::PgPerspectiveStore), in one round trip.
/// Cheap to clone (it shares the pool).
///
/// An event is applied when the perspective's cursor on its stream reached its
/// version (skipped events count); it failed when the cursor's failed version
/// is at or before it. Both are read from the cursor row, so applied status
/// needs no per-event record and survives any clean-up.
#[derive(Clone, Debug)]
pub struct PgSyncBackend {
    pool: PgPool,
}

impl PgSyncBackend {
    /// A sync backend over `pool` (migrated with [`migrate`](crate::migrate)).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        PgSyncBackend { pool }
    }
}

/// One asked id as answered: the event's stream, version and type (all
/// `None` when not stored) and the cursor's version, failed version and
/// failure message (`None` without a cursor).
type Answer = (
    Option<Uuid>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

fn status(inquiry: &SyncInquiry, answer: Answer) -> EventSyncStatus {
    let (stream, version, event_type, applied, failed, message) = answer;
    let (Some(stream), Some(version), Some(event_type)) = (stream, version, event_type) else {
        return EventSyncStatus::NotArrived;
    };
    if !inquiry.handled.contains(&event_type.as_str()) {
        return EventSyncStatus::NotApplicable;
    }
    let (stream, version) = (StreamId::from(stream), to_u64(version));
    match (failed.map(to_u64), message) {
        (Some(failed), Some(message)) if failed <= version => EventSyncStatus::Failed {
            stream,
            version: failed,
            message,
        },
        _ if applied.map_or(0, to_u64) >= version => EventSyncStatus::Applied,
        _ => EventSyncStatus::Pending { stream, version },
    }
}

impl SyncBackend for PgSyncBackend {
    /// The latest `updated_at` of the perspective's cursors (every commit
    /// of a cursor sets it, whichever process made it).
    fn last_applied<'a>(
        &'a self,
        perspective: &'a str,
    ) -> BoxFuture<'a, Result<Option<std::time::SystemTime>>> {
        Box::pin(async move {
            let at: Option<f64> = sqlx::query_scalar(
                "select extract(epoch from max(updated_at))::float8
                   from wh_perspective_cursors where perspective = $1",
            )
            .bind(perspective)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error(
                format!("read when perspective `{perspective}` last committed"),
                Stored::Nothing,
            ))?;
            Ok(at
                .filter(|secs| secs.is_finite() && *secs >= 0.0)
                .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs)))
        })
    }

    /// One statement for the whole batch: the asked (perspective, id) pairs
    /// are unnested with their position, left-joined to `wh_events` by
    /// primary key and to the perspective's cursor on the event's stream by
    /// primary key. Whether the perspective handles the type is decided here
    /// from the inquiry.
    fn inquire<'a>(
        &'a self,
        inquiries: &'a [SyncInquiry],
    ) -> BoxFuture<'a, Result<Vec<SyncInquiryResult>>> {
        Box::pin(async move {
            if inquiries.iter().any(|q| q.keyed) {
                // Keyed perspectives answer from their one cursor; the others
                // as below, each in order.
                let mut out = Vec::with_capacity(inquiries.len());
                for q in inquiries {
                    if q.keyed {
                        out.push(crate::keyed::answer(&self.pool, q).await?);
                    } else {
                        out.extend(self.inquire(std::slice::from_ref(q)).await?);
                    }
                }
                return Ok(out);
            }
            let asked: usize = inquiries.iter().map(|q| q.event_ids.len()).sum();
            let mut perspectives = Vec::with_capacity(asked);
            let mut ids = Vec::with_capacity(asked);
            for q in inquiries {
                for id in &q.event_ids {
                    perspectives.push(q.perspective);
                    ids.push(id.as_uuid());
                }
            }
            let mut answers = if asked == 0 {
                Vec::new()
            } else {
                sqlx::query_as::<_, Answer>(
                    "select e.stream_id, e.stream_version, e.event_type,
                            c.version, c.failed_version, c.failure_message
                       from unnest($1::text[], $2::uuid[]) with ordinality as q(perspective, event_id, ord)
                       left join wh_events e on e.event_id = q.event_id
                       left join wh_perspective_cursors c
                              on c.perspective = q.perspective and c.model_key = e.stream_id
                      order by q.ord",
                )
                .bind(&perspectives)
                .bind(&ids)
                .fetch_all(&self.pool)
                .await
                .map_err(db_error(
                    format!(
                        "answer {} sync inquiries about {asked} events",
                        inquiries.len()
                    ),
                    Stored::Nothing,
                ))?
            }
            .into_iter();
            Ok(inquiries
                .iter()
                .map(|q| SyncInquiryResult {
                    perspective: q.perspective,
                    expected_ids: q.event_ids.clone(),
                    statuses: q
                        .event_ids
                        .iter()
                        .map(|id| {
                            let answer = answers.next().unwrap_or_default();
                            (*id, status(q, answer))
                        })
                        .collect(),
                })
                .collect())
        })
    }

    /// One statement: the events of the handled types (an index-only scan of
    /// `wh_events_type_idx (event_type, stream_id, stream_version) include
    /// (event_id)` per type) whose version is above the perspective's cursor
    /// on their stream (a primary-key probe of `wh_perspective_cursors` per
    /// stream). Its cost grows with the number of stored events of those
    /// types, applied or not: it runs once when an open-ended wait begins,
    /// not per re-ask.
    fn unapplied<'a>(
        &'a self,
        query: &'a UnappliedQuery,
    ) -> BoxFuture<'a, Result<Vec<EventLocation>>> {
        Box::pin(async move {
            if query.handled.is_empty() {
                return Ok(Vec::new());
            }
            if query.keyed {
                return crate::keyed::unapplied(&self.pool, query).await;
            }
            let rows: Vec<LocationRow> = sqlx::query_as(
                "select e.event_id, e.stream_id, e.stream_version, e.event_type
                   from wh_events e
                   left join wh_perspective_cursors c
                          on c.perspective = $1 and c.model_key = e.stream_id
                  where e.event_type = any($2::text[])
                    and e.stream_version > coalesce(c.version, 0)
                  order by e.stream_id, e.stream_version",
            )
            .bind(query.perspective)
            .bind(query.handled)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error(
                format!(
                    "list the events perspective `{}` has not applied",
                    query.perspective
                ),
                Stored::Nothing,
            ))?;
            Ok(rows.into_iter().map(location).collect())
        })
    }
}

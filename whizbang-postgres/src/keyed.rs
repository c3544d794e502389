//! Keyed (multi-stream) perspectives on PostgreSQL: the global order they
//! consume and the sync answers from their one cursor.
//!
//! The order is `wh_event_order` (migrations 0009 and 0011): the feed's safe order
//! (`(tx_id, global_position)` below the snapshot xmin horizon) numbered
//! without gaps by a sequencer. [`read_global`] numbers what became safe
//! since the last run (under an exclusive lock on the order, so two runs
//! never number the same event; readers never wait) when the numbered
//! events after the cursor do not fill a page, then reads the page by
//! number, once. An event is in the order only once every transaction that could
//! commit an event before it has ended: a cursor on the number never skips
//! one. The events read carry their number as [`StoredEvent::position`].
//! Numbering writes nothing to `wh_events` (no foreign key: its check
//! locked every numbered event row), so it never waits on a writer there.
//!
//! The core engine does the rest: it claims the cursor (the cursor row of
//! [`KEYED_CURSOR`]) and the keys' models in one
//! [`PgPerspectiveStore::claim_many`](crate::PgPerspectiveStore) transaction
//! and commits them together, with the applied NOTIFY of every key written
//! (the cursor's wakes every wait on the perspective in other processes).
//!
//! The horizon is the server's: while a transaction is open anywhere on it,
//! newer events wait to be numbered. The partitioned runner reads held-back
//! partitions again soon and catches the keyed perspective up then (once,
//! for all the streams it found); a process without it applies them at its
//! next local append.

use crate::events::{db_error, decode_event, location, to_u64, EventRow, LocationRow, BACKEND};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;
use whizbang_core::backend::{
    keyed_status, Checkpoint, CheckpointFailure, EventLocation, GlobalPositions, StoredEvent,
    SyncInquiry, SyncInquiryResult, UnappliedQuery,
};
use whizbang_core::error::Stored;
use whizbang_core::perspective::KEYED_CURSOR;
use whizbang_core::{Error, EventId, Result};

/// Events numbered per sequencer run, at most.
const SEQUENCE_CAP: i64 = 10_000;

/// Numbers the events that became safe since the last run, in feed order.
/// The exclusive lock serialises runs; the insert's own statement (after
/// the lock) takes the snapshot whose horizon bounds what it numbers.
const SEQUENCE: &str = "
with last as (
    select feed_seq, tx_id, global_position from wh_event_order
     order by feed_seq desc limit 1
), next as (
    select e.event_id, e.tx_id, e.global_position from wh_events e
     where e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
       and (e.tx_id, e.global_position) >
           (coalesce((select tx_id from last), '0'::xid8),
            coalesce((select global_position from last), 0))
     order by e.tx_id, e.global_position
     limit $1
)
insert into wh_event_order (feed_seq, event_id, tx_id, global_position)
select coalesce((select feed_seq from last), 0)
       + row_number() over (order by tx_id, global_position),
       event_id, tx_id, global_position
  from next";

/// A page of the order after a number.
const READ_ORDERED: &str = "
select o.feed_seq, e.event_id, e.stream_id, e.stream_version, e.event_type,
       e.data::text, e.metadata::text
  from wh_event_order o join wh_events e on e.event_id = o.event_id
 where o.feed_seq > $1
 order by o.feed_seq
 limit $2";

/// Numbers what became safe since the last run; returns how many.
async fn sequence(pool: &PgPool) -> Result<u64> {
    let what = || "number the events that became safe to consume in global order".to_owned();
    let mut tx = pool
        .begin()
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
    sqlx::query("lock table wh_event_order in exclusive mode")
        .execute(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
    let numbered = sqlx::query(SEQUENCE)
        .bind(SEQUENCE_CAP)
        .execute(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?
        .rows_affected();
    tx.commit()
        .await
        .map_err(db_error(what(), Stored::Unknown))?;
    Ok(numbered)
}

async fn read_page<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    after: i64,
    limit: i64,
) -> Result<Vec<Arc<StoredEvent>>> {
    let what = || format!("read events in global order after {after}");
    let rows: Vec<EventRow> = sqlx::query_as(READ_ORDERED)
        .bind(after)
        .bind(limit)
        .fetch_all(exec)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
    rows.into_iter()
        .map(|row| {
            decode_event(row).map(Arc::new).map_err(|source| {
                Error::backend(
                    BACKEND,
                    format!(
                        "{}: a stored event's data or metadata is not what whizbang writes",
                        what()
                    ),
                    Stored::Nothing,
                    source,
                )
            })
        })
        .collect()
}

/// The last number given in the global order (0: none yet).
async fn last_numbered(pool: &PgPool) -> Result<i64> {
    sqlx::query_scalar("select coalesce(max(feed_seq), 0) from wh_event_order")
        .fetch_one(pool)
        .await
        .map_err(db_error(
            "read the last number of the global order".to_owned(),
            Stored::Nothing,
        ))
}

/// Up to `limit` events after number `after` in the global order (see the
/// module docs), numbering newly safe events first when the numbered ones
/// after `after` do not fill the page (so the page is read once).
pub(crate) async fn read_global(
    pool: &PgPool,
    after: u64,
    limit: usize,
) -> Result<Vec<Arc<StoredEvent>>> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    if last_numbered(pool).await?.saturating_sub(after) < limit {
        sequence(pool).await?;
    }
    read_page(pool, after, limit).await
}

/// Every event after number `after` in the global order, read on `conn`
/// inside its transaction (a rebuild's fence): what became safe is numbered
/// first, under the order's exclusive lock, which the transaction keeps.
pub(crate) async fn read_all_after(
    conn: &mut sqlx::PgConnection,
    after: u64,
) -> Result<Vec<Arc<StoredEvent>>> {
    let what = || "number the events that became safe to consume in global order".to_owned();
    sqlx::query("lock table wh_event_order in exclusive mode")
        .execute(&mut *conn)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
    loop {
        let numbered = sqlx::query(SEQUENCE)
            .bind(SEQUENCE_CAP)
            .execute(&mut *conn)
            .await
            .map_err(db_error(what(), Stored::Nothing))?
            .rows_affected();
        if numbered < u64::try_from(SEQUENCE_CAP).unwrap_or(u64::MAX) {
            break;
        }
    }
    let mut at = i64::try_from(after).unwrap_or(i64::MAX);
    let mut events = Vec::new();
    loop {
        let page = read_page(&mut *conn, at, SEQUENCE_CAP).await?;
        let Some(last) = page.last() else { break };
        at = i64::try_from(last.position).unwrap_or(i64::MAX);
        events.extend(page);
    }
    Ok(events)
}

/// The number of each id in the global order; ids stored but not numbered
/// yet (not yet safe) are absent, as are unknown ones.
pub(crate) async fn global_positions(pool: &PgPool, ids: &[EventId]) -> Result<GlobalPositions> {
    let uuids: Vec<Uuid> = ids.iter().map(EventId::as_uuid).collect();
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("select event_id, feed_seq from wh_event_order where event_id = any($1)")
            .bind(&uuids)
            .fetch_all(pool)
            .await
            .map_err(db_error(
                format!("read the global positions of {} events", ids.len()),
                Stored::Nothing,
            ))?;
    Ok(rows
        .into_iter()
        .map(|(id, seq)| (EventId::from(id), to_u64(seq)))
        .collect())
}

/// One row of a keyed answer: the event's location (when stored), its
/// number (when numbered), and the perspective's cursor.
type KeyedRow = (
    Option<Uuid>,
    Option<Uuid>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

/// Answers a keyed inquiry in one statement: each id's location and number
/// with the perspective's one cursor, decided by [`keyed_status`].
pub(crate) async fn answer(pool: &PgPool, inquiry: &SyncInquiry) -> Result<SyncInquiryResult> {
    let uuids: Vec<Uuid> = inquiry.event_ids.iter().map(EventId::as_uuid).collect();
    let rows: Vec<KeyedRow> = sqlx::query_as(
        "select e.event_id, e.stream_id, e.stream_version, e.event_type, o.feed_seq,
                c.version, c.failed_version, c.failure_message
           from unnest($1::uuid[]) with ordinality as q(event_id, ord)
           left join wh_events e on e.event_id = q.event_id
           left join wh_event_order o on o.event_id = q.event_id
           left join wh_perspective_cursors c
                  on c.perspective = $2 and c.model_key = $3
          order by q.ord",
    )
    .bind(&uuids)
    .bind(inquiry.perspective)
    .bind(KEYED_CURSOR.as_uuid())
    .fetch_all(pool)
    .await
    .map_err(db_error(
        format!(
            "ask which of {} events keyed perspective `{}` has applied",
            uuids.len(),
            inquiry.perspective
        ),
        Stored::Nothing,
    ))?;
    let statuses = inquiry
        .event_ids
        .iter()
        .zip(rows)
        .map(
            |(id, (event, stream, version, ty, seq, at, failed, message))| {
                let loc = match (event, stream, version, ty) {
                    (Some(e), Some(s), Some(v), Some(t)) => {
                        Some(location((e, s, v, t) as LocationRow))
                    }
                    _ => None,
                };
                let cursor = Checkpoint {
                    version: at.map_or(0, to_u64),
                    failure: failed.map(|v| CheckpointFailure {
                        version: to_u64(v),
                        message: message.unwrap_or_default(),
                    }),
                    skipped: Vec::new(),
                };
                let status = keyed_status(inquiry.handled, loc.as_ref(), seq.map(to_u64), &cursor);
                (*id, status)
            },
        )
        .collect();
    Ok(SyncInquiryResult {
        perspective: inquiry.perspective,
        expected_ids: inquiry.event_ids.clone(),
        statuses,
    })
}

/// The events of the handled types a keyed perspective has not applied:
/// those numbered after its cursor, and those not numbered yet (after the
/// last numbered event in feed order, an index range scan). Its cost grows
/// with the perspective's backlog, not with the history.
pub(crate) async fn unapplied(pool: &PgPool, query: &UnappliedQuery) -> Result<Vec<EventLocation>> {
    let rows: Vec<LocationRow> = sqlx::query_as(
        "with cursor as (
             select coalesce(max(version), 0) as at from wh_perspective_cursors
              where perspective = $1 and model_key = $3
         ), last as (
             select tx_id, global_position from wh_event_order
              order by feed_seq desc limit 1
         )
         select e.event_id, e.stream_id, e.stream_version, e.event_type
           from wh_event_order o join wh_events e on e.event_id = o.event_id
          where o.feed_seq > (select at from cursor) and e.event_type = any($2::text[])
         union all
         select e.event_id, e.stream_id, e.stream_version, e.event_type
           from wh_events e
          where (e.tx_id, e.global_position) >
                (coalesce((select tx_id from last), '0'::xid8),
                 coalesce((select global_position from last), 0))
            and e.event_type = any($2::text[])",
    )
    .bind(query.perspective)
    .bind(query.handled)
    .bind(KEYED_CURSOR.as_uuid())
    .fetch_all(pool)
    .await
    .map_err(db_error(
        format!(
            "list the events keyed perspective `{}` has not applied",
            query.perspective
        ),
        Stored::Nothing,
    ))?;
    Ok(rows.into_iter().map(location).collect())
}

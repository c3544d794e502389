//! The event feed of one partition, as one perspective consumes it.
//!
//! The feed is `wh_events` of the partition in `(tx_id, global_position)`
//! order, restricted to transactions older than the server's snapshot xmin
//! (`tx_id < pg_snapshot_xmin(pg_current_snapshot())`): every transaction
//! that could still commit rows has an id at or above that horizon, so no row
//! can ever appear behind a checkpoint in that order (unlike a plain
//! sequence, whose lower values may commit after higher ones). The
//! checkpoint is kept per (perspective, partition) and advanced by a
//! statement fenced on the lease's (owner, fence).

use super::lease::Lease;
use sqlx::PgPool;
use uuid::Uuid;

/// A position in the feed: (transaction id as text, global position). The
/// xid8 travels as text and is compared in SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) tx_id: String,
    pub(crate) global_position: i64,
}

/// One batch read from the feed: the streams to catch up (those with an
/// event the perspective's cursor has not reached), in order of their first
/// such event, and the position of the batch's last event.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) streams: Vec<Uuid>,
    pub(crate) last: Option<Position>,
    /// Events read (the cap reached means more may follow).
    pub(crate) events: usize,
}

/// Reads up to `cap` events of `lease`'s partition after the perspective's
/// checkpoint, of the types it handles, that are safe to consume.
pub(crate) async fn read(
    pool: &PgPool,
    lease: &Lease,
    handled: &[&'static str],
    cap: u32,
) -> Result<Batch, sqlx::Error> {
    // `pending`: the perspective's cursor on the stream has not reached the
    // event (a primary-key probe per row). Streams whose events are all
    // applied already (by the appending process, or an earlier batch) need
    // no catch-up.
    let rows: Vec<(String, i64, Uuid, bool)> = sqlx::query_as(
        "with cp as (
             select tx_id, global_position from wh_feed_checkpoints
              where perspective = $1 and partition = $2
         )
         select e.tx_id::text, e.global_position, e.stream_id,
                e.stream_version > coalesce(
                    (select c.version from wh_perspective_cursors c
                      where c.perspective = $1 and c.model_key = e.stream_id), 0)
           from wh_events e
          where e.partition = $2
            and (e.tx_id, e.global_position) >
                (coalesce((select tx_id from cp), '0'::xid8),
                 coalesce((select global_position from cp), 0))
            and e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
            and e.event_type = any($3)
          order by e.tx_id, e.global_position
          limit $4",
    )
    .bind(lease.perspective)
    .bind(lease.partition)
    .bind(handled)
    .bind(i64::from(cap))
    .fetch_all(pool)
    .await?;
    let mut batch = Batch {
        events: rows.len(),
        ..Batch::default()
    };
    for (tx_id, global_position, stream, pending) in rows {
        if pending && !batch.streams.contains(&stream) {
            batch.streams.push(stream);
        }
        batch.last = Some(Position {
            tx_id,
            global_position,
        });
    }
    Ok(batch)
}

/// Moves `perspective`'s checkpoint on `partition` forward to `to`, only
/// while `owner` holds the lease at `fence` and it has not expired. Returns
/// whether it moved: `false` when the lease was lost (a zombie's late
/// checkpoint changes nothing) or the checkpoint is already at or past `to`.
pub(crate) async fn advance(
    pool: &PgPool,
    perspective: &str,
    partition: i16,
    owner: Uuid,
    fence: i64,
    to: &Position,
) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query(
        "insert into wh_feed_checkpoints (perspective, partition, tx_id, global_position)
         select $1, $2, $3::text::xid8, $4
           from wh_partition_leases l
          where l.perspective = $1 and l.partition = $2
            and l.owner = $5 and l.fence = $6 and l.expires_at > now()
         on conflict (perspective, partition) do update
            set tx_id = excluded.tx_id, global_position = excluded.global_position,
                updated_at = now()
          where (wh_feed_checkpoints.tx_id, wh_feed_checkpoints.global_position)
              < (excluded.tx_id, excluded.global_position)",
    )
    .bind(perspective)
    .bind(partition)
    .bind(&to.tx_id)
    .bind(to.global_position)
    .bind(owner)
    .bind(fence)
    .execute(pool)
    .await?;
    Ok(moved.rows_affected() == 1)
}

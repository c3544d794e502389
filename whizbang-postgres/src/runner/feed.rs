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

use sqlx::PgPool;
use std::collections::BTreeMap;
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
    /// Events read that the perspective handles and has not applied.
    pub(crate) pending: usize,
}

/// One batch read from the feed of several partitions, per partition.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    /// Per partition read: its batch.
    pub(crate) batches: BTreeMap<i16, Batch>,
    /// Partitions with committed events the horizon still holds back (a
    /// transaction older than theirs is open): read them again soon.
    pub(crate) held_back: u32,
}

/// One row of the feed read: partition, held back, then the event's
/// transaction, position, stream and whether it names its stream (all
/// `None` on the partition's held-back row).
type FeedRow = (
    i16,
    bool,
    Option<String>,
    Option<i64>,
    Option<Uuid>,
    Option<bool>,
);

/// Reads up to `cap` events of each of `partitions` after the perspective's
/// checkpoint on it that are safe to consume, in one statement (one
/// snapshot, one horizon); the streams named are those with an event of a
/// type the perspective handles that its cursor has not reached.
pub(crate) async fn read_many(
    pool: &PgPool,
    perspective: &str,
    partitions: &[i16],
    handled: &[&'static str],
    cap: u32,
) -> Result<Batches, sqlx::Error> {
    // One ordered scan of `wh_events_feed_idx` per partition, stopping at
    // the cap: a branch per partition (a lateral join over the partitions
    // made the planner read each partition's whole backlog through bitmaps
    // and sort it), all in one statement and so one snapshot: the horizon
    // (`pg_snapshot_xmin`) is the same in every branch. Every event counts
    // towards the cap; only events of handled types name a stream to catch
    // up. One more row per partition says whether committed events sit at or
    // above the horizon (held back by an older open transaction).
    let mut sql = String::new();
    for i in 1..=partitions.len() {
        if i > 1 {
            sql.push_str(" union all ");
        }
        sql.push_str(&format!(
            "(select $2[{i}] as partition, false as held, e.tx_id::text, e.global_position,
                     e.stream_id,
                     e.event_type = any($3) and e.stream_version > coalesce(
                         (select c.version from wh_perspective_cursors c
                           where c.perspective = $1 and c.model_key = e.stream_id), 0)
                from wh_events e
               where e.partition = $2[{i}]
                 and (e.tx_id, e.global_position) >
                     (coalesce((select tx_id from wh_feed_checkpoints
                                 where perspective = $1 and partition = $2[{i}]), '0'::xid8),
                      coalesce((select global_position from wh_feed_checkpoints
                                 where perspective = $1 and partition = $2[{i}]), 0))
                 and e.tx_id < pg_snapshot_xmin(pg_current_snapshot())
               order by e.tx_id, e.global_position
               limit $4)
             union all
             select $2[{i}], exists (select 1 from wh_events h
                                      where h.partition = $2[{i}]
                                        and h.tx_id >= pg_snapshot_xmin(pg_current_snapshot())),
                    null, null, null, null"
        ));
    }
    let rows: Vec<FeedRow> = sqlx::query_as(&sql)
        .bind(perspective)
        .bind(partitions)
        .bind(handled)
        .bind(i64::from(cap))
        .fetch_all(pool)
        .await?;
    let mut out = Batches::default();
    for (partition, held, tx_id, global_position, stream, pending) in rows {
        if held && (0..32).contains(&partition) {
            out.held_back |= 1 << partition;
        }
        let batch = out.batches.entry(partition).or_default();
        let (Some(tx_id), Some(global_position), Some(stream)) = (tx_id, global_position, stream)
        else {
            continue;
        };
        batch.events += 1;
        if pending == Some(true) {
            batch.pending += 1;
            if !batch.streams.contains(&stream) {
                batch.streams.push(stream);
            }
        }
        // The furthest row read (branches of a `union all` are not
        // guaranteed to come back in order).
        let further = batch.last.as_ref().is_none_or(|last| {
            (tx_id.parse::<u64>().unwrap_or(0), global_position)
                > (last.tx_id.parse::<u64>().unwrap_or(0), last.global_position)
        });
        if further {
            batch.last = Some(Position {
                tx_id,
                global_position,
            });
        }
    }
    Ok(out)
}

/// [`advance`] for several partitions of `perspective` in one statement:
/// each `(partition, fence, to)` moves only while `owner` holds that lease
/// at that fence. Returns the partitions whose checkpoint moved.
pub(crate) async fn advance_many(
    pool: &PgPool,
    perspective: &str,
    owner: Uuid,
    moves: &[(i16, i64, &Position)],
) -> Result<Vec<i16>, sqlx::Error> {
    if moves.is_empty() {
        return Ok(Vec::new());
    }
    let partitions: Vec<i16> = moves.iter().map(|m| m.0).collect();
    let fences: Vec<i64> = moves.iter().map(|m| m.1).collect();
    let tx_ids: Vec<&str> = moves.iter().map(|m| m.2.tx_id.as_str()).collect();
    let positions: Vec<i64> = moves.iter().map(|m| m.2.global_position).collect();
    // `synchronous_commit` off for this statement's transaction: a
    // checkpoint lost in a crash only makes the feed read again (the cursors
    // skip what is applied), so its commit need not wait for the flush.
    sqlx::query_scalar(
        "with relaxed as materialized (
             select set_config('synchronous_commit', 'off', true)
         )
         insert into wh_feed_checkpoints (perspective, partition, tx_id, global_position)
         select $1, m.partition, m.tx_id::xid8, m.global_position
           from relaxed,
                unnest($2::int2[], $3::int8[], $4::text[], $5::int8[])
                as m(partition, fence, tx_id, global_position)
           join wh_partition_leases l
             on l.perspective = $1 and l.partition = m.partition
            and l.owner = $6 and l.fence = m.fence and l.expires_at > now()
          order by m.partition
         on conflict (perspective, partition) do update
            set tx_id = excluded.tx_id, global_position = excluded.global_position,
                updated_at = now()
          where (wh_feed_checkpoints.tx_id, wh_feed_checkpoints.global_position)
              < (excluded.tx_id, excluded.global_position)
         returning partition",
    )
    .bind(perspective)
    .bind(&partitions)
    .bind(&fences)
    .bind(&tx_ids)
    .bind(&positions)
    .bind(owner)
    .fetch_all(pool)
    .await
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

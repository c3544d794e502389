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

/// Reads up to `cap` events of each of `partitions` after the perspective's
/// checkpoint on it, of the types it handles, that are safe to consume, in
/// one statement (one snapshot, one horizon).
pub(crate) async fn read_many(
    pool: &PgPool,
    perspective: &str,
    partitions: &[i16],
    handled: &[&'static str],
    cap: u32,
) -> Result<Batches, sqlx::Error> {
    /// One row of the query below, its columns in order.
    type FeedRow = (
        i16,
        bool,
        Option<String>,
        Option<i64>,
        Option<Uuid>,
        Option<bool>,
    );
    // `held`: committed events at or above the horizon (their transaction is
    // newer than one still open): not consumable yet, but there.
    let rows: Vec<FeedRow> = sqlx::query_as(
        "with snap as materialized (
                 select pg_snapshot_xmin(pg_current_snapshot()) as xmin
             ), parts as (
                 select p.partition,
                        coalesce(cp.tx_id, '0'::xid8) as tx_id,
                        coalesce(cp.global_position, 0) as global_position,
                        exists (select 1 from wh_events h, snap
                                 where h.partition = p.partition and h.tx_id >= snap.xmin
                                   and h.event_type = any($3)) as held
                   from unnest($2::int2[]) as p(partition)
                   left join wh_feed_checkpoints cp
                          on cp.perspective = $1 and cp.partition = p.partition
             )
             select parts.partition, parts.held, e.tx_id::text, e.global_position, e.stream_id,
                    e.pending
               from parts
               left join lateral (
                   select e.tx_id, e.global_position, e.stream_id,
                          e.stream_version > coalesce(
                              (select c.version from wh_perspective_cursors c
                                where c.perspective = $1 and c.model_key = e.stream_id), 0)
                              as pending
                     from wh_events e, snap
                    where e.partition = parts.partition
                      and (e.tx_id, e.global_position) > (parts.tx_id, parts.global_position)
                      and e.tx_id < snap.xmin
                      and e.event_type = any($3)
                    order by e.tx_id, e.global_position
                    limit $4
               ) e on true
              order by parts.partition, e.tx_id, e.global_position",
    )
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
        if pending == Some(true) && !batch.streams.contains(&stream) {
            batch.streams.push(stream);
        }
        batch.last = Some(Position {
            tx_id,
            global_position,
        });
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

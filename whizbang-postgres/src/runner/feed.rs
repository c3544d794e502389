//! The event feed of one partition, as one perspective consumes it.
//!
//! The feed is `wh_events` of the partition in `(tx_id, global_position)`
//! order, restricted to transactions older than the server's snapshot xmin
//! (`tx_id < pg_snapshot_xmin(pg_current_snapshot())`): every transaction
//! that could still commit rows has an id at or above that horizon, so no row
//! can ever appear behind a checkpoint in that order (unlike a plain
//! sequence, whose lower values may commit after higher ones). The
//! checkpoint is kept per (perspective, partition) and advanced by a
//! statement fenced on the lease's (owner, fence): one of its own, or one in
//! the transaction of the claim that applied the batch ([`Ride`]).

use sqlx::{PgConnection, PgPool};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// Events of the partition the perspective handles and has not applied
    /// that the horizon held back (committed, not yet safe to consume),
    /// counted up to the read's cap.
    pub(crate) held: usize,
}

/// One batch read from the feed of several partitions, per partition.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    /// Per partition read: its batch.
    pub(crate) batches: BTreeMap<i16, Batch>,
    /// Partitions with committed events the horizon still holds back (a
    /// transaction older than theirs is open): read them again soon.
    pub(crate) held_back: u32,
    /// Some partition held back at least the cap's worth of events: the
    /// [`Batch::held`] counts may fall short.
    pub(crate) held_uncounted: bool,
}

impl Batches {
    /// Pending events read, over every partition.
    pub(crate) fn pending(&self) -> usize {
        self.batches.values().map(|b| b.pending).sum()
    }

    /// Pending events the horizon held back, over every partition.
    pub(crate) fn held(&self) -> usize {
        self.batches.values().map(|b| b.held).sum()
    }
}

/// One row of the feed read: partition, events held back (0 on an event's
/// row), then the event's transaction, position, stream and whether it
/// names its stream (all `None` on the partition's held-back row), and the
/// held-back events that would name their stream (`None` on an event's
/// row).
type FeedRow = (
    i16,
    i64,
    Option<String>,
    Option<i64>,
    Option<Uuid>,
    Option<bool>,
    Option<i64>,
);

/// Reads up to `cap` events of each of `partitions` after the perspective's
/// checkpoint on it that are safe to consume, in one statement (one
/// snapshot, one horizon); the streams named are those with an event of a
/// type the perspective handles that its cursor has not reached.
/// `count_held`: count the pending events the horizon holds back
/// ([`Batch::held`]); otherwise only whether any event is held back.
pub(crate) async fn read_many(
    pool: &PgPool,
    perspective: &str,
    partitions: &[i16],
    handled: &[&'static str],
    cap: u32,
    count_held: bool,
) -> Result<Batches, sqlx::Error> {
    // One ordered scan of `wh_events_feed_idx` per partition, stopping at
    // the cap: a branch per partition (a lateral join over the partitions
    // made the planner read each partition's whole backlog through bitmaps
    // and sort it), all in one statement and so one snapshot: the horizon
    // (`pg_snapshot_xmin`) is the same in every branch. Every event counts
    // towards the cap; only events of handled types name a stream to catch
    // up. One more row per partition says whether committed events sit at or
    // above the horizon (held back by an older open transaction); with
    // `count_held`, it counts them and those of them that would name their
    // stream, up to the cap: a held-back perspective counts them as pending,
    // so the NOTIFYs it already took in for them need not make it read
    // again.
    let held_row = if count_held {
        "select $2[{i}], count(*), null, null, null, null, count(*) filter (where h.pending)
           from (select h.event_type = any($3) and h.stream_version > coalesce(
                            (select c.version from wh_perspective_cursors c
                              where c.perspective = $1 and c.model_key = h.stream_id), 0)
                        as pending
                   from wh_events h
                  where h.partition = $2[{i}]
                    and h.tx_id >= pg_snapshot_xmin(pg_current_snapshot())
                  limit $4) h"
    } else {
        "select $2[{i}], case when exists (select 1 from wh_events h
                                            where h.partition = $2[{i}]
                                              and h.tx_id >= pg_snapshot_xmin(pg_current_snapshot()))
                              then 1::int8 else 0::int8 end,
                null, null, null, null, null"
    };
    let mut sql = String::new();
    for i in 1..=partitions.len() {
        if i > 1 {
            sql.push_str(" union all ");
        }
        sql.push_str(&format!(
            "(select $2[{i}] as partition, 0::int8 as held, e.tx_id::text, e.global_position,
                     e.stream_id,
                     e.event_type = any($3) and e.stream_version > coalesce(
                         (select c.version from wh_perspective_cursors c
                           where c.perspective = $1 and c.model_key = e.stream_id), 0),
                     null::int8
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
             {}",
            held_row.replace("{i}", &i.to_string())
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
    for (partition, held, tx_id, global_position, stream, pending, held_pending) in rows {
        if held > 0 && (0..32).contains(&partition) {
            out.held_back |= 1 << partition;
        }
        if count_held && held >= i64::from(cap) {
            out.held_uncounted = true;
        }
        let batch = out.batches.entry(partition).or_default();
        if let Some(n) = held_pending {
            batch.held = usize::try_from(n).unwrap_or(0);
        }
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
    // `synchronous_commit` off for this statement's transaction: a
    // checkpoint lost in a crash only makes the feed read again (the cursors
    // skip what is applied), so its commit need not wait for the flush.
    let mut conn = pool.acquire().await?;
    advance_with(&mut conn, ADVANCE_ALONE, perspective, owner, moves).await
}

/// A checkpoint move, fenced on the lease: `$with` goes before the insert,
/// `$from` before the moves in its `from` list. The lease must not have
/// expired by the statement (in a transaction of its own, that is its start;
/// riding another, not the transaction's start).
macro_rules! advance_sql {
    ($with:literal, $from:literal) => {
        concat!(
            $with,
            "insert into wh_feed_checkpoints (perspective, partition, tx_id, global_position)
     select $1, m.partition, m.tx_id::xid8, m.global_position
       from ",
            $from,
            "unnest($2::int2[], $3::int8[], $4::text[], $5::int8[])
            as m(partition, fence, tx_id, global_position)
       join wh_partition_leases l
         on l.perspective = $1 and l.partition = m.partition
        and l.owner = $6 and l.fence = m.fence and l.expires_at > statement_timestamp()
      order by m.partition
     on conflict (perspective, partition) do update
        set tx_id = excluded.tx_id, global_position = excluded.global_position,
            updated_at = now()
      where (wh_feed_checkpoints.tx_id, wh_feed_checkpoints.global_position)
          < (excluded.tx_id, excluded.global_position)
     returning partition"
        )
    };
}

/// The checkpoint move of [`advance_many`] in a transaction of its own
/// (whose commit need not wait for the disk: a lost move is read again).
const ADVANCE_ALONE: &str = advance_sql!(
    "with relaxed as materialized (
         select set_config('synchronous_commit', 'off', true)
     )
     ",
    "relaxed,
            "
);

/// The checkpoint move of a [`Ride`], inside another transaction: that
/// transaction's commit stays as durable as it is.
const ADVANCE_RIDING: &str = advance_sql!("", "");

async fn advance_with(
    conn: &mut PgConnection,
    sql: &'static str,
    perspective: &str,
    owner: Uuid,
    moves: &[(i16, i64, &Position)],
) -> Result<Vec<i16>, sqlx::Error> {
    let partitions: Vec<i16> = moves.iter().map(|m| m.0).collect();
    let fences: Vec<i64> = moves.iter().map(|m| m.1).collect();
    let tx_ids: Vec<&str> = moves.iter().map(|m| m.2.tx_id.as_str()).collect();
    let positions: Vec<i64> = moves.iter().map(|m| m.2.global_position).collect();
    sqlx::query_scalar(sql)
        .bind(perspective)
        .bind(&partitions)
        .bind(&fences)
        .bind(&tx_ids)
        .bind(&positions)
        .bind(owner)
        .fetch_all(conn)
        .await
}

/// A fenced checkpoint move that rides in the transaction of the batch
/// claim the runner is about to commit, so that a run of a held-back
/// perspective is one commit, not two.
///
/// The runner sets one for a run whose streams are caught up by a single
/// claim ([`Ride::scope`] around that catch-up); the perspective store's
/// batch commit of the same perspective ([`Ride::take`]) moves the
/// checkpoint in its transaction, before its commit, and records what moved
/// once the commit succeeded ([`Ride::committed`]). Nothing else changes:
/// the move is fenced on the lease as [`advance_many`] is (a lost lease
/// moves nothing, and the models still commit, fenced on their cursors),
/// and if the commit fails the checkpoint did not move either. When no
/// commit took the ride ([`Ride::moved`] is `None`: nothing to write, a
/// failure, one stream at a time), the runner moves the checkpoint on its
/// own.
#[derive(Debug)]
pub(crate) struct Ride {
    perspective: &'static str,
    owner: Uuid,
    /// `(partition, fence, to)`; taken by the first commit.
    moves: Mutex<Option<Vec<(i16, i64, Position)>>>,
    /// The partitions whose checkpoint moved, once a commit took the ride.
    moved: Mutex<Option<Vec<i16>>>,
}

tokio::task_local! {
    /// The ride of the catch-up running in this task.
    static RIDE: Arc<Ride>;
}

/// The checkpoint move a batch commit took on ([`Ride::take`]).
pub(crate) struct Taken {
    ride: Arc<Ride>,
    moved: Vec<i16>,
}

impl Ride {
    /// A ride for `perspective`'s checkpoint moves, fenced on `owner`'s
    /// leases.
    pub(crate) fn new(
        perspective: &'static str,
        owner: Uuid,
        moves: Vec<(i16, i64, Position)>,
    ) -> Arc<Self> {
        Arc::new(Ride {
            perspective,
            owner,
            moves: Mutex::new(Some(moves)),
            moved: Mutex::new(None),
        })
    }

    /// Runs `work` with `ride` offered to the batch commits it makes.
    pub(crate) async fn scope<F: std::future::Future>(ride: Arc<Ride>, work: F) -> F::Output {
        RIDE.scope(ride, work).await
    }

    /// For a batch commit of `perspective` in `tx`: moves the checkpoint of
    /// the ride the current task offers, if any (and no commit took it
    /// yet), in `tx`. Call [`Ride::committed`] with the result once `tx`
    /// committed.
    pub(crate) async fn take(
        perspective: &str,
        tx: &mut PgConnection,
    ) -> Result<Option<Taken>, sqlx::Error> {
        let Ok(ride) = RIDE.try_with(Arc::clone) else {
            return Ok(None);
        };
        if ride.perspective != perspective {
            return Ok(None);
        }
        let Some(moves) = locked(&ride.moves).take() else {
            return Ok(None);
        };
        let moves: Vec<(i16, i64, &Position)> =
            moves.iter().map(|(p, f, to)| (*p, *f, to)).collect();
        let moved = if moves.is_empty() {
            Vec::new()
        } else {
            advance_with(tx, ADVANCE_RIDING, perspective, ride.owner, &moves).await?
        };
        Ok(Some(Taken { ride, moved }))
    }

    /// The partitions whose checkpoint moved with a committed batch; `None`
    /// when no commit took the ride.
    pub(crate) fn moved(&self) -> Option<Vec<i16>> {
        locked(&self.moved).clone()
    }
}

impl Taken {
    /// The transaction that moved the checkpoint committed.
    pub(crate) fn committed(self) {
        *locked(&self.ride.moved) = Some(self.moved);
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

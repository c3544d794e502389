//! Instances and partition leases: who runs which (perspective, partition).
//!
//! Each runner instance heartbeats its row in `wh_instances` with the
//! perspectives it runs. For each of those perspectives it keeps its fair
//! share of the partitions, `ceil(PARTITIONS / live instances running it)`:
//! it renews what it holds, releases extras (so a newcomer can take them),
//! and takes free or expired leases (a dead instance's) up to its share.
//! Every change of owner bumps the lease's fence. This file holds the SQL;
//! it knows nothing of events or perspectives' code.

use crate::wire::PARTITIONS;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// A lease this instance holds: (perspective, partition) at `fence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Lease {
    pub(crate) perspective: &'static str,
    pub(crate) partition: i16,
    pub(crate) fence: i64,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Registers or heartbeats `me`, forgets instances silent for ten leases,
/// and makes sure every (perspective, partition) lease row exists.
pub(crate) async fn heartbeat(
    pool: &PgPool,
    me: Uuid,
    perspectives: &[&'static str],
    lease: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "with beat as (
             insert into wh_instances (instance_id, perspectives) values ($1, $2)
             on conflict (instance_id) do update
                set heartbeat_at = now(), perspectives = excluded.perspectives
         ), forgotten as (
             delete from wh_instances
              where instance_id <> $1
                and heartbeat_at < now() - make_interval(secs => $4 * 10)
         )
         insert into wh_partition_leases (perspective, partition)
         select p, g::smallint from unnest($2::text[]) p, generate_series(0, $3 - 1) g
         on conflict do nothing",
    )
    .bind(me)
    .bind(perspectives)
    .bind(i32::from(PARTITIONS))
    .bind(secs(lease))
    .execute(pool)
    .await?;
    Ok(())
}

/// Renews every lease `me` holds for another `lease`; returns them (a lease
/// another instance took over is not among them).
pub(crate) async fn renew(
    pool: &PgPool,
    me: Uuid,
    lease: Duration,
    perspectives: &[&'static str],
) -> Result<Vec<Lease>, sqlx::Error> {
    let rows: Vec<(String, i16, i64)> = sqlx::query_as(
        "update wh_partition_leases
            set expires_at = now() + make_interval(secs => $2)
          where owner = $1
         returning perspective, partition, fence",
    )
    .bind(me)
    .bind(secs(lease))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, partition, fence)| {
            // Leases of perspectives this build no longer runs are released below.
            let perspective = perspectives.iter().find(|p| **p == name)?;
            Some(Lease {
                perspective,
                partition,
                fence,
            })
        })
        .collect())
}

/// How many live instances (heartbeat younger than `lease`) run each of
/// `perspectives`.
pub(crate) async fn live_counts(
    pool: &PgPool,
    perspectives: &[&'static str],
    lease: Duration,
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select p, count(*)
           from wh_instances, unnest(perspectives) p
          where heartbeat_at > now() - make_interval(secs => $2)
            and p = any($1)
          group by p",
    )
    .bind(perspectives)
    .bind(secs(lease))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Gives up `partitions` of `perspective` (bumping their fences) so another
/// instance can take them at once.
pub(crate) async fn release(
    pool: &PgPool,
    me: Uuid,
    perspective: &str,
    partitions: &[i16],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update wh_partition_leases
            set owner = null, fence = fence + 1, expires_at = now()
          where owner = $1 and perspective = $2 and partition = any($3)",
    )
    .bind(me)
    .bind(perspective)
    .bind(partitions)
    .execute(pool)
    .await?;
    Ok(())
}

/// Releases every lease `me` holds, except of `perspectives` (pass none to
/// release all), and forgets the instance when releasing all.
pub(crate) async fn release_all(
    pool: &PgPool,
    me: Uuid,
    keep: &[&'static str],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update wh_partition_leases
            set owner = null, fence = fence + 1, expires_at = now()
          where owner = $1 and perspective <> all($2)",
    )
    .bind(me)
    .bind(keep)
    .execute(pool)
    .await?;
    if keep.is_empty() {
        sqlx::query("delete from wh_instances where instance_id = $1")
            .bind(me)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Takes up to `wanted` free or expired leases of `perspective` (bumping
/// their fences). Rows another instance is taking right now are skipped.
pub(crate) async fn acquire(
    pool: &PgPool,
    me: Uuid,
    perspective: &'static str,
    wanted: usize,
    lease: Duration,
) -> Result<Vec<Lease>, sqlx::Error> {
    let rows: Vec<(i16, i64, Option<Uuid>)> = sqlx::query_as(
        "with free as (
             select perspective, partition, owner
               from wh_partition_leases
              where perspective = $1 and (owner is null or expires_at <= now())
              order by partition
              limit $3
                for update skip locked
         )
         update wh_partition_leases l
            set owner = $2, fence = l.fence + 1,
                expires_at = now() + make_interval(secs => $4)
           from free
          where l.perspective = free.perspective and l.partition = free.partition
         returning l.partition, l.fence, free.owner",
    )
    .bind(perspective)
    .bind(me)
    .bind(i64::try_from(wanted).unwrap_or(i64::MAX))
    .bind(secs(lease))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(partition, fence, previous)| {
            match previous {
                Some(previous) if previous != me => tracing::info!(
                    perspective, partition, fence, %previous,
                    "took over an expired partition lease"
                ),
                _ => tracing::info!(perspective, partition, fence, "leased a partition"),
            }
            Lease {
                perspective,
                partition,
                fence,
            }
        })
        .collect())
}

/// An instance's fair share of the partitions when `live` instances run a
/// perspective: `ceil(PARTITIONS / live)`.
pub(crate) fn fair_share(live: i64) -> usize {
    let live = usize::try_from(live.max(1)).unwrap_or(1);
    usize::try_from(PARTITIONS).unwrap_or(16).div_ceil(live)
}

#[cfg(test)]
mod tests {
    use super::fair_share;

    #[test]
    fn fair_share_covers_every_partition() {
        assert_eq!(fair_share(0), 16);
        assert_eq!(fair_share(1), 16);
        assert_eq!(fair_share(2), 8);
        assert_eq!(fair_share(3), 6);
        assert_eq!(fair_share(16), 1);
        assert_eq!(fair_share(40), 1);
    }
}

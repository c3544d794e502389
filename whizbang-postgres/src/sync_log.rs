//! The sync log on PostgreSQL: recent sync runs in `wh_sync_log`
//! (migration `0006`), pruned to a retention on every insert.

use crate::events::db_error;
use sqlx::PgPool;
use std::time::{Duration, SystemTime};
use whizbang_core::backend::{BoxFuture, SyncLog, SyncRun, SyncRunOutcome};
use whizbang_core::error::Stored;
use whizbang_core::{Error, Result};

/// How many runs [`PgSyncLog`] keeps unless told (see
/// [`PostgresOptions::sync_log_keep`](crate::PostgresOptions::sync_log_keep)).
pub const DEFAULT_SYNC_LOG_KEEP: u32 = 1000;

/// A [`SyncLog`] writing `wh_sync_log`: keeps the last `keep` runs and, when
/// set, none older than `max_age`. The backend installs one; a service that
/// uses the stores alone can too
/// ([`RuntimeBuilder::sync_log`](whizbang_core::RuntimeBuilder::sync_log)).
#[derive(Clone, Debug)]
pub struct PgSyncLog {
    pool: PgPool,
    keep: u32,
    max_age: Option<Duration>,
}

impl PgSyncLog {
    /// A log over `pool` keeping the last `keep` runs (at least 1), and
    /// none older than `max_age` when given.
    #[must_use]
    pub fn new(pool: PgPool, keep: u32, max_age: Option<Duration>) -> Self {
        PgSyncLog {
            pool,
            keep: keep.max(1),
            max_age,
        }
    }
}

/// A `wh_sync_log` row as read.
type SyncLogRow = (
    String,
    String,
    String,
    SystemTimeUs,
    i64,
    i64,
    i64,
    i64,
    String,
    Option<String>,
);

/// `started_at` as microseconds since the epoch (no chrono/time feature).
type SystemTimeUs = i64;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn decode(row: SyncLogRow) -> Result<SyncRun> {
    let (
        perspective,
        mode,
        target,
        started_us,
        duration_us,
        applied,
        skipped,
        failed,
        outcome,
        error,
    ) = row;
    let started_at = SystemTime::UNIX_EPOCH + Duration::from_micros(unsigned(started_us));
    let duration = Duration::from_micros(unsigned(duration_us));
    let outcome = SyncRunOutcome::from_name(&outcome).ok_or_else(|| {
        Error::Invariant(format!(
            "wh_sync_log holds an outcome `{outcome}` this version does not know \
             (succeeded, partially_failed, failed)"
        ))
    })?;
    let mut run = SyncRun::new(
        perspective,
        mode,
        target,
        started_at,
        duration,
        (unsigned(applied), unsigned(skipped), unsigned(failed)),
    );
    run.outcome = outcome;
    run.error = error;
    Ok(run)
}

impl SyncLog for PgSyncLog {
    fn record<'a>(&'a self, run: &'a SyncRun) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let started_us = run
                .started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, micros);
            let max_age_us = self.max_age.map(micros);
            // One statement: the insert, then the prune (rows past the
            // newest `keep`, and rows older than the max age), on the
            // primary key. The insert is not visible to the prune's
            // snapshot: it keeps `keep - 1` of the rows before it.
            sqlx::query(
                "with added as (
                     insert into wh_sync_log (perspective, mode, target, started_at, duration_us,
                                              applied, skipped, failed, outcome, error)
                     values ($1, $2, $3, to_timestamp(0) + $4::int8 * interval '1 microsecond',
                             $5, $6, $7, $8, $9, $10)
                     returning id
                 )
                 delete from wh_sync_log
                  where $11 <= 1
                     or id < (select id from wh_sync_log order by id desc
                               offset greatest($11 - 2, 0) limit 1)
                     or ($12::int8 is not null
                         and started_at < now() - $12::int8 * interval '1 microsecond')",
            )
            .bind(&run.perspective)
            .bind(&run.mode)
            .bind(&run.target)
            .bind(started_us)
            .bind(micros(run.duration))
            .bind(count(run.applied))
            .bind(count(run.skipped))
            .bind(count(run.failed))
            .bind(run.outcome.as_str())
            .bind(run.error.as_deref())
            .bind(i64::from(self.keep))
            .bind(max_age_us)
            .execute(&self.pool)
            .await
            .map_err(db_error(
                format!("record a sync run of perspective `{}`", run.perspective),
                Stored::Nothing,
            ))?;
            Ok(())
        })
    }

    fn recent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<SyncRun>>> {
        Box::pin(async move {
            let rows: Vec<SyncLogRow> = sqlx::query_as(
                "select perspective, mode, target,
                        (extract(epoch from started_at) * 1e6)::int8, duration_us,
                        applied, skipped, failed, outcome, error
                   from wh_sync_log order by id desc limit $1",
            )
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("read the sync log".to_owned(), Stored::Nothing))?;
            rows.into_iter().map(decode).collect()
        })
    }
}

//! Rebuilds beside live on PostgreSQL ([`RebuildStore`] for
//! [`PgPerspectiveStore`]), on the tables of migration `0008_rebuild.sql`.
//!
//! - The shadow generation is the perspective `<name>~rebuild` in
//!   `wh_perspective_cursors` / `wh_perspective_rows`, written by ordinary
//!   batch claims; its cursors are the rebuild's resume point.
//! - One rebuild per perspective across processes: the process running it
//!   holds a session advisory lock on the perspective's name on a connection
//!   of its own, so a killed process's lock goes with its session and another
//!   process (or a restart) takes the rebuild over at once.
//! - Progress: `wh_rebuilds`, one row per perspective.
//! - The fence: a transaction holding `wh_perspective_cursors` in `share row
//!   exclusive` mode. Every apply (a unit, a batch, an inline append) writes
//!   its cursor, so none commits while it is held, and readers (plain
//!   selects) are not blocked. The swap runs in that transaction: the last
//!   shadow writes, the live rows and cursors replaced by the shadow's, the
//!   version recorded, the applied NOTIFYs of the cursors it moved, one
//!   commit.

use crate::events::{db_error, to_i64, to_u64};
use crate::perspectives::PgPerspectiveStore;
use crate::wire;
use serde_json::value::RawValue;
use sqlx::{Connection as _, PgConnection, PgPool, Postgres, Transaction};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::backend::{
    BoxFuture, Checkpoint, ClaimedModel, ModelKey, ModelValue, ModelWrite, StoredEvent,
};
use whizbang_core::error::Stored;
use whizbang_core::perspective::rebuild::{
    KeyedBehind, RebuildFence, RebuildPhase, RebuildProgress, RebuildStart, RebuildStore,
};
use whizbang_core::perspective::KEYED_CURSOR;
use whizbang_core::{Error, Result};

/// The connections holding a rebuild's advisory lock, per perspective.
#[derive(Clone, Default)]
pub(crate) struct RebuildLocks(Arc<tokio::sync::Mutex<HashMap<&'static str, PgConnection>>>);

impl std::fmt::Debug for RebuildLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RebuildLocks(..)")
    }
}

impl RebuildLocks {
    /// Ends the session holding `live`'s lock (which releases it).
    async fn release(&self, live: &str) {
        let conn = self.0.lock().await.remove(live);
        if let Some(conn) = conn {
            if let Err(e) = conn.close().await {
                tracing::debug!(error = %e, "closing a rebuild's lock connection");
            }
        }
    }
}

/// The advisory lock key of `live`'s rebuild (two int4 keys).
const LOCK_SQL: &str = "select pg_try_advisory_lock(hashtext('wh_rebuild'), hashtext($1))";

type ProgressRow = (
    String,
    i32,
    String,
    i64,
    i64,
    f64,
    Option<i64>,
    i64,
    Option<String>,
);

fn decode_progress(row: ProgressRow) -> RebuildProgress {
    let (perspective, version, phase, done, total, rate, eta_ms, resumed_from, error) = row;
    let mut p = RebuildProgress::new(
        perspective,
        u32::try_from(version).unwrap_or(1),
        RebuildPhase::parse(&phase).unwrap_or_default(),
    );
    p.done = to_u64(done);
    p.total = to_u64(total);
    p.rate = rate;
    p.eta = eta_ms.map(|ms| Duration::from_millis(to_u64(ms)));
    p.resumed_from = to_u64(resumed_from);
    p.error = error;
    p
}

/// Reads `live`'s rebuild progress from `wh_rebuilds` (also for the command line).
pub(crate) async fn read_progress(pool: &PgPool, live: &str) -> Result<Option<RebuildProgress>> {
    let row: Option<ProgressRow> = sqlx::query_as(
        "select perspective, version, phase, done, total, rate, eta_ms, resumed_from, error
           from wh_rebuilds where perspective = $1",
    )
    .bind(live)
    .fetch_optional(pool)
    .await
    .map_err(db_error(
        format!("read the rebuild progress of perspective `{live}`"),
        Stored::Nothing,
    ))?;
    Ok(row.map(decode_progress))
}

fn eta_ms(p: &RebuildProgress) -> Option<i64> {
    p.eta
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

struct PgFence {
    tx: Transaction<'static, Postgres>,
    channel: String,
    locks: RebuildLocks,
}

impl PgFence {
    async fn swap_now(
        mut self,
        live: &'static str,
        shadow: &'static str,
        writes: Vec<ModelWrite>,
        version: u32,
    ) -> Result<Vec<(ModelKey, u64)>> {
        let what = || format!("swap the rebuilt models of perspective `{live}` in");
        let mut keys = Vec::with_capacity(writes.len());
        let mut versions = Vec::with_capacity(writes.len());
        let mut models: Vec<Option<String>> = Vec::with_capacity(writes.len());
        for w in &writes {
            keys.push(w.key.as_uuid());
            versions.push(to_i64(w.checkpoint.version, "cursor version")?);
            models.push(
                w.model
                    .as_ref()
                    .map(ModelValue::to_json)
                    .transpose()
                    .map_err(|source| Error::Serialization {
                        type_name: "read model",
                        source,
                    })?
                    .map(|j| j.get().to_owned()),
            );
        }
        let tx = &mut *self.tx;
        // The last events, folded while fenced, into the shadow.
        sqlx::query(
            "with w as (select * from unnest($2::uuid[], $3::int8[], $4::text[]) as w(k, v, d)),
             cursors as (
                 insert into wh_perspective_cursors as c (perspective, model_key, version)
                 select $1, k, v from w
                 on conflict (perspective, model_key) do update
                    set version = excluded.version, failed_version = null,
                        failure_message = null, attempts = 0, updated_at = now()
             ), kept as (
                 update wh_perspective_rows r set version = w.v, updated_at = now()
                   from w
                  where r.perspective = $1 and r.model_key = w.k and w.d is null
             )
             insert into wh_perspective_rows (perspective, model_key, version, data)
             select $1, k, v, d::jsonb from w where d is not null
             on conflict (perspective, model_key) do update
                set version = excluded.version, data = excluded.data, updated_at = now()",
        )
        .bind(shadow)
        .bind(&keys)
        .bind(&versions)
        .bind(&models)
        .execute(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        // The cursors the swap moves ahead (their waiters are woken).
        let moved: Vec<(Uuid, i64)> = sqlx::query_as(
            "select s.model_key, s.version
               from wh_perspective_cursors s
               left join wh_perspective_cursors l
                 on l.perspective = $1 and l.model_key = s.model_key
              where s.perspective = $2 and s.version > coalesce(l.version, 0)",
        )
        .bind(live)
        .bind(shadow)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        let moved: Vec<(ModelKey, u64)> = moved
            .into_iter()
            .map(|(k, v)| (ModelKey::from(k), to_u64(v)))
            .collect();
        let payloads = wire::encode_applied_many(live, &moved);
        let version = i32::try_from(version).unwrap_or(i32::MAX);
        sqlx::query(
            "with gone_rows as (
                 delete from wh_perspective_rows where perspective = $1
             )
             delete from wh_perspective_cursors where perspective = $1",
        )
        .bind(live)
        .execute(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        sqlx::query(
            "with rows as (
                 update wh_perspective_rows set perspective = $1 where perspective = $2
             ), cursors as (
                 update wh_perspective_cursors set perspective = $1 where perspective = $2
             ), versions as (
                 insert into wh_perspective_versions (perspective, version) values ($1, $3)
                 on conflict (perspective) do update
                    set version = excluded.version, updated_at = now()
             ), progress as (
                 update wh_rebuilds
                    set phase = 'done', done = greatest(done, total), total = greatest(done, total),
                        eta_ms = 0, error = null, updated_at = now()
                  where perspective = $1
             ), notified as materialized (
                 select pg_notify($4, p) from unnest($5::text[]) p
             )
             select (select count(*) from notified)",
        )
        .bind(live)
        .bind(shadow)
        .bind(version)
        .bind(&self.channel)
        .bind(&payloads)
        .execute(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        self.tx
            .commit()
            .await
            .map_err(db_error(what(), Stored::Unknown))?;
        self.locks.release(live).await;
        Ok(moved)
    }
}

impl PgFence {
    /// See [`RebuildFence::behind`]: three statements in the fence's
    /// transaction (the streams behind, the shadow's models, their events).
    async fn behind_now(
        &mut self,
        shadow: &'static str,
        types: &[&'static str],
    ) -> Result<Vec<ClaimedModel>> {
        let what = || format!("read what the shadow `{shadow}` lacks, fenced");
        let tx = &mut *self.tx;
        let behind: Vec<(Uuid, i64)> = sqlx::query_as(
            "select s.stream_id, coalesce(c.version, 0)
               from (select distinct stream_id from wh_events where event_type = any($2)) e
               join wh_streams s on s.stream_id = e.stream_id
               left join wh_perspective_cursors c
                 on c.perspective = $1 and c.model_key = s.stream_id
              where s.version > coalesce(c.version, 0)
              order by s.stream_id",
        )
        .bind(shadow)
        .bind(types)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        let keys: Vec<Uuid> = behind.iter().map(|(k, _)| *k).collect();
        let after: Vec<i64> = behind.iter().map(|(_, v)| *v).collect();
        let models: Vec<(Uuid, String)> = sqlx::query_as(
            "select model_key, data::text from wh_perspective_rows
              where perspective = $1 and model_key = any($2)",
        )
        .bind(shadow)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        let rows: Vec<crate::events::EventRow> = sqlx::query_as(
            "select e.global_position, e.event_id, e.stream_id, e.stream_version, e.event_type,
                    e.data::text, e.metadata::text
               from unnest($1::uuid[], $2::int8[]) as k(stream_id, after)
               join wh_events e on e.stream_id = k.stream_id and e.stream_version > k.after
              order by e.stream_id, e.stream_version",
        )
        .bind(&keys)
        .bind(&after)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        let mut models: HashMap<Uuid, String> = models.into_iter().collect();
        let mut events: HashMap<Uuid, Vec<Arc<StoredEvent>>> = HashMap::new();
        for row in rows {
            let event = crate::events::decode_event(row)
                .map_err(|e| crate::perspectives::corrupt(what(), e))?;
            events
                .entry(event.stream_id.as_uuid())
                .or_default()
                .push(Arc::new(event));
        }
        behind
            .into_iter()
            .map(|(key, version)| {
                let model = models
                    .remove(&key)
                    .map(RawValue::from_string)
                    .transpose()
                    .map_err(|e| crate::perspectives::corrupt(what(), e))?
                    .map(ModelValue::Json);
                let checkpoint = Checkpoint {
                    version: to_u64(version),
                    ..Checkpoint::default()
                };
                Ok(ClaimedModel::new(
                    ModelKey::from(key),
                    checkpoint,
                    model,
                    Some(events.remove(&key).unwrap_or_default()),
                ))
            })
            .collect()
    }
}

impl RebuildFence for PgFence {
    /// In the fence's transaction: the shadow's cursor, then the order
    /// numbered and read after it (the fence keeps the order's lock).
    fn keyed_behind<'a>(
        &'a mut self,
        shadow: &'static str,
    ) -> BoxFuture<'a, Result<Option<KeyedBehind>>> {
        Box::pin(async move {
            let what = || format!("read the cursor of the shadow `{shadow}`, fenced");
            let row: Option<crate::perspectives::CursorRow> =
                sqlx::query_as(crate::perspectives::SELECT_CURSOR)
                    .bind(shadow)
                    .bind(KEYED_CURSOR.as_uuid())
                    .fetch_optional(&mut *self.tx)
                    .await
                    .map_err(db_error(what(), Stored::Nothing))?;
            let cursor = row
                .map(crate::perspectives::decode_cursor)
                .transpose()
                .map_err(|e| crate::perspectives::corrupt(what(), e))?
                .unwrap_or_default();
            let events = crate::keyed::read_all_after(&mut self.tx, cursor.version).await?;
            Ok(Some((cursor, events)))
        })
    }

    /// One statement in the fence's transaction.
    fn models<'a>(
        &'a mut self,
        shadow: &'static str,
        keys: &'a [ModelKey],
    ) -> BoxFuture<'a, Result<Option<HashMap<ModelKey, ModelValue>>>> {
        Box::pin(async move {
            let what = || format!("read the models of the shadow `{shadow}`, fenced");
            let uuids: Vec<Uuid> = keys.iter().map(|k| k.as_uuid()).collect();
            let rows: Vec<(Uuid, String)> = sqlx::query_as(
                "select model_key, data::text from wh_perspective_rows
                  where perspective = $1 and model_key = any($2)",
            )
            .bind(shadow)
            .bind(&uuids)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_error(what(), Stored::Nothing))?;
            rows.into_iter()
                .map(|(key, data)| {
                    let value = RawValue::from_string(data)
                        .map_err(|e| crate::perspectives::corrupt(what(), e))?;
                    Ok((ModelKey::from(key), ModelValue::Json(value)))
                })
                .collect::<Result<HashMap<_, _>>>()
                .map(Some)
        })
    }

    fn behind<'a>(
        &'a mut self,
        shadow: &'static str,
        event_types: &'a [&'static str],
    ) -> BoxFuture<'a, Result<Option<Vec<ClaimedModel>>>> {
        Box::pin(async move { self.behind_now(shadow, event_types).await.map(Some) })
    }

    fn swap(
        self: Box<Self>,
        live: &'static str,
        shadow: &'static str,
        writes: Vec<ModelWrite>,
        version: u32,
    ) -> BoxFuture<'static, Result<Vec<(ModelKey, u64)>>> {
        Box::pin(self.swap_now(live, shadow, writes, version))
    }
}

impl PgPerspectiveStore {
    async fn begin_now(
        &self,
        live: &'static str,
        shadow: &'static str,
        version: u32,
    ) -> Result<RebuildStart> {
        let what = || format!("start rebuilding perspective `{live}`");
        {
            let mut locks = self.rebuild_locks().0.lock().await;
            if !locks.contains_key(live) {
                let mut conn = self
                    .pool()
                    .acquire()
                    .await
                    .map_err(db_error(what(), Stored::Nothing))?
                    .detach();
                let got: bool = sqlx::query_scalar(LOCK_SQL)
                    .bind(live)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(db_error(what(), Stored::Nothing))?;
                if !got {
                    return Err(Error::InvalidInput(format!(
                        "rebuild perspective `{live}`: another process is rebuilding it (see \
                         `whizbang status` or the table wh_rebuilds); wait for it to finish, \
                         or stop that process and start again (its work is resumed)"
                    )));
                }
                locks.insert(live, conn);
            }
        }
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(db_error(what(), Stored::Nothing))?;
        let row: Option<(i32, String)> = sqlx::query_as(
            "select version, phase from wh_rebuilds where perspective = $1 for update",
        )
        .bind(live)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        let target = i32::try_from(version).unwrap_or(i32::MAX);
        let resume = matches!(&row, Some((v, phase)) if *v == target && phase != "done");
        if !resume {
            sqlx::query(
                "with rows as (delete from wh_perspective_rows where perspective = $1)
                 delete from wh_perspective_cursors where perspective = $1",
            )
            .bind(shadow)
            .execute(&mut *tx)
            .await
            .map_err(db_error(what(), Stored::Nothing))?;
        }
        sqlx::query(
            "insert into wh_rebuilds (perspective, version, phase) values ($1, $2, 'starting')
             on conflict (perspective) do update
                set version = excluded.version, phase = 'starting', done = 0, total = 0,
                    rate = 0, eta_ms = null, resumed_from = 0, error = null,
                    started_at = now(), updated_at = now()",
        )
        .bind(live)
        .bind(target)
        .execute(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        tx.commit()
            .await
            .map_err(db_error(what(), Stored::Unknown))?;
        Ok(if resume {
            RebuildStart::Resume
        } else {
            RebuildStart::Fresh
        })
    }
}

impl RebuildStore for PgPerspectiveStore {
    fn begin<'a>(
        &'a self,
        live: &'static str,
        shadow: &'static str,
        version: u32,
    ) -> BoxFuture<'a, Result<RebuildStart>> {
        Box::pin(self.begin_now(live, shadow, version))
    }

    fn save_progress<'a>(&'a self, progress: &'a RebuildProgress) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "update wh_rebuilds
                    set phase = $2, done = $3, total = $4, rate = $5, eta_ms = $6,
                        resumed_from = $7, error = $8, updated_at = now()
                  where perspective = $1",
            )
            .bind(&progress.perspective)
            .bind(progress.phase.as_str())
            .bind(to_i64(progress.done, "events done")?)
            .bind(to_i64(progress.total, "events in total")?)
            .bind(progress.rate)
            .bind(eta_ms(progress))
            .bind(to_i64(progress.resumed_from, "events resumed from")?)
            .bind(progress.error.as_deref())
            .execute(self.pool())
            .await
            .map_err(db_error(
                format!(
                    "record the rebuild progress of perspective `{}`",
                    progress.perspective
                ),
                Stored::Nothing,
            ))?;
            Ok(())
        })
    }

    fn progress<'a>(&'a self, live: &'a str) -> BoxFuture<'a, Result<Option<RebuildProgress>>> {
        Box::pin(read_progress(self.pool(), live))
    }

    fn abandon<'a>(&'a self, live: &'static str, error: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = sqlx::query(
                "update wh_rebuilds set phase = 'failed', error = $2, updated_at = now()
                  where perspective = $1",
            )
            .bind(live)
            .bind(error)
            .execute(self.pool())
            .await
            .map_err(db_error(
                format!("record the failed rebuild of perspective `{live}`"),
                Stored::Nothing,
            ));
            self.rebuild_locks().release(live).await;
            done.map(|_| ())
        })
    }

    fn fence<'a>(&'a self, live: &'static str) -> BoxFuture<'a, Result<Box<dyn RebuildFence>>> {
        Box::pin(async move {
            let what = || format!("fence the applies of perspective `{live}` for the swap");
            let mut tx = self
                .pool()
                .begin()
                .await
                .map_err(db_error(what(), Stored::Nothing))?;
            sqlx::query("lock table wh_perspective_cursors in share row exclusive mode")
                .execute(&mut *tx)
                .await
                .map_err(db_error(what(), Stored::Nothing))?;
            Ok(Box::new(PgFence {
                tx,
                channel: wire::channel(self.pool(), wire::APPLIED_CHANNEL),
                locks: self.rebuild_locks().clone(),
            }) as Box<dyn RebuildFence>)
        })
    }

    fn built_version<'a>(&'a self, live: &'a str) -> BoxFuture<'a, Result<Option<u32>>> {
        Box::pin(async move {
            let v: Option<i32> = sqlx::query_scalar(
                "select version from wh_perspective_versions where perspective = $1",
            )
            .bind(live)
            .fetch_optional(self.pool())
            .await
            .map_err(db_error(
                format!("read the built version of perspective `{live}`"),
                Stored::Nothing,
            ))?;
            Ok(v.map(|v| u32::try_from(v).unwrap_or(1)))
        })
    }

    fn record_version<'a>(&'a self, live: &'a str, version: u32) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "insert into wh_perspective_versions (perspective, version) values ($1, $2)
                 on conflict (perspective) do nothing",
            )
            .bind(live)
            .bind(i32::try_from(version).unwrap_or(i32::MAX))
            .execute(self.pool())
            .await
            .map_err(db_error(
                format!("record the built version of perspective `{live}`"),
                Stored::Nothing,
            ))?;
            Ok(())
        })
    }
}

/// Stream heads for [`EventStore::stream_heads`](whizbang_core::backend::EventStore::stream_heads),
/// ordered by the position of each stream's first event (one probe of the
/// stream/version index each): the rebuild's chunks take neighbouring
/// streams together, and streams written at the same time share heap
/// pages, so a chunk's read touches fewer pages (a 200-stream chunk of the
/// rebuild bench: 33 ms warm against 74 ms for streams taken in id order).
pub(crate) async fn stream_heads(pool: &PgPool, types: &[&str]) -> Result<Vec<(ModelKey, u64)>> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "select s.stream_id, s.version
           from (select distinct stream_id from wh_events where event_type = any($1)) e
           join wh_streams s on s.stream_id = e.stream_id
          order by (select f.global_position from wh_events f
                     where f.stream_id = s.stream_id
                     order by f.stream_version limit 1),
                   s.stream_id",
    )
    .bind(types)
    .fetch_all(pool)
    .await
    .map_err(db_error(
        format!("list the streams holding events of types {types:?}"),
        Stored::Nothing,
    ))?;
    Ok(rows
        .into_iter()
        .map(|(k, v)| (ModelKey::from(k), to_u64(v)))
        .collect())
}

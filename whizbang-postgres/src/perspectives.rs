//! The perspective store on PostgreSQL: cursors in `wh_perspective_cursors`,
//! read models in `wh_perspective_rows`.

use crate::events::{db_error, to_i64, to_u64, BACKEND};
use crate::runner::feed::Ride;
use crate::wire;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;
use whizbang_core::backend::{
    BoxFuture, Checkpoint, CheckpointFailure, ClaimedModel, ModelFormat, ModelKey, ModelRow,
    ModelValue, ModelWrite, PerspectiveBatch, PerspectiveStore, PerspectiveUnit, SkippedEvent,
    StoredEvent,
};
use whizbang_core::error::Stored;
use whizbang_core::store::{ModelOrder, ModelQuery};
use whizbang_core::{Error, EventId, Result};

/// Read models and cursors on PostgreSQL ([`ModelFormat::Json`]). Cheap to
/// clone (it shares the pool).
///
/// - [`claim`](PerspectiveStore::claim) opens a transaction, makes sure the
///   cursor row exists and locks it (`select .. for update`): a second claim
///   on the same (perspective, key), from this process or another, waits
///   until the first unit commits or is dropped. Dropping a unit rolls its
///   transaction back (also a first claim's new cursor row).
/// - [`commit`](PerspectiveUnit::commit) writes the cursor **fenced** on the
///   version it claimed (`where version = <claimed>`; no row updated is an
///   error and nothing changes), then the model, then one
///   `NOTIFY` on the applied channel, and commits: model, cursor and applied
///   status are one transaction.
/// - Reads never take the lock: they see the last commit.
/// - A unit holds one pooled connection until it commits or is dropped, and
///   applying usually reads events meanwhile: size the pool above the number
///   of units held at once plus the readers, or claims wait for connections.
///
/// # A stopped process holding a claim
/// A unit holds a connection in an open transaction. A process frozen while
/// holding one (SIGSTOP, a breakpoint, a lost network) would block that
/// (perspective, key) for ever, so connect the pool with an
/// `idle_in_transaction_session_timeout` (the runner's `connect` does): the
/// server then ends the frozen session, its row lock is released and
/// another process claims the model; when the frozen process resumes, its
/// commit fails (its transaction is gone) and changes nothing.
#[derive(Clone, Debug)]
pub struct PgPerspectiveStore {
    pool: PgPool,
    /// The connections holding this store's rebuilds' locks (see `rebuild.rs`).
    rebuild_locks: crate::rebuild::RebuildLocks,
}

impl PgPerspectiveStore {
    /// A perspective store over `pool` (migrated with [`migrate`](crate::migrate)).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        PgPerspectiveStore {
            pool,
            rebuild_locks: crate::rebuild::RebuildLocks::default(),
        }
    }

    pub(crate) fn rebuild_locks(&self) -> &crate::rebuild::RebuildLocks {
        &self.rebuild_locks
    }

    /// The pool this store uses.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// One element of `wh_perspective_cursors.skipped`.
#[derive(Serialize, Deserialize)]
struct SkippedDoc {
    version: u64,
    event_id: Uuid,
    reason: String,
    failure: String,
}

/// A cursor row as read: version, failed version, failure message, skipped.
pub(crate) type CursorRow = (i64, Option<i64>, Option<String>, String);

pub(crate) fn decode_cursor(row: CursorRow) -> std::result::Result<Checkpoint, serde_json::Error> {
    let (version, failed_version, message, skipped) = row;
    let skipped: Vec<SkippedDoc> = serde_json::from_str(&skipped)?;
    Ok(Checkpoint {
        version: to_u64(version),
        failure: failed_version
            .zip(message)
            .map(|(version, message)| CheckpointFailure {
                version: to_u64(version),
                message,
            }),
        skipped: skipped
            .into_iter()
            .map(|s| SkippedEvent {
                version: s.version,
                event_id: EventId::from(s.event_id),
                reason: s.reason,
                failure: s.failure,
            })
            .collect(),
    })
}

pub(crate) fn encode_skipped(skipped: &[SkippedEvent]) -> Result<String> {
    let docs: Vec<SkippedDoc> = skipped
        .iter()
        .map(|s| SkippedDoc {
            version: s.version,
            event_id: s.event_id.as_uuid(),
            reason: s.reason.clone(),
            failure: s.failure.clone(),
        })
        .collect();
    serde_json::to_string(&docs).map_err(|source| Error::Serialization {
        type_name: "skipped events of a perspective cursor",
        source,
    })
}

/// A stored value whizbang could not read back.
pub(crate) fn corrupt(operation: String, source: serde_json::Error) -> Error {
    Error::backend(
        BACKEND,
        format!(
            "{operation}: a stored value is not what whizbang writes (was it written by hand?)"
        ),
        Stored::Nothing,
        source,
    )
}

pub(crate) const SELECT_CURSOR: &str =
    "select version, failed_version, failure_message, skipped::text
                               from wh_perspective_cursors
                              where perspective = $1 and model_key = $2";

/// Creates the cursor row or locks the existing one; returns it and whether
/// it was created. No row: another transaction created it after this
/// statement's snapshot (lock it again with a new statement).
const CLAIM_CURSOR: &str = "with created as (
         insert into wh_perspective_cursors (perspective, model_key) values ($1, $2)
         on conflict do nothing
         returning version, failed_version, failure_message, skipped::text, true as created
     ), locked as (
         select version, failed_version, failure_message, skipped::text, false as created
           from wh_perspective_cursors
          where perspective = $1 and model_key = $2
            for update
     )
     select * from created union all select * from locked";

/// The model (on the first row only) and the stream's events after the
/// cursor (none: one row of nulls besides the model).
const CLAIM_READ: &str = "select case when e.n is null or e.n = 1 then
                (select data::text from wh_perspective_rows
                  where perspective = $1 and model_key = $2) end,
            e.global_position, e.event_id, e.stream_id, e.stream_version, e.event_type,
            e.data, e.metadata
       from (select 1) as one
       left join lateral (
           select row_number() over (order by stream_version) as n, global_position,
                  event_id, stream_id, stream_version, event_type, data::text as data,
                  metadata::text as metadata
             from wh_events
            where stream_id = $2 and stream_version > $3
       ) e on true
      order by e.n";

/// One row of [`CLAIM_READ`].
type ClaimRow = (
    Option<String>,
    Option<i64>,
    Option<Uuid>,
    Option<Uuid>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The model and the events of [`CLAIM_READ`]'s rows. Events that do not
/// decode are not handed over (`None`): the runtime then reads the stream
/// itself and reports the stored row as the event store does.
fn decode_claim_read(rows: Vec<ClaimRow>) -> (Option<String>, Option<Vec<Arc<StoredEvent>>>) {
    let mut model = None;
    let mut events = Some(Vec::with_capacity(rows.len()));
    for (i, (m, position, id, stream, version, event_type, data, metadata)) in
        rows.into_iter().enumerate()
    {
        if i == 0 {
            model = m;
        }
        let (
            Some(position),
            Some(id),
            Some(stream),
            Some(version),
            Some(ty),
            Some(data),
            Some(meta),
        ) = (position, id, stream, version, event_type, data, metadata)
        else {
            continue;
        };
        let decoded = crate::events::decode_event((position, id, stream, version, ty, data, meta));
        match (decoded, events.as_mut()) {
            (Ok(event), Some(list)) => list.push(Arc::new(event)),
            _ => events = None,
        }
    }
    (model, events)
}

/// A model row as read: key, version, data.
type ModelRowSql = (Uuid, i64, String);

fn decode_model(row: ModelRowSql) -> std::result::Result<ModelRow, serde_json::Error> {
    let (key, version, data) = row;
    Ok(ModelRow {
        id: ModelKey::from(key),
        version: to_u64(version),
        model: ModelValue::Json(RawValue::from_string(data)?),
    })
}

fn decode_models(rows: Vec<ModelRowSql>, operation: impl Fn() -> String) -> Result<Vec<ModelRow>> {
    rows.into_iter()
        .map(|row| decode_model(row).map_err(|e| corrupt(operation(), e)))
        .collect()
}

struct PgUnit {
    tx: Transaction<'static, Postgres>,
    /// The applied channel of the store's schema.
    channel: String,
    perspective: &'static str,
    key: ModelKey,
    checkpoint: Checkpoint,
    model: Option<Box<RawValue>>,
    /// The stream's events after the checkpoint, read with the claim.
    events: Option<Vec<Arc<StoredEvent>>>,
}

impl PgUnit {
    /// Commits `checkpoint` with `model` (`None`: keep the stored one), or,
    /// when `delete`, deletes the stored model (a tombstone) instead.
    async fn commit_now(
        mut self,
        model: Option<ModelValue>,
        checkpoint: Checkpoint,
        delete: bool,
    ) -> Result<()> {
        let (perspective, key) = (self.perspective, self.key);
        let what = || format!("commit perspective `{perspective}` on model {key}");
        let model =
            model
                .map(|m| m.to_json())
                .transpose()
                .map_err(|source| Error::Serialization {
                    type_name: "read model",
                    source,
                })?;
        let version = to_i64(checkpoint.version, "cursor version")?;
        let claimed = to_i64(self.checkpoint.version, "cursor version")?;
        let failed_version = checkpoint
            .failure
            .as_ref()
            .map(|f| to_i64(f.version, "failed version"))
            .transpose()?;
        // One statement: the fenced cursor update (with the NOTIFY riding
        // on it: once, for the one row, delivered only if the transaction
        // commits), then the model, written only when the fence held. A
        // `None` model keeps the stored one, now reflecting the new version;
        // a deletion removes it (the cursor stays).
        let fenced: i64 = sqlx::query_scalar(
            "with cursor as (
                 update wh_perspective_cursors
                    set version = $3, failed_version = $4, failure_message = $5,
                        skipped = $6::jsonb, updated_at = now(),
                        attempts = case when $4::int8 is null then 0 else attempts + 1 end
                  where perspective = $1 and model_key = $2 and version = $7
                 returning pg_notify($8, $9)
             ), stored as (
                 insert into wh_perspective_rows (perspective, model_key, version, data)
                 select $1, $2, $3, $10::text::jsonb from cursor where $10::text is not null
                 on conflict (perspective, model_key) do update
                    set version = excluded.version, data = excluded.data, updated_at = now()
             ), kept as (
                 update wh_perspective_rows set version = $3, updated_at = now()
                  where perspective = $1 and model_key = $2 and $10::text is null
                    and not $11 and exists (select 1 from cursor)
             ), deleted as (
                 delete from wh_perspective_rows
                  where perspective = $1 and model_key = $2 and $11
                    and exists (select 1 from cursor)
             )
             select count(*) from cursor",
        )
        .bind(perspective)
        .bind(key.as_uuid())
        .bind(version)
        .bind(failed_version)
        .bind(checkpoint.failure.as_ref().map(|f| f.message.as_str()))
        .bind(encode_skipped(&checkpoint.skipped)?)
        .bind(claimed)
        .bind(&self.channel)
        .bind(wire::encode_applied(perspective, key, checkpoint.version))
        .bind(model.as_ref().map(|json| json.get()))
        .bind(delete)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        if fenced != 1 {
            return Err(Error::backend(
                BACKEND,
                what(),
                Stored::Nothing,
                format!(
                    "the cursor is no longer at version {} (the version this unit claimed): \
                     another process moved it on, so this commit was refused. Claim again \
                     and re-apply from the stored cursor",
                    self.checkpoint.version
                ),
            ));
        }
        self.tx
            .commit()
            .await
            .map_err(db_error(what(), Stored::Unknown))
    }
}

impl PerspectiveUnit for PgUnit {
    fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    fn take_model(&mut self) -> Option<ModelValue> {
        // A copy: dropping the unit leaves the stored model as it was.
        self.model.clone().map(ModelValue::Json)
    }

    fn take_events(&mut self) -> Option<Vec<Arc<StoredEvent>>> {
        self.events.take()
    }

    fn commit(
        self: Box<Self>,
        model: Option<ModelValue>,
        checkpoint: Checkpoint,
    ) -> BoxFuture<'static, Result<()>> {
        Box::pin(self.commit_now(model, checkpoint, false))
    }

    fn commit_delete(self: Box<Self>, checkpoint: Checkpoint) -> BoxFuture<'static, Result<()>> {
        Box::pin(self.commit_now(None, checkpoint, true))
    }
}

/// Models of one perspective claimed together: one transaction holding
/// every cursor row's lock until [`PerspectiveBatch::commit`].
struct PgBatch {
    tx: Transaction<'static, Postgres>,
    /// The applied channel of the store's schema.
    channel: String,
    perspective: &'static str,
    claimed: Vec<ClaimedModel>,
    /// Each key's cursor version at claim time (the commit's fence).
    versions: HashMap<ModelKey, u64>,
}

impl PgBatch {
    async fn commit_now(mut self, writes: Vec<ModelWrite>) -> Result<()> {
        let perspective = self.perspective;
        let what = || {
            format!(
                "commit perspective `{perspective}` on {} models",
                writes.len()
            )
        };
        let mut keys = Vec::with_capacity(writes.len());
        let mut claimed = Vec::with_capacity(writes.len());
        let mut versions = Vec::with_capacity(writes.len());
        let mut models: Vec<Option<String>> = Vec::with_capacity(writes.len());
        let mut deletes = Vec::with_capacity(writes.len());
        let mut entries = Vec::with_capacity(writes.len());
        for w in &writes {
            let Some(at) = self.versions.get(&w.key) else {
                return Err(Error::InvalidInput(format!(
                    "{}: model {} was not claimed in this batch; nothing was committed",
                    what(),
                    w.key
                )));
            };
            if w.checkpoint.failure.is_some() {
                return Err(Error::InvalidInput(format!(
                    "{}: a batch cannot record a failure (model {}); nothing was committed",
                    what(),
                    w.key
                )));
            }
            keys.push(w.key.as_uuid());
            claimed.push(to_i64(*at, "cursor version")?);
            versions.push(to_i64(w.checkpoint.version, "cursor version")?);
            let model = w
                .model
                .as_ref()
                .map(ModelValue::to_json)
                .transpose()
                .map_err(|source| Error::Serialization {
                    type_name: "read model",
                    source,
                })?;
            models.push(model.map(|m| m.get().to_owned()));
            deletes.push(w.delete);
            entries.push((w.key, w.checkpoint.version));
        }
        let payloads = wire::encode_applied_many(perspective, &entries);
        // One statement: every cursor fenced on the version it was claimed
        // at (the skipped list and failure columns stay: only models without
        // a failure are in a batch), the models written only where the fence
        // held, and the NOTIFYs (delivered only if the transaction commits).
        //
        // Every step is driven by the batch's keys through the primary keys
        // (`in (select ..)` is planned as the keys, made unique, probing the
        // cursor index; the model writes join the cursors updated), never by
        // a join of the keys with every cursor of the perspective: with no
        // statistics on a young table (a rebuild's shadow, a fresh database)
        // the cached generic plan of such a join was a nested loop over all
        // of the perspective's cursors per key, so a commit took time in the
        // perspective's size. A key's values are read from the arrays by its
        // position.
        let fenced: i64 = sqlx::query_scalar(
            "with cursor as (
                 update wh_perspective_cursors c
                    set version = ($4::int8[])[array_position($2::uuid[], c.model_key)],
                        attempts = 0, updated_at = now()
                  where (c.perspective, c.model_key) in (select $1, k from unnest($2::uuid[]) k)
                    and c.version = ($3::int8[])[array_position($2::uuid[], c.model_key)]
                    and c.failed_version is null
                 returning c.model_key, c.version,
                           ($5::text[])[array_position($2::uuid[], c.model_key)] as data,
                           ($8::bool[])[array_position($2::uuid[], c.model_key)] as deleting
             ), stored as (
                 insert into wh_perspective_rows (perspective, model_key, version, data)
                 select $1, model_key, version, data::jsonb from cursor where data is not null
                 on conflict (perspective, model_key) do update
                    set version = excluded.version, data = excluded.data, updated_at = now()
             ), kept as (
                 update wh_perspective_rows r set version = cursor.version, updated_at = now()
                   from cursor
                  where r.perspective = $1 and r.model_key = cursor.model_key
                    and cursor.data is null and not cursor.deleting
             ), deleted as (
                 delete from wh_perspective_rows r using cursor
                  where r.perspective = $1 and r.model_key = cursor.model_key and cursor.deleting
             ), notified as materialized (
                 select pg_notify($6, p) from unnest($7::text[]) p
             )
             -- Both counted in the select list: a join to an unused aggregate would be
     -- removed by the planner, and an unread CTE never runs its pg_notify.
     select (select count(*) from cursor), (select count(*) from notified)",
        )
        .bind(perspective)
        .bind(&keys)
        .bind(&claimed)
        .bind(&versions)
        .bind(&models)
        .bind(&self.channel)
        .bind(&payloads)
        .bind(&deletes)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        if usize::try_from(fenced).ok() != Some(writes.len()) {
            return Err(Error::backend(
                BACKEND,
                what(),
                Stored::Nothing,
                "a cursor is no longer at the version this batch claimed: another process \
                 moved it on, so the whole commit was refused. Claim again and re-apply from \
                 the stored cursors"
                    .to_owned(),
            ));
        }
        // The partitioned runner's feed checkpoint, when it rides with this
        // commit: one commit for the run.
        let ride = Ride::take(perspective, &mut self.tx)
            .await
            .map_err(db_error(what(), Stored::Nothing))?;
        self.tx
            .commit()
            .await
            .map_err(db_error(what(), Stored::Unknown))?;
        if let Some(ride) = ride {
            ride.committed();
        }
        Ok(())
    }
}

impl PerspectiveBatch for PgBatch {
    fn take_claimed(&mut self) -> Vec<ClaimedModel> {
        std::mem::take(&mut self.claimed)
    }

    fn commit(self: Box<Self>, writes: Vec<ModelWrite>) -> BoxFuture<'static, Result<()>> {
        Box::pin(self.commit_now(writes))
    }
}

/// A cursor row of a batch claim: key, then [`CursorRow`]'s columns.
type KeyedCursorRow = (Uuid, i64, Option<i64>, Option<String>, String);

/// One `wh_events` row of a batch claim, as [`crate::events::EventRow`]
/// with the metadata `None` when it was not read.
type BatchEventRow = (i64, Uuid, Uuid, i64, String, String, Option<String>);

impl PgPerspectiveStore {
    /// A batch claim; `metadata`: whether the events' metadata is read (see
    /// [`PerspectiveStore::claim_many_payloads`]).
    async fn claim_batch(
        &self,
        perspective: &'static str,
        keys: &[ModelKey],
        metadata: bool,
    ) -> Result<Box<dyn PerspectiveBatch>> {
        let what = || format!("claim perspective `{perspective}` on {} models", keys.len());
        // Sorted: every batch locks in key order, so two never deadlock.
        let mut sorted: Vec<Uuid> = keys.iter().map(|k| k.as_uuid()).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db_error(what(), Stored::Nothing))?;
        sqlx::query(
            "insert into wh_perspective_cursors (perspective, model_key)
             select $1, k from unnest($2::uuid[]) k order by k
             on conflict do nothing",
        )
        .bind(perspective)
        .bind(&sorted)
        .execute(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        let cursors: Vec<KeyedCursorRow> = sqlx::query_as(
            "select model_key, version, failed_version, failure_message, skipped::text
               from wh_perspective_cursors
              where perspective = $1 and model_key = any($2)
              order by model_key
                for update",
        )
        .bind(perspective)
        .bind(&sorted)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        // After the locks, in statements of their own (snapshots taken after
        // the locks): the models and the streams' events after the cursors.
        let mut checkpoints = HashMap::with_capacity(cursors.len());
        let mut after_keys = Vec::with_capacity(cursors.len());
        let mut after_versions = Vec::with_capacity(cursors.len());
        for (key, version, failed, message, skipped) in cursors {
            let checkpoint = decode_cursor((version, failed, message, skipped))
                .map_err(|e| corrupt(what(), e))?;
            after_keys.push(key);
            after_versions.push(version);
            checkpoints.insert(key, checkpoint);
        }
        let models: Vec<(Uuid, String)> = sqlx::query_as(
            "select model_key, data::text from wh_perspective_rows
              where perspective = $1 and model_key = any($2)",
        )
        .bind(perspective)
        .bind(&after_keys)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        // One index read per stream (the lateral subquery, kept apart by
        // `offset 0`): joined plainly, a table of a few hundred thousand
        // events got a hash join over a parallel scan of the whole table for
        // every chunk. No `order by`: each stream's events are put in
        // version order below (a sort in the statement spilled to disk for
        // large chunks). Without the metadata, its column is not converted to
        // text and sent (about half the statement's time).
        let events: Vec<BatchEventRow> = sqlx::query_as(if metadata {
            "select e.* from unnest($1::uuid[], $2::int8[]) as k(stream_id, after)
             cross join lateral (
                 select global_position, event_id, stream_id, stream_version, event_type,
                        data::text, metadata::text
                   from wh_events w
                  where w.stream_id = k.stream_id and w.stream_version > k.after
                 offset 0) e"
        } else {
            "select e.* from unnest($1::uuid[], $2::int8[]) as k(stream_id, after)
             cross join lateral (
                 select global_position, event_id, stream_id, stream_version, event_type,
                        data::text, null::text
                   from wh_events w
                  where w.stream_id = k.stream_id and w.stream_version > k.after
                 offset 0) e"
        })
        .bind(&after_keys)
        .bind(&after_versions)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        let mut models: HashMap<Uuid, String> = models.into_iter().collect();
        let mut by_stream: HashMap<Uuid, Option<Vec<Arc<StoredEvent>>>> = HashMap::new();
        for row in events {
            let entry = by_stream.entry(row.2).or_insert_with(|| Some(Vec::new()));
            match (crate::events::decode_event_row(row), entry.as_mut()) {
                (Ok(event), Some(list)) => list.push(Arc::new(event)),
                // Not handed over: the runtime reads the stream itself and
                // reports the stored row as the event store does.
                _ => *entry = None,
            }
        }
        for list in by_stream.values_mut().flatten() {
            // Mostly in order already: a linear pass then.
            list.sort_by_key(|e| e.stream_version);
        }
        let mut claimed = Vec::with_capacity(keys.len());
        let mut versions = HashMap::with_capacity(keys.len());
        for key in keys {
            let uuid = key.as_uuid();
            let Some(checkpoint) = checkpoints.remove(&uuid) else {
                continue;
            };
            let model = models
                .remove(&uuid)
                .map(RawValue::from_string)
                .transpose()
                .map_err(|e| corrupt(what(), e))?
                .map(ModelValue::Json);
            let events = by_stream.remove(&uuid).unwrap_or(Some(Vec::new()));
            versions.insert(*key, checkpoint.version);
            claimed.push(ClaimedModel::new(*key, checkpoint, model, events));
        }
        Ok(Box::new(PgBatch {
            tx,
            channel: wire::channel(&self.pool, wire::APPLIED_CHANNEL),
            perspective,
            claimed,
            versions,
        }))
    }
}

impl PerspectiveStore for PgPerspectiveStore {
    fn model_format(&self) -> ModelFormat {
        ModelFormat::Json
    }

    fn rebuilds(&self) -> Option<&dyn whizbang_core::perspective::rebuild::RebuildStore> {
        Some(self)
    }

    /// One transaction for every model: the missing cursor rows are created,
    /// then every cursor is locked in key order (so two batches never
    /// deadlock), then the models and the streams' events after the cursors
    /// are read; the commit writes everything in one statement.
    fn claim_many<'a>(
        &'a self,
        perspective: &'static str,
        keys: &'a [ModelKey],
    ) -> BoxFuture<'a, Result<Option<Box<dyn PerspectiveBatch>>>> {
        Box::pin(async move { self.claim_batch(perspective, keys, true).await.map(Some) })
    }

    /// [`claim_many`](PerspectiveStore::claim_many) without reading the
    /// events' metadata: the events hand over empty metadata.
    fn claim_many_payloads<'a>(
        &'a self,
        perspective: &'static str,
        keys: &'a [ModelKey],
    ) -> BoxFuture<'a, Result<Option<Box<dyn PerspectiveBatch>>>> {
        Box::pin(async move { self.claim_batch(perspective, keys, false).await.map(Some) })
    }

    fn claim<'a>(
        &'a self,
        perspective: &'static str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Box<dyn PerspectiveUnit>>> {
        Box::pin(async move {
            let what = || format!("claim perspective `{perspective}` on model {key}");
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(db_error(what(), Stored::Nothing))?;
            // Create the cursor row if it is missing, or lock it (waiting for
            // another unit's commit or rollback), in one statement. A row
            // created here is new (no model yet) and locked by our insert.
            let mut cursor: Option<(CursorRow, bool)> = sqlx::query_as(CLAIM_CURSOR)
                .bind(perspective)
                .bind(key.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error(what(), Stored::Nothing))?
                .map(|(v, f, m, s, created)| ((v, f, m, s), created));
            if cursor.is_none() {
                // Another unit created the row after this statement's
                // snapshot was taken: lock it with a fresh snapshot.
                cursor = Some((
                    sqlx::query_as(&format!("{SELECT_CURSOR} for update"))
                        .bind(perspective)
                        .bind(key.as_uuid())
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db_error(what(), Stored::Nothing))?,
                    false,
                ));
            }
            let (cursor, _created) = cursor.unwrap_or_default();
            let checkpoint = decode_cursor(cursor).map_err(|e| corrupt(what(), e))?;
            // Then the model and the stream's events after the cursor, in a
            // statement of its own: its snapshot is taken after the lock, so
            // it sees what the other unit committed. (A join in the locking
            // statement would re-check only the locked row and return the
            // model as it was.)
            let after = to_i64(checkpoint.version, "cursor version")?;
            let rows: Vec<ClaimRow> = sqlx::query_as(CLAIM_READ)
                .bind(perspective)
                .bind(key.as_uuid())
                .bind(after)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error(what(), Stored::Nothing))?;
            let (model, events) = decode_claim_read(rows);
            let model = model
                .map(RawValue::from_string)
                .transpose()
                .map_err(|e| corrupt(what(), e))?;
            Ok(Box::new(PgUnit {
                tx,
                channel: wire::channel(&self.pool, wire::APPLIED_CHANNEL),
                perspective,
                key,
                checkpoint,
                model,
                events,
            }) as Box<dyn PerspectiveUnit>)
        })
    }

    fn checkpoint<'a>(
        &'a self,
        perspective: &'a str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Checkpoint>> {
        Box::pin(async move {
            let what = || format!("read the cursor of perspective `{perspective}` on model {key}");
            let cursor: Option<CursorRow> = sqlx::query_as(SELECT_CURSOR)
                .bind(perspective)
                .bind(key.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error(what(), Stored::Nothing))?;
            cursor
                .map(decode_cursor)
                .transpose()
                .map_err(|e| corrupt(what(), e))
                .map(Option::unwrap_or_default)
        })
    }

    fn load_model<'a>(
        &'a self,
        perspective: &'a str,
        key: ModelKey,
    ) -> BoxFuture<'a, Result<Option<ModelRow>>> {
        Box::pin(async move {
            let what = || format!("read the model of perspective `{perspective}` for {key}");
            let row: Option<ModelRowSql> = sqlx::query_as(
                "select model_key, version, data::text from wh_perspective_rows
                  where perspective = $1 and model_key = $2",
            )
            .bind(perspective)
            .bind(key.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error(what(), Stored::Nothing))?;
            row.map(decode_model)
                .transpose()
                .map_err(|e| corrupt(what(), e))
        })
    }

    fn list_models<'a>(&'a self, perspective: &'a str) -> BoxFuture<'a, Result<Vec<ModelRow>>> {
        self.query_models_sql(perspective, ModelQuery::new())
    }

    fn query_models<'a>(
        &'a self,
        perspective: &'a str,
        query: &'a ModelQuery,
    ) -> BoxFuture<'a, Result<Vec<ModelRow>>> {
        self.query_models_sql(perspective, query.clone())
    }
}

impl PgPerspectiveStore {
    /// [`PerspectiveStore::query_models`] in one statement: the containment
    /// filter is `data @> $2::jsonb` (served by the GIN `jsonb_path_ops`
    /// index `wh_perspective_rows_data_idx`), the order and the page are SQL
    /// too. The statement's text depends only on the query's shape; every
    /// value is a bind parameter.
    fn query_models_sql<'a>(
        &'a self,
        perspective: &'a str,
        query: ModelQuery,
    ) -> BoxFuture<'a, Result<Vec<ModelRow>>> {
        Box::pin(async move {
            let what = || format!("list the models of perspective `{perspective}`");
            let mut sql = String::from(
                "select model_key, version, data::text from wh_perspective_rows
                  where perspective = $1",
            );
            if query.contains.is_some() {
                sql.push_str(" and data @> $2::jsonb");
            }
            sql.push_str(" order by ");
            if let ModelOrder::Path { descending, .. } = &query.order {
                sql.push_str(&order_by_path(*descending));
            }
            sql.push_str("model_key offset $4 limit $5");
            let contains = query.contains.as_ref().map(ToString::to_string);
            let path: Vec<String> = match &query.order {
                ModelOrder::Path { path, .. } => path.clone(),
                _ => Vec::new(),
            };
            let offset = i64::try_from(query.offset).unwrap_or(i64::MAX);
            let limit = query.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
            let rows: Vec<ModelRowSql> = sqlx::query_as(&sql)
                .bind(perspective)
                .bind(contains)
                .bind(path)
                .bind(offset)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(db_error(what(), Stored::Nothing))?;
            decode_models(rows, what)
        })
    }
}

/// The ORDER BY terms for [`ModelOrder::Path`] (bound as `$3::text[]`),
/// ending in a comma: missing values last, then `jsonb`'s order of types,
/// then numbers by value, strings by bytes (collation "C"), booleans.
fn order_by_path(descending: bool) -> String {
    let dir = if descending { "desc" } else { "asc" };
    format!(
        "(data #> $3::text[]) is null, \
         case jsonb_typeof(data #> $3::text[]) when 'null' then 0 when 'string' then 1 \
              when 'number' then 2 when 'boolean' then 3 when 'array' then 4 \
              when 'object' then 5 end {dir} nulls last, \
         case when jsonb_typeof(data #> $3::text[]) = 'number' \
              then (data #>> $3::text[])::numeric end {dir} nulls last, \
         case when jsonb_typeof(data #> $3::text[]) = 'string' \
              then (data #>> $3::text[]) end collate \"C\" {dir} nulls last, \
         case when jsonb_typeof(data #> $3::text[]) = 'boolean' \
              then (data #>> $3::text[])::boolean end {dir} nulls last, "
    )
}

//! Inline perspectives applied inside an append's transaction
//! ([`EventStore::append_inline`](whizbang_core::backend::EventStore::append_inline)).
//!
//! After the append's statement and before its `COMMIT`, in three statements
//! at most on the usual path:
//! 1. create the missing cursor rows and lock every target's cursor
//!    (`for update`, in one order for every append, so two never deadlock),
//!    reading each model with it;
//! 2. only when needed, read again: a model that moved while this append
//!    waited for its cursor's lock (its row's version is not the cursor's),
//!    and the events a lagging cursor has not applied yet (older than this
//!    append);
//! 3. the runtime's fold runs in process ([`InlineApply::apply`]); one
//!    statement writes every cursor (fenced on the version locked, with its
//!    failure record when an event failed), every model, and one `NOTIFY`
//!    on the applied channel (delivered only if the append commits).
//!
//! A claim elsewhere (the runner, a flush, a retry) locks the same cursor
//! row: it waits for this transaction, then finds the cursor moved on, and
//! applies nothing twice; this transaction waits for it in turn, and then
//! reads what it committed (step 2), so nothing is skipped.

use crate::events::{db_error, decode_event, to_i64, to_u64, EventRow, BACKEND};
use crate::perspectives::{corrupt, decode_cursor, encode_skipped};
use crate::wire;
use serde_json::value::RawValue;
use sqlx::PgConnection;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;
use whizbang_core::backend::{
    ClaimedModel, InlineApply, InlineTarget, ModelValue, ModelWrite, StoredEvent,
};
use whizbang_core::error::Stored;
use whizbang_core::{Error, Result, StreamId};

/// Creates the missing cursors (in the targets' order) and locks them all,
/// each with its model as this statement's snapshot saw it. A cursor created
/// by another transaction after the snapshot is in neither part: [`LOCK`]
/// takes it with a fresh one.
const CREATE_AND_LOCK: &str = "with t as (
         select * from unnest($1::text[], $2::uuid[]) with ordinality
                as t(perspective, model_key, ord)
     ), created as (
         insert into wh_perspective_cursors (perspective, model_key)
         select perspective, model_key from t order by ord
         on conflict do nothing
         returning perspective, model_key, version, failed_version, failure_message,
                   skipped::text as skipped
     ), locked as (
         select c.perspective, c.model_key, c.version, c.failed_version, c.failure_message,
                c.skipped::text as skipped, r.version as model_version, r.data::text as data
           from t
           join wh_perspective_cursors c
             on c.perspective = t.perspective and c.model_key = t.model_key
           left join wh_perspective_rows r
             on r.perspective = c.perspective and r.model_key = c.model_key
          order by t.ord
            for update of c
     )
     select perspective, model_key, version, failed_version, failure_message, skipped,
            null::int8, null::text, true from created
     union all
     select perspective, model_key, version, failed_version, failure_message, skipped,
            model_version, data, false from locked";

/// Locks existing cursors (in the targets' order) with their models.
const LOCK: &str = "select c.perspective, c.model_key, c.version, c.failed_version,
            c.failure_message, c.skipped::text, r.version, r.data::text, false
       from unnest($1::text[], $2::uuid[]) with ordinality as t(perspective, model_key, ord)
       join wh_perspective_cursors c
         on c.perspective = t.perspective and c.model_key = t.model_key
       left join wh_perspective_rows r
         on r.perspective = c.perspective and r.model_key = c.model_key
      order by t.ord
        for update of c";

/// Writes every cursor fenced on the version locked, the models where the
/// fence held (deleting those a tombstone deleted), and the applied
/// NOTIFYs; returns how many cursors it wrote.
const WRITE: &str = "with w as (
         select * from unnest($1::text[], $2::uuid[], $3::int8[], $4::int8[], $5::int8[],
                              $6::text[], $7::text[], $8::text[], $11::bool[])
                as w(perspective, model_key, claimed, version, failed_version,
                     failure_message, skipped, data, deleting)
     ), cursor as (
         update wh_perspective_cursors c
            set version = w.version, failed_version = w.failed_version,
                failure_message = w.failure_message, skipped = w.skipped::jsonb,
                updated_at = now(),
                attempts = case when w.failed_version is null then 0 else c.attempts + 1 end
           from w
          where c.perspective = w.perspective and c.model_key = w.model_key
            and c.version = w.claimed
         returning c.perspective, c.model_key
     ), stored as (
         insert into wh_perspective_rows (perspective, model_key, version, data)
         select w.perspective, w.model_key, w.version, w.data::jsonb
           from w join cursor
             on cursor.perspective = w.perspective and cursor.model_key = w.model_key
          where w.data is not null
         on conflict (perspective, model_key) do update
            set version = excluded.version, data = excluded.data, updated_at = now()
     ), kept as (
         update wh_perspective_rows r set version = w.version, updated_at = now()
           from w join cursor
             on cursor.perspective = w.perspective and cursor.model_key = w.model_key
          where r.perspective = w.perspective and r.model_key = w.model_key
            and w.data is null and not w.deleting
     ), deleted as (
         delete from wh_perspective_rows r
          using w join cursor
             on cursor.perspective = w.perspective and cursor.model_key = w.model_key
          where r.perspective = w.perspective and r.model_key = w.model_key and w.deleting
     ), notified as materialized (
         select pg_notify($9, p) from unnest($10::text[]) p
     )
     -- Both counted in the select list: a join to an unused aggregate would be
     -- removed by the planner, and an unread CTE never runs its pg_notify.
     select (select count(*) from cursor), (select count(*) from notified)";

/// A row of [`CREATE_AND_LOCK`] or [`LOCK`]: perspective, key, the cursor's
/// columns, the model's version and data, whether this statement created it.
type LockRow = (
    String,
    Uuid,
    i64,
    Option<i64>,
    Option<String>,
    String,
    Option<i64>,
    Option<String>,
    bool,
);

/// One target under its lock.
struct Locked {
    index: usize,
    row: LockRow,
}

/// Applies `inline`'s targets in the open transaction `conn` of an append
/// that stored `appended`; `before` holds each appended stream's version
/// before the append; the applied NOTIFY goes to `channel` (the applied
/// channel of the store's schema). Returns the targets applied (all of them): the
/// caller commits.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    inline: &dyn InlineApply,
    appended: &[Arc<StoredEvent>],
    before: &HashMap<StreamId, u64>,
    channel: &str,
) -> Result<Vec<usize>> {
    let targets = inline.targets();
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let what = || {
        format!(
            "apply {} inline perspective model(s) in the append's transaction",
            targets.len()
        )
    };
    // One lock order for every append: (perspective, key).
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_key(|&i| (targets[i].perspective, targets[i].key));
    order.dedup_by_key(|i| (targets[*i].perspective, targets[*i].key));
    let names: Vec<&str> = order.iter().map(|&i| targets[i].perspective).collect();
    let keys: Vec<Uuid> = order.iter().map(|&i| targets[i].key.as_uuid()).collect();
    let rows: Vec<LockRow> = sqlx::query_as(CREATE_AND_LOCK)
        .bind(&names)
        .bind(&keys)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
    let mut found: HashMap<(String, Uuid), LockRow> = rows
        .into_iter()
        .map(|row| ((row.0.clone(), row.1), row))
        .collect();
    let missing: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| !found.contains_key(&key_of(&targets[i])))
        .collect();
    if !missing.is_empty() {
        // Created by another transaction after the snapshot: lock them now.
        let names: Vec<&str> = missing.iter().map(|&i| targets[i].perspective).collect();
        let keys: Vec<Uuid> = missing.iter().map(|&i| targets[i].key.as_uuid()).collect();
        let rows: Vec<LockRow> = sqlx::query_as(LOCK)
            .bind(&names)
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error(what(), Stored::Nothing))?;
        found.extend(rows.into_iter().map(|row| ((row.0.clone(), row.1), row)));
    }
    let mut locked = Vec::with_capacity(order.len());
    for &index in &order {
        let Some(row) = found.remove(&key_of(&targets[index])) else {
            return Err(Error::backend(
                BACKEND,
                what(),
                Stored::Nothing,
                format!(
                    "the cursor of perspective `{}` on model {} could not be created or locked",
                    targets[index].perspective, targets[index].key
                ),
            ));
        };
        locked.push(Locked { index, row });
    }
    let mut writes = Writes::default();
    for Locked { index, row } in locked {
        let target = targets[index];
        let (_, _, version, failed, message, skipped, model_version, data, created) = row;
        let checkpoint =
            decode_cursor((version, failed, message, skipped)).map_err(|e| corrupt(what(), e))?;
        if checkpoint.failure.is_some() {
            // Nothing to read: the fold reports the failed cursor.
            let claimed = ClaimedModel::new(target.key, checkpoint, None, Some(Vec::new()));
            if let Some(write) = inline.apply(index, claimed) {
                writes.push(target.perspective, version, write)?;
            }
            continue;
        }
        // The model as of the locked cursor: the one read with the lock,
        // unless the cursor moved while this append waited for it.
        let fresh = created
            || match (&data, model_version) {
                (Some(_), Some(v)) => v == version,
                (None, _) => version == 0,
                (Some(_), None) => false,
            };
        let data = if fresh {
            data
        } else {
            read_model(&mut *conn, target, &what).await?
        };
        let model = data
            .map(RawValue::from_string)
            .transpose()
            .map_err(|e| corrupt(what(), e))?
            .map(ModelValue::Json);
        let at = to_u64(version);
        let prior = before.get(&target.key).copied().unwrap_or_default();
        let lagging = if at < prior {
            read_events(&mut *conn, target.key, at, prior, &what).await?
        } else {
            Some(Vec::new())
        };
        let Some(mut events) = lagging else {
            // A stored event that does not decode: not handed over, so the
            // runtime applies this target later and reports the row as the
            // event store does (this append still commits).
            let claimed = ClaimedModel::new(target.key, checkpoint, model, None);
            if let Some(write) = inline.apply(index, claimed) {
                writes.push(target.perspective, version, write)?;
            }
            continue;
        };
        let mut new: Vec<Arc<StoredEvent>> = appended
            .iter()
            .filter(|e| e.stream_id == target.key && e.stream_version > at)
            .cloned()
            .collect();
        new.sort_by_key(|e| e.stream_version);
        events.extend(new);
        let claimed = ClaimedModel::new(target.key, checkpoint, model, Some(events));
        if let Some(write) = inline.apply(index, claimed) {
            writes.push(target.perspective, version, write)?;
        }
    }
    if !writes.keys.is_empty() {
        let n = writes.keys.len();
        let payloads =
            wire::encode_applied_lines(writes.notify.iter().map(|(p, s, v)| (*p, *s, *v)));
        let written: i64 = sqlx::query_scalar(WRITE)
            .bind(&writes.perspectives)
            .bind(&writes.keys)
            .bind(&writes.claimed)
            .bind(&writes.versions)
            .bind(&writes.failed_versions)
            .bind(&writes.messages)
            .bind(&writes.skipped)
            .bind(&writes.models)
            .bind(channel)
            .bind(&payloads)
            .bind(&writes.deletes)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error(what(), Stored::Nothing))?;
        if usize::try_from(written).ok() != Some(n) {
            return Err(Error::backend(
                BACKEND,
                what(),
                Stored::Nothing,
                "a cursor locked by this append moved on before its write (it should not: \
                 the append holds its lock); nothing was stored. Retry the send"
                    .to_owned(),
            ));
        }
    }
    Ok(order)
}

fn key_of(target: &InlineTarget) -> (String, Uuid) {
    (target.perspective.to_owned(), target.key.as_uuid())
}

/// The columns of [`WRITE`], one array each.
#[derive(Default)]
struct Writes<'a> {
    perspectives: Vec<&'a str>,
    keys: Vec<Uuid>,
    claimed: Vec<i64>,
    versions: Vec<i64>,
    failed_versions: Vec<Option<i64>>,
    messages: Vec<Option<String>>,
    skipped: Vec<String>,
    models: Vec<Option<String>>,
    deletes: Vec<bool>,
    notify: Vec<(&'a str, StreamId, u64)>,
}

impl<'a> Writes<'a> {
    fn push(&mut self, perspective: &'a str, claimed: i64, write: ModelWrite) -> Result<()> {
        let ModelWrite {
            key,
            model,
            checkpoint,
            delete,
            ..
        } = write;
        let model =
            model
                .map(|m| m.to_json())
                .transpose()
                .map_err(|source| Error::Serialization {
                    type_name: "read model",
                    source,
                })?;
        self.perspectives.push(perspective);
        self.keys.push(key.as_uuid());
        self.claimed.push(claimed);
        self.versions
            .push(to_i64(checkpoint.version, "cursor version")?);
        self.failed_versions.push(
            checkpoint
                .failure
                .as_ref()
                .map(|f| to_i64(f.version, "failed version"))
                .transpose()?,
        );
        self.messages
            .push(checkpoint.failure.as_ref().map(|f| f.message.clone()));
        self.skipped.push(encode_skipped(&checkpoint.skipped)?);
        self.models.push(model.map(|m| m.get().to_owned()));
        self.deletes.push(delete);
        self.notify.push((perspective, key, checkpoint.version));
        Ok(())
    }
}

/// The model of `target` with a fresh snapshot (after its lock).
async fn read_model(
    conn: &mut PgConnection,
    target: InlineTarget,
    what: &(dyn Fn() -> String + Sync),
) -> Result<Option<String>> {
    sqlx::query_scalar(
        "select data::text from wh_perspective_rows where perspective = $1 and model_key = $2",
    )
    .bind(target.perspective)
    .bind(target.key.as_uuid())
    .fetch_optional(conn)
    .await
    .map_err(db_error(what(), Stored::Nothing))
}

/// The events of `stream` in (`after`, `upto`]: what a lagging cursor has
/// not applied from before this append. `None` when one does not decode.
async fn read_events(
    conn: &mut PgConnection,
    stream: StreamId,
    after: u64,
    upto: u64,
    what: &(dyn Fn() -> String + Sync),
) -> Result<Option<Vec<Arc<StoredEvent>>>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "select global_position, event_id, stream_id, stream_version, event_type,
                data::text, metadata::text
           from wh_events
          where stream_id = $1 and stream_version > $2 and stream_version <= $3
          order by stream_version",
    )
    .bind(stream.as_uuid())
    .bind(to_i64(after, "cursor version")?)
    .bind(to_i64(upto, "stream version")?)
    .fetch_all(conn)
    .await
    .map_err(db_error(what(), Stored::Nothing))?;
    Ok(rows
        .into_iter()
        .map(|row| decode_event(row).map(Arc::new).ok())
        .collect())
}

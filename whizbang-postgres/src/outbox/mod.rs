//! The outbox on PostgreSQL: `wh_outbox` (migration `0004_outbox.sql`).
//! Rows are written by [`PgEventStore`](crate::PgEventStore)'s append in
//! its own transaction ([`write`]); [`PgOutbox`] leases, marks and fails
//! them for an [`OutboxPublisher`](whizbang_core::outbox::OutboxPublisher).
//! Each operation is one statement (its SQL in `sql/`); user values travel
//! only as bind parameters.

use crate::events::db_error;
use crate::queue::{
    attempt_limit, batch_i64, db_failed, duration_micros, fail_outcome, from_micros, held,
    json_text, lease_rows, to_micros, to_u32, LeasedRow, MessageRow,
};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::backend::{BoxFuture, StreamAppend};
use whizbang_core::error::Stored;
use whizbang_core::outbox::{Outbox, OutboxEntry, OutboxStatus};
use whizbang_core::queue::{limits, DeadLetter, FailOutcome, QueueOptions};
use whizbang_core::{EventId, InstanceId, MessageId, Result, StreamId};

const WRITE: &str = include_str!("sql/write.sql");
const LEASE: &str = include_str!("sql/lease.sql");
const MARK_PUBLISHED: &str = include_str!("sql/mark_published.sql");
const FAIL: &str = include_str!("sql/fail.sql");
const RELEASE: &str = include_str!("sql/release.sql");
const STATUS: &str = include_str!("sql/status.sql");
const DEAD_LETTERS: &str = include_str!("sql/dead_letters.sql");
const PRUNE_PUBLISHED: &str = include_str!("sql/prune_published.sql");

/// The channel an append that wrote outbox rows NOTIFYs (once, at commit);
/// `wh_outbox.<schema>` in a schema of its own.
pub const OUTBOX_CHANNEL: &str = "wh_outbox";

/// Writes the outbox rows of the outbound events of an append
/// ([`NewEvent::outbound`](whizbang_core::backend::NewEvent::outbound)) on
/// `conn`, inside the append's transaction: they commit or roll back with
/// the events. `stored` maps each appended event id to its (version,
/// position). One statement; none when no event is outbound.
///
/// The statement also NOTIFYs the outbox channel of `pool`'s schema
/// ([`OUTBOX_CHANNEL`]), delivered when the append commits, to wake
/// publishers listening with [`PgOutbox::wakeups`].
pub(crate) async fn write(
    conn: &mut PgConnection,
    streams: &[StreamAppend],
    stored: &HashMap<Uuid, (i64, i64)>,
    pool: &PgPool,
) -> Result<()> {
    let outbound = streams
        .iter()
        .flat_map(|s| s.events.iter().map(move |e| (s.stream_id, e)))
        .filter(|(_, e)| e.outbound);
    let mut ids = Vec::new();
    let mut types = Vec::new();
    let mut payloads = Vec::new();
    let mut correlations = Vec::new();
    let mut causations: Vec<Option<Uuid>> = Vec::new();
    let mut headers = Vec::new();
    let mut enqueued = Vec::new();
    let mut stream_ids = Vec::new();
    let mut versions = Vec::new();
    for (stream, e) in outbound {
        let id = e.event_id.as_uuid();
        ids.push(id);
        types.push(e.event_type);
        payloads.push(e.data.get());
        correlations.push(e.metadata.correlation_id.as_uuid());
        causations.push(e.metadata.causation_id.map(|c| c.as_uuid()));
        headers.push(json_text(&e.metadata.extra, MessageId::from(e.event_id))?);
        enqueued.push(to_micros(e.metadata.timestamp));
        stream_ids.push(stream.as_uuid());
        versions.push(stored.get(&id).map_or(0, |(version, _)| *version));
    }
    if ids.is_empty() {
        return Ok(());
    }
    let channel = crate::wire::channel(pool, OUTBOX_CHANNEL);
    sqlx::query(WRITE)
        .bind(&ids)
        .bind(&types)
        .bind(&payloads)
        .bind(&correlations)
        .bind(&causations)
        .bind(&headers)
        .bind(&enqueued)
        .bind(&stream_ids)
        .bind(&versions)
        .bind(&channel)
        .execute(conn)
        .await
        .map_err(db_error(
            format!("write the outbox rows of {} outbound events", ids.len()),
            Stored::Nothing,
        ))?;
    Ok(())
}

/// The [`Outbox`] on PostgreSQL. Cheap to clone (it shares the pool). Get
/// one from [`Postgres::outbox`](crate::Postgres::outbox) or build it over
/// a migrated pool with [`new`](Self::new).
///
/// - [`lease`](Outbox::lease) reads the next pending rows through the
///   partial index `wh_outbox_pending_idx` with `FOR UPDATE SKIP LOCKED`, so
///   concurrent publishers take disjoint batches; a row whose lease expired
///   is taken over (and its old owner's `mark_published` refused).
/// - Lease and backoff times are the database's `now()`.
/// - Published rows stay (status `published`) until
///   [`prune_published`](Self::prune_published) deletes them.
#[derive(Clone, Debug)]
pub struct PgOutbox {
    pool: PgPool,
    options: QueueOptions,
}

#[derive(sqlx::FromRow)]
struct OutboxLeasedRow {
    #[sqlx(flatten)]
    leased: LeasedRow,
    stream_id: Uuid,
    stream_version: i64,
}

#[derive(sqlx::FromRow)]
struct DeadRow {
    #[sqlx(flatten)]
    message: MessageRow,
    error: String,
    dead_us: i64,
}

impl PgOutbox {
    /// An outbox over `pool` (migrated), with the default options (5 attempts).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self::with_options(pool, QueueOptions::default())
    }

    /// An outbox over `pool` with these options. Every publisher sharing
    /// the table should use the same attempt limit.
    #[must_use]
    pub fn with_options(pool: PgPool, options: QueueOptions) -> Self {
        PgOutbox { pool, options }
    }

    /// Wakes `waker` (`notify_one`) whenever an append in this outbox's
    /// schema wrote outbox rows (a NOTIFY on [`OUTBOX_CHANNEL`] at its
    /// commit), and once after each (re)connect: hand it to
    /// [`OutboxPublisher::wake_on`](whizbang_core::outbox::OutboxPublisher::wake_on)
    /// so new rows are published without waiting for the publisher's poll.
    /// A lost wake-up costs one poll interval. Stops when dropped.
    #[must_use]
    pub fn wakeups(&self, waker: std::sync::Arc<tokio::sync::Notify>) -> OutboxWakeups {
        let pool = self.pool.clone();
        let (tx, listening) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let channel = crate::wire::channel(&pool, OUTBOX_CHANNEL);
            loop {
                let result: std::result::Result<(), sqlx::Error> = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    listener.listen(&channel).await?;
                    let _ = tx.send(true);
                    waker.notify_one();
                    loop {
                        listener.recv().await?;
                        waker.notify_one();
                    }
                }
                .await;
                if let Err(error) = result {
                    let _ = tx.send(false);
                    tracing::warn!(%error, "outbox wake-ups lost their connection; reconnecting in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        OutboxWakeups { task, listening }
    }

    /// Deletes up to `batch` published rows published longer than
    /// `older_than` ago, oldest first; returns how many. Call it until it
    /// returns less than `batch`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`](whizbang_core::Error::InvalidInput) for a batch outside 1..=[`limits::MAX_BATCH`];
    /// a backend failure.
    pub async fn prune_published(&self, older_than: Duration, batch: usize) -> Result<usize> {
        limits::check_batch("prune_published", batch)?;
        let n: i64 = sqlx::query_scalar(PRUNE_PUBLISHED)
            .bind(duration_micros(older_than))
            .bind(batch_i64(batch))
            .fetch_one(&self.pool)
            .await
            .map_err(db_failed("prune published outbox rows"))?;
        Ok(usize::try_from(n).unwrap_or_default())
    }

    async fn lease_now(
        &self,
        instance: InstanceId,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>> {
        let rows: Vec<OutboxLeasedRow> = lease_rows(
            &self.pool,
            LEASE,
            "outbox lease",
            instance,
            max,
            lease,
            &self.options,
        )
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(OutboxEntry {
                    leased: row.leased.into_leased()?,
                    stream_id: StreamId::from(row.stream_id),
                    stream_version: u64::try_from(row.stream_version).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn mark_published_now(&self, id: MessageId, instance: InstanceId) -> Result<()> {
        let done: Option<Uuid> = sqlx::query_scalar(MARK_PUBLISHED)
            .bind(id.as_uuid())
            .bind(instance.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_failed(format!("mark outbox row {id} published")))?;
        held(done, id, instance).map(drop)
    }

    async fn fail_now(
        &self,
        id: MessageId,
        instance: InstanceId,
        error: &str,
        retry_in: Duration,
    ) -> Result<FailOutcome> {
        let error = limits::error_text(error);
        let limit = attempt_limit(&self.options);
        let attempts: Option<i32> = sqlx::query_scalar(FAIL)
            .bind(id.as_uuid())
            .bind(instance.as_uuid())
            .bind(&error)
            .bind(limit)
            .bind(duration_micros(retry_in))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_failed(format!(
                "record a failed publish of outbox row {id}"
            )))?;
        fail_outcome(attempts, limit, id, instance)
    }

    async fn release_now(&self, ids: &[MessageId], instance: InstanceId) -> Result<()> {
        limits::check_batch("outbox release", ids.len().max(1))?;
        let uuids: Vec<Uuid> = ids.iter().map(MessageId::as_uuid).collect();
        sqlx::query(RELEASE)
            .bind(&uuids)
            .bind(instance.as_uuid())
            .execute(&self.pool)
            .await
            .map_err(db_failed(format!("release {} outbox leases", ids.len())))?;
        Ok(())
    }

    async fn status_now(&self, id: EventId) -> Result<Option<OutboxStatus>> {
        let row: Option<(String, i32, Option<String>)> = sqlx::query_as(STATUS)
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error(
                format!("read the outbox row of event {id}"),
                Stored::Nothing,
            ))?;
        Ok(row.map(|(status, attempts, last_error)| {
            let attempts = to_u32(attempts);
            match status.as_str() {
                "published" => OutboxStatus::Published { attempts },
                "dead" => OutboxStatus::DeadLettered {
                    attempts,
                    error: last_error.unwrap_or_default(),
                },
                _ => OutboxStatus::Pending {
                    attempts,
                    last_error,
                },
            }
        }))
    }

    async fn dead_letters_now(&self, max: usize) -> Result<Vec<DeadLetter>> {
        limits::check_batch("outbox dead_letters", max)?;
        let rows: Vec<DeadRow> = sqlx::query_as(DEAD_LETTERS)
            .bind(batch_i64(max))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("list outbox dead letters", Stored::Nothing))?;
        rows.into_iter()
            .map(|row| {
                Ok(DeadLetter {
                    attempts: to_u32(row.message.attempts),
                    message: row.message.into_message()?,
                    error: row.error,
                    dead_at: from_micros(row.dead_us),
                })
            })
            .collect()
    }
}

impl Outbox for PgOutbox {
    fn options(&self) -> &QueueOptions {
        &self.options
    }

    fn lease(
        &self,
        instance: InstanceId,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<OutboxEntry>>> {
        Box::pin(self.lease_now(instance, max, lease))
    }

    fn mark_published(&self, id: MessageId, instance: InstanceId) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.mark_published_now(id, instance))
    }

    fn fail<'a>(
        &'a self,
        id: MessageId,
        instance: InstanceId,
        error: &'a str,
        retry_in: Duration,
    ) -> BoxFuture<'a, Result<FailOutcome>> {
        Box::pin(self.fail_now(id, instance, error, retry_in))
    }

    fn release<'a>(
        &'a self,
        ids: &'a [MessageId],
        instance: InstanceId,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.release_now(ids, instance))
    }

    fn status(&self, id: EventId) -> BoxFuture<'_, Result<Option<OutboxStatus>>> {
        Box::pin(self.status_now(id))
    }

    fn dead_letters(&self, max: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>>> {
        Box::pin(self.dead_letters_now(max))
    }
}

/// A LISTEN on the outbox channel that wakes a publisher (see
/// [`PgOutbox::wakeups`]). Stops when dropped.
#[derive(Debug)]
pub struct OutboxWakeups {
    task: tokio::task::JoinHandle<()>,
    listening: tokio::sync::watch::Receiver<bool>,
}

impl OutboxWakeups {
    /// Waits until the LISTEN is established (rows written before it are
    /// covered by the wake-up it gives when it starts).
    pub async fn listening(&mut self) {
        let _ = self.listening.wait_for(|l| *l).await;
    }
}

impl Drop for OutboxWakeups {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! The message queue on PostgreSQL: `wh_message_queue`, `wh_processed_messages`
//! and `wh_dead_letters` (migration `0003_queue.sql`). Each operation is one
//! statement (its SQL beside this file, in `sql/`); user values travel only as
//! bind parameters.

mod wake;

pub use wake::{QueueWakeups, QUEUE_CHANNEL};

use crate::events::db_error;
use serde_json::value::RawValue;
use sqlx::PgPool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument as _;
use uuid::Uuid;
use whizbang_core::backend::BoxFuture;
use whizbang_core::error::Stored;
use whizbang_core::queue::{
    lease_expired_error, limits, DeadLetter, EnqueueOutcome, FailOutcome, LeasedMessage,
    MessageQueue, ProcessedRecord, QueueLag, QueueOptions, QueuedMessage, TickRequest,
    TickResponse,
};
use whizbang_core::{Error, InstanceId, MessageId, Metadata, Result};

const ENQUEUE_AND_LEASE: &str = include_str!("sql/enqueue_and_lease.sql");
const LEASE_ORPHANED: &str = include_str!("sql/lease_orphaned.sql");
const COMPLETE: &str = include_str!("sql/complete.sql");
const FAIL: &str = include_str!("sql/fail.sql");
const RENEW: &str = include_str!("sql/renew.sql");
const RELEASE: &str = include_str!("sql/release.sql");
const PROCESSED: &str = include_str!("sql/processed.sql");
const PRUNE_PROCESSED: &str = include_str!("sql/prune_processed.sql");
const DEAD_LETTERS: &str = include_str!("sql/dead_letters.sql");
const REPLAY_DEAD_LETTERS: &str = include_str!("sql/replay_dead_letters.sql");
const TICK: &str = include_str!("sql/tick.sql");
const LAG: &str = include_str!("sql/lag.sql");

/// The [`MessageQueue`] on PostgreSQL. Cheap to clone (it shares the pool).
/// Get one from [`Postgres::message_queue`](crate::Postgres::message_queue)
/// or build it over a migrated pool with [`new`](Self::new).
///
/// - Every operation is one statement, one round trip.
///   [`enqueue_and_lease`](MessageQueue::enqueue_and_lease) calls the SQL
///   function `wh_enqueue_and_lease`, which checks for a processed record or
///   dead letter again after its insert, in a new snapshot: a complete of the
///   same id committing meanwhile cannot get the id leased twice.
/// - [`tick`](MessageQueue::tick) is one call of the SQL function
///   `wh_queue_tick` (migration `0005_queue_tick.sql`): a worker's
///   completions, failures, renewals, new leases and the lag in one round
///   trip; an idle worker's tick is one index probe.
/// - A failed attempt's message is leasable again after the retry backoff
///   ([`QueueOptions::backoff_after`]), counted on the database's clock.
/// - [`lease_orphaned`](MessageQueue::lease_orphaned) reads the next
///   leasable rows through `wh_message_queue_available_idx` with
///   `FOR UPDATE SKIP LOCKED`, so concurrent instances take disjoint batches.
/// - Lease times are the database's `now()` (the statement's transaction
///   start), so instances on machines whose clocks disagree still agree on
///   expiry. The instance id is the lease owner; use the backend's
///   ([`Postgres::instance_id`](crate::Postgres::instance_id)) or one per
///   worker.
/// - Payloads and headers are stored as `jsonb`: the JSON is kept as a value
///   (object key order and whitespace are not).
///
/// ```no_run
/// # async fn run(pg: whizbang_postgres::Postgres) -> whizbang_core::Result<()> {
/// use std::time::Duration;
/// use whizbang_core::queue::{EnqueueOutcome, MessageQueue, QueuedMessage};
/// use whizbang_core::InstanceId;
///
/// let queue = pg.message_queue();
/// let me = InstanceId::from(pg.instance_id());
/// let message = QueuedMessage::from_json("orders.placed", r#"{"order": 7}"#)?;
/// if let EnqueueOutcome::Leased(leased) =
///     queue.enqueue_and_lease(message, me, Duration::from_secs(30)).await?
/// {
///     // .. handle it ..
///     queue.complete(leased.message.id, me, "orders.inbox").await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgMessageQueue {
    pool: PgPool,
    options: QueueOptions,
}

/// A queue row as the statements return it (the outbox's rows too).
#[derive(sqlx::FromRow)]
pub(crate) struct MessageRow {
    message_id: Uuid,
    message_type: String,
    payload: String,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    headers: String,
    enqueued_us: i64,
    pub(crate) attempts: i32,
}

/// A leased message as the lease statements return it (the outbox's rows
/// flatten it too).
#[derive(sqlx::FromRow)]
pub(crate) struct LeasedRow {
    #[sqlx(flatten)]
    message: MessageRow,
    lease_expires_us: i64,
    last_error: Option<String>,
}

impl LeasedRow {
    pub(crate) fn into_leased(self) -> Result<LeasedMessage> {
        Ok(LeasedMessage {
            attempt: to_u32(self.message.attempts),
            message: self.message.into_message()?,
            lease_expires_at: from_micros(self.lease_expires_us),
            last_error: self.last_error,
        })
    }
}

/// Runs a lease statement after checking its arguments. Every lease
/// statement (the queue's orphans, the outbox's rows) takes the same
/// parameters: `$1` the instance, `$2` at most how many, `$3` the lease in
/// microseconds, `$4` the attempt limit, and `$5`/`$6` the dead-letter text
/// around the attempt count of a lease that expired once too often.
pub(crate) async fn lease_rows<R>(
    pool: &PgPool,
    sql: &'static str,
    what: &str,
    instance: InstanceId,
    max: usize,
    lease: Duration,
    options: &QueueOptions,
) -> Result<Vec<R>>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    limits::check_batch(what, max)?;
    limits::check_lease(lease)?;
    let (before, after) = expired_error_parts();
    sqlx::query_as(sql)
        .bind(instance.as_uuid())
        .bind(batch_i64(max))
        .bind(duration_micros(lease))
        .bind(attempt_limit(options))
        .bind(before)
        .bind(after)
        .fetch_all(pool)
        .await
        .map_err(db_failed(format!("{what}: lease up to {max}")))
}

/// A row of `wh_queue_tick`.
#[derive(sqlx::FromRow)]
struct TickRow {
    kind: String,
    message_id: Option<Uuid>,
    attempts: Option<i32>,
    at_us: Option<i64>,
    message_type: Option<String>,
    payload: Option<String>,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    headers: Option<String>,
    enqueued_us: Option<i64>,
    last_error: Option<String>,
    depth: Option<i64>,
    now_us: i64,
}

#[derive(sqlx::FromRow)]
struct DeadRow {
    #[sqlx(flatten)]
    message: MessageRow,
    error: String,
    dead_us: i64,
}

impl PgMessageQueue {
    /// A queue over `pool` (migrated with [`migrate`](crate::migrate)), with
    /// the default [`QueueOptions`].
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self::with_options(pool, QueueOptions::default())
    }

    /// A queue over `pool` with these options. Every instance sharing the
    /// tables should use the same attempt limit.
    #[must_use]
    pub fn with_options(pool: PgPool, options: QueueOptions) -> Self {
        PgMessageQueue { pool, options }
    }

    /// Wakes `waker` (`notify_one`) whenever a message becomes leasable on
    /// this database: a failed attempt waits for its retry, leases were
    /// released, dead letters were replayed (see [`QueueWakeups`]). Hand it
    /// an inbox worker's waker so it need not wait for its next poll.
    #[must_use]
    pub fn wakeups(&self, waker: std::sync::Arc<tokio::sync::Notify>) -> QueueWakeups {
        QueueWakeups::start(self.pool.clone(), waker)
    }

    /// The pool this queue uses.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn enqueue_and_lease_now(
        &self,
        message: QueuedMessage,
        instance: InstanceId,
        lease: Duration,
    ) -> Result<EnqueueOutcome> {
        message.validate()?;
        limits::check_lease(lease)?;
        let id = message.id;
        let what = || format!("enqueue and lease message {id}");
        let headers = json_text(&message.headers, id)?;
        let (outcome, expires): (String, Option<i64>) = sqlx::query_as(ENQUEUE_AND_LEASE)
            .bind(id.as_uuid())
            .bind(&message.message_type)
            .bind(message.payload.get())
            .bind(message.correlation_id.as_uuid())
            .bind(message.causation_id.map(|c| c.as_uuid()))
            .bind(&headers)
            .bind(to_micros(message.enqueued_at))
            .bind(instance.as_uuid())
            .bind(duration_micros(lease))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| refused_or_failed(e, id, &message.message_type, what()))?;
        Ok(match outcome.as_str() {
            "leased" => EnqueueOutcome::Leased(LeasedMessage {
                message,
                attempt: 1,
                lease_expires_at: from_micros(expires.unwrap_or_default()),
                last_error: None,
            }),
            "queued" => EnqueueOutcome::AlreadyQueued,
            "processed" => EnqueueOutcome::AlreadyProcessed,
            "dead" => EnqueueOutcome::DeadLettered,
            other => {
                return Err(Error::Invariant(format!(
                    "wh_enqueue_and_lease answered {other:?} for message {id}; is the schema \
                     newer than this build?"
                )))
            }
        })
    }

    async fn lease_orphaned_now(
        &self,
        instance: InstanceId,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<LeasedMessage>> {
        let rows: Vec<LeasedRow> = lease_rows(
            &self.pool,
            LEASE_ORPHANED,
            "lease_orphaned",
            instance,
            max,
            lease,
            &self.options,
        )
        .await?;
        rows.into_iter().map(LeasedRow::into_leased).collect()
    }

    async fn complete_now(&self, id: MessageId, instance: InstanceId, handler: &str) -> Result<()> {
        limits::check_handler(id, handler)?;
        let done: Option<Uuid> = sqlx::query_scalar(COMPLETE)
            .bind(id.as_uuid())
            .bind(instance.as_uuid())
            .bind(handler)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_failed(format!("complete message {id}")))?;
        held(done, id, instance).map(drop)
    }

    async fn fail_now(
        &self,
        id: MessageId,
        instance: InstanceId,
        error: &str,
    ) -> Result<FailOutcome> {
        let error = limits::error_text(error);
        let limit = attempt_limit(&self.options);
        let attempts: Option<i32> = sqlx::query_scalar(FAIL)
            .bind(id.as_uuid())
            .bind(instance.as_uuid())
            .bind(&error)
            .bind(limit)
            .bind(duration_micros(self.options.retry_backoff_base))
            .bind(duration_micros(self.options.retry_backoff_cap))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_failed(format!("record the failure of message {id}")))?;
        let outcome = fail_outcome(attempts, limit, id, instance)?;
        if let FailOutcome::Retry { attempts } = outcome {
            if self.options.backoff_after(attempts).is_zero() {
                wake::announce(&self.pool);
            }
        }
        Ok(outcome)
    }

    async fn renew_now(
        &self,
        ids: &[MessageId],
        instance: InstanceId,
        lease: Duration,
    ) -> Result<SystemTime> {
        limits::check_batch("renew", ids.len())?;
        limits::check_lease(lease)?;
        let ids = limits::distinct(ids);
        let uuids: Vec<Uuid> = ids.iter().map(MessageId::as_uuid).collect();
        let (held, expires): (Vec<Uuid>, i64) = sqlx::query_as(RENEW)
            .bind(&uuids)
            .bind(instance.as_uuid())
            .bind(duration_micros(lease))
            .fetch_one(&self.pool)
            .await
            .map_err(db_failed(format!(
                "renew the leases of {} messages",
                ids.len()
            )))?;
        lost_or(ids, &held, instance)?;
        Ok(from_micros(expires))
    }

    async fn release_now(&self, ids: &[MessageId], instance: InstanceId) -> Result<()> {
        limits::check_batch("release", ids.len())?;
        let ids = limits::distinct(ids);
        let uuids: Vec<Uuid> = ids.iter().map(MessageId::as_uuid).collect();
        let held: Vec<Uuid> = sqlx::query_scalar(RELEASE)
            .bind(&uuids)
            .bind(instance.as_uuid())
            .fetch_one(&self.pool)
            .await
            .map_err(db_failed(format!(
                "release the leases of {} messages",
                ids.len()
            )))?;
        lost_or(ids, &held, instance)?;
        wake::announce(&self.pool);
        Ok(())
    }

    async fn tick_now(&self, instance: InstanceId, request: TickRequest) -> Result<TickResponse> {
        request.validate()?;
        let mut seen = std::collections::HashSet::new();
        let (mut complete, mut handlers) = (Vec::new(), Vec::new());
        for c in &request.completed {
            if seen.insert(c.id) {
                complete.push(c.id.as_uuid());
                handlers.push(c.handler.as_str());
            }
        }
        let (mut fail, mut errors) = (Vec::new(), Vec::new());
        for f in &request.failed {
            if seen.insert(f.id) {
                fail.push(f.id.as_uuid());
                errors.push(limits::error_text(&f.error));
            }
        }
        let renew: Vec<Uuid> = limits::distinct(&request.renew)
            .into_iter()
            .filter(|id| seen.insert(*id))
            .map(|id| id.as_uuid())
            .collect();
        let (before, after) = expired_error_parts();
        let lag_cap = if request.measure_lag {
            batch_i64(limits::MAX_BATCH)
        } else {
            0
        };
        let rows: Vec<TickRow> = sqlx::query_as(TICK)
            .bind(instance.as_uuid())
            .bind(&complete)
            .bind(&handlers)
            .bind(&fail)
            .bind(&errors)
            .bind(&renew)
            .bind(duration_micros(request.lease))
            .bind(batch_i64(request.lease_max))
            .bind(attempt_limit(&self.options))
            .bind(duration_micros(self.options.retry_backoff_base))
            .bind(duration_micros(self.options.retry_backoff_cap))
            .bind(before)
            .bind(after)
            .bind(lag_cap)
            .fetch_all(&self.pool)
            .await
            .map_err(db_failed(format!(
                "run a queue tick ({} completions, {} failures, {} renewals, up to {} \
                         leases)",
                complete.len(),
                fail.len(),
                renew.len(),
                request.lease_max
            )))?;
        let mut response = TickResponse::default();
        let mut answered = std::collections::HashSet::new();
        let mut retry_now = false;
        for row in rows {
            let id = row.message_id.map(MessageId::from);
            let attempts = to_u32(row.attempts.unwrap_or_default());
            match (row.kind.as_str(), id) {
                ("completed", Some(id)) => {
                    answered.insert(id);
                    response.completed.push(id);
                }
                ("retry", Some(id)) => {
                    answered.insert(id);
                    retry_now |= row.at_us.is_some_and(|at| at <= row.now_us);
                    response.failed.push((id, FailOutcome::Retry { attempts }));
                }
                ("dead", Some(id)) => {
                    answered.insert(id);
                    response
                        .failed
                        .push((id, FailOutcome::DeadLettered { attempts }));
                }
                ("renewed", Some(id)) => {
                    answered.insert(id);
                    response.renewed.push(id);
                    response.renewed_until = row.at_us.map(from_micros);
                }
                ("leased", Some(id)) => {
                    let message = MessageRow {
                        message_id: id.as_uuid(),
                        message_type: row.message_type.unwrap_or_default(),
                        payload: row.payload.unwrap_or_default(),
                        correlation_id: row.correlation_id.unwrap_or_default(),
                        causation_id: row.causation_id,
                        headers: row.headers.unwrap_or_default(),
                        enqueued_us: row.enqueued_us.unwrap_or_default(),
                        attempts: row.attempts.unwrap_or_default(),
                    };
                    response.leased.push(LeasedMessage {
                        attempt: attempts,
                        message: message.into_message()?,
                        lease_expires_at: from_micros(row.at_us.unwrap_or_default()),
                        last_error: row.last_error,
                    });
                }
                ("lag", None) => {
                    response.lag = Some(QueueLag {
                        depth: u64::try_from(row.depth.unwrap_or_default()).unwrap_or_default(),
                        oldest: row.at_us.map_or(Duration::ZERO, |at| {
                            Duration::from_micros(
                                u64::try_from(row.now_us.saturating_sub(at)).unwrap_or_default(),
                            )
                        }),
                    });
                }
                (other, _) => {
                    return Err(Error::Invariant(format!(
                        "wh_queue_tick answered a {other:?} row it does not define; is the \
                         schema newer than this build? (the tick's changes are stored)"
                    )))
                }
            }
        }
        let asked = complete.iter().chain(&fail).chain(&renew);
        response.lost = asked
            .map(|u| MessageId::from(*u))
            .filter(|id| !answered.contains(id))
            .collect();
        if retry_now {
            wake::announce(&self.pool);
        }
        Ok(response)
    }

    async fn lag_now(&self) -> Result<Option<QueueLag>> {
        let (depth, oldest_us): (i64, i64) = sqlx::query_as(LAG)
            .bind(batch_i64(limits::MAX_BATCH))
            .fetch_one(&self.pool)
            .await
            .map_err(db_error("measure the queue's lag", Stored::Nothing))?;
        Ok(Some(QueueLag {
            depth: u64::try_from(depth).unwrap_or_default(),
            oldest: Duration::from_micros(u64::try_from(oldest_us).unwrap_or_default()),
        }))
    }

    async fn processed_now(&self, id: MessageId) -> Result<Option<ProcessedRecord>> {
        let row: Option<(String, i64)> = sqlx::query_as(PROCESSED)
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error(
                format!("read the processed record of message {id}"),
                Stored::Nothing,
            ))?;
        Ok(row.map(|(handler, at)| ProcessedRecord {
            message_id: id,
            handler,
            processed_at: from_micros(at),
        }))
    }

    async fn prune_now(&self, older_than: Duration, batch: usize) -> Result<usize> {
        limits::check_batch("prune_processed", batch)?;
        // A window reaching back before 1900 holds every record there is.
        if older_than > Duration::from_secs(200 * 365 * 24 * 60 * 60) {
            return Ok(0);
        }
        let done = sqlx::query(PRUNE_PROCESSED)
            .bind(duration_micros(older_than))
            .bind(batch_i64(batch))
            .execute(&self.pool)
            .await
            .map_err(db_failed("prune processed-message records"))?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn dead_letters_now(&self, max: usize) -> Result<Vec<DeadLetter>> {
        limits::check_batch("dead_letters", max)?;
        let rows: Vec<DeadRow> = sqlx::query_as(DEAD_LETTERS)
            .bind(batch_i64(max))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error("list dead letters", Stored::Nothing))?;
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

    async fn replay_now(&self, ids: &[MessageId]) -> Result<Vec<MessageId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        limits::check_batch("replay_dead_letters", ids.len())?;
        let uuids: Vec<Uuid> = limits::distinct(ids)
            .iter()
            .map(MessageId::as_uuid)
            .collect();
        let moved: Vec<Uuid> = sqlx::query_scalar(REPLAY_DEAD_LETTERS)
            .bind(&uuids)
            .fetch_all(&self.pool)
            .await
            .map_err(db_failed(format!("replay {} dead letters", uuids.len())))?;
        if !moved.is_empty() {
            wake::announce(&self.pool);
        }
        // In the order asked for.
        Ok(uuids
            .into_iter()
            .filter(|u| moved.contains(u))
            .map(MessageId::from)
            .collect())
    }
}

impl MessageRow {
    pub(crate) fn into_message(self) -> Result<QueuedMessage> {
        let id = MessageId::from(self.message_id);
        let payload =
            RawValue::from_string(self.payload).map_err(|source| Error::Deserialization {
                type_name: self.message_type.clone(),
                source,
            })?;
        let headers: Metadata =
            serde_json::from_str(&self.headers).map_err(|source| Error::Deserialization {
                type_name: format!("headers of message {id}"),
                source,
            })?;
        Ok(QueuedMessage {
            id,
            message_type: self.message_type,
            payload,
            correlation_id: MessageId::from(self.correlation_id),
            causation_id: self.causation_id.map(MessageId::from),
            headers,
            enqueued_at: from_micros(self.enqueued_us),
        })
    }
}

impl MessageQueue for PgMessageQueue {
    fn options(&self) -> &QueueOptions {
        &self.options
    }

    fn enqueue_and_lease(
        &self,
        message: QueuedMessage,
        instance: InstanceId,
        lease: Duration,
    ) -> BoxFuture<'_, Result<EnqueueOutcome>> {
        let span = whizbang_core::queue::spans::enqueue_and_lease(&message, instance);
        Box::pin(
            self.enqueue_and_lease_now(message, instance, lease)
                .instrument(span),
        )
    }

    fn lease_orphaned(
        &self,
        instance: InstanceId,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<LeasedMessage>>> {
        let span = whizbang_core::queue::spans::lease_orphaned(instance, max);
        Box::pin(
            self.lease_orphaned_now(instance, max, lease)
                .instrument(span),
        )
    }

    fn complete<'a>(
        &'a self,
        id: MessageId,
        instance: InstanceId,
        handler: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        let span = whizbang_core::queue::spans::complete(id, instance, handler);
        Box::pin(self.complete_now(id, instance, handler).instrument(span))
    }

    fn fail<'a>(
        &'a self,
        id: MessageId,
        instance: InstanceId,
        error: &'a str,
    ) -> BoxFuture<'a, Result<FailOutcome>> {
        let span = whizbang_core::queue::spans::fail(id, instance);
        Box::pin(self.fail_now(id, instance, error).instrument(span))
    }

    fn renew<'a>(
        &'a self,
        ids: &'a [MessageId],
        instance: InstanceId,
        lease: Duration,
    ) -> BoxFuture<'a, Result<SystemTime>> {
        let span = whizbang_core::queue::spans::renew(ids.len(), instance);
        Box::pin(self.renew_now(ids, instance, lease).instrument(span))
    }

    fn release<'a>(
        &'a self,
        ids: &'a [MessageId],
        instance: InstanceId,
    ) -> BoxFuture<'a, Result<()>> {
        let span = whizbang_core::queue::spans::release(ids.len(), instance);
        Box::pin(self.release_now(ids, instance).instrument(span))
    }

    fn processed(&self, id: MessageId) -> BoxFuture<'_, Result<Option<ProcessedRecord>>> {
        let span = whizbang_core::queue::spans::processed(id);
        Box::pin(self.processed_now(id).instrument(span))
    }

    fn prune_processed(&self, older_than: Duration, batch: usize) -> BoxFuture<'_, Result<usize>> {
        let span = whizbang_core::queue::spans::prune_processed(older_than, batch);
        Box::pin(self.prune_now(older_than, batch).instrument(span))
    }

    fn dead_letters(&self, max: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>>> {
        let span = whizbang_core::queue::spans::dead_letters(max);
        Box::pin(self.dead_letters_now(max).instrument(span))
    }

    fn replay_dead_letters<'a>(
        &'a self,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        let span = whizbang_core::queue::spans::replay_dead_letters(ids.len());
        Box::pin(self.replay_now(ids).instrument(span))
    }

    fn lag(&self) -> BoxFuture<'_, Result<Option<QueueLag>>> {
        Box::pin(self.lag_now())
    }

    fn tick(
        &self,
        instance: InstanceId,
        request: TickRequest,
    ) -> BoxFuture<'_, Result<TickResponse>> {
        let span = whizbang_core::queue::spans::tick(
            instance,
            request.completed.len(),
            request.failed.len(),
            request.renew.len(),
            request.lease_max,
        );
        Box::pin(self.tick_now(instance, request).instrument(span))
    }
}

/// `Err(LeaseLost)` naming the ids of `asked` not in `held`.
fn lost_or(asked: Vec<MessageId>, held: &[Uuid], instance: InstanceId) -> Result<()> {
    let lost: Vec<MessageId> = asked
        .into_iter()
        .filter(|id| !held.contains(&id.as_uuid()))
        .collect();
    if lost.is_empty() {
        Ok(())
    } else {
        Err(Error::LeaseLost {
            message_ids: lost,
            instance,
        })
    }
}

/// What a failed single-statement write left: nothing when the server
/// refused it or no connection was had; unknown when the connection broke
/// while it ran (it may have committed).
/// [`db_error`] with what was stored read from the error itself
/// ([`stored_after`]): for single statements that commit on their own.
pub(crate) fn db_failed(operation: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| {
        let stored = stored_after(&e);
        db_error(operation, stored)(e)
    }
}

pub(crate) fn stored_after(e: &sqlx::Error) -> Stored {
    match e {
        sqlx::Error::Database(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Configuration(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::TypeNotFound { .. } => Stored::Nothing,
        _ => Stored::Unknown,
    }
}

/// A data exception (SQLSTATE class 22: a payload `jsonb` refuses, such as
/// a lone surrogate escape) is the caller's input; anything else a backend
/// failure.
fn refused_or_failed(e: sqlx::Error, id: MessageId, message_type: &str, what: String) -> Error {
    if let sqlx::Error::Database(db) = &e {
        if db.code().is_some_and(|c| c.starts_with("22")) {
            return Error::InvalidInput(format!(
                "PostgreSQL refused `{message_type}` message {id}: {}; nothing was queued. Fix \
                 the payload or headers (valid JSON text jsonb can store)",
                db.message()
            ));
        }
    }
    let stored = stored_after(&e);
    db_error(what, stored)(e)
}

pub(crate) fn json_text(headers: &Metadata, id: MessageId) -> Result<String> {
    serde_json::to_string(headers).map_err(|e| {
        Error::InvalidInput(format!(
            "the headers of message {id} do not serialise ({e}); nothing was queued"
        ))
    })
}

/// The text around the attempt count in a dead letter whose last lease
/// expired, taken from [`lease_expired_error`] so both queues say the same.
pub(crate) fn expired_error_parts() -> (String, String) {
    const MARK: u32 = 987_654_321;
    let text = lease_expired_error(MARK);
    let mark = MARK.to_string();
    match text.split_once(&mark) {
        Some((before, after)) => (before.to_owned(), after.to_owned()),
        None => (text, String::new()),
    }
}

/// What a statement fenced on the lease returned, or [`Error::LeaseLost`]
/// when it returned nothing (`instance` no longer holds message `id`).
pub(crate) fn held<T>(row: Option<T>, id: MessageId, instance: InstanceId) -> Result<T> {
    row.ok_or_else(|| Error::LeaseLost {
        message_ids: vec![id],
        instance,
    })
}

/// The outcome of a fenced statement that recorded a failed attempt and
/// returned the attempts made (`None`: the lease was lost).
pub(crate) fn fail_outcome(
    attempts: Option<i32>,
    limit: i32,
    id: MessageId,
    instance: InstanceId,
) -> Result<FailOutcome> {
    let n = held(attempts, id, instance)?;
    let attempts = to_u32(n);
    Ok(if n >= limit {
        FailOutcome::DeadLettered { attempts }
    } else {
        FailOutcome::Retry { attempts }
    })
}

pub(crate) fn attempt_limit(options: &QueueOptions) -> i32 {
    i32::try_from(options.max_attempts.max(1)).unwrap_or(i32::MAX)
}

pub(crate) fn batch_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn to_u32(n: i32) -> u32 {
    u32::try_from(n).unwrap_or_default()
}

/// A duration in microseconds (bounded by the callers' checks).
pub(crate) fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Microseconds since the Unix epoch (negative before it).
pub(crate) fn to_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

pub(crate) fn from_micros(us: i64) -> SystemTime {
    let offset = Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
    .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expired_error_splits_around_the_count() {
        let (before, after) = expired_error_parts();
        assert_eq!(format!("{before}3{after}"), lease_expired_error(3));
    }

    #[test]
    fn times_round_trip_through_micros() {
        let now = SystemTime::now();
        let back = from_micros(to_micros(now));
        let drift = now.duration_since(back).unwrap_or_default();
        assert!(drift < Duration::from_micros(1));
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(from_micros(to_micros(before)), before);
    }
}

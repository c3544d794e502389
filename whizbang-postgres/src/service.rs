//! Another service in the same database, seen from this one: wait until one
//! of its perspectives applied an event this service published.

use crate::events::{db_error, to_u64};
use crate::SchemaName;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::Instrument as _;
use uuid::Uuid;
use whizbang_core::backend::EventSyncStatus;
use whizbang_core::error::Stored;
use whizbang_core::{EventId, Result, StreamId, SyncOutcome};

/// Another service sharing this database in its own schema
/// ([`Postgres::service`](crate::Postgres::service)): ask, or wait, whether
/// one of its perspectives applied an event.
///
/// This is read-your-writes across services. Service A publishes an event
/// (`#[event(publish)]`); the outbox carries it into service B's inbox, and
/// B stores it **under the same event id** and applies its perspectives to
/// it. So A waits for "B's perspective `P` applied event `X`" by the id its
/// own append gave `X`:
///
/// ```no_run
/// # async fn run(a: whizbang_postgres::Postgres, id: whizbang_core::EventId) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use whizbang_core::SyncOutcome;
///
/// let billing = a.service("billing")?;
/// let outcome = billing
///     .wait_for_perspective("billing.invoices", id, Duration::from_secs(5))
///     .await?;
/// assert_eq!(outcome, SyncOutcome::Synced);
/// # Ok(()) }
/// ```
///
/// The perspective is named by its stable name (`#[perspective(name = ..)]`,
/// default its type name), since A does not link B's types. Its status is
/// read from B's `wh_events` and `wh_perspective_cursors` (schema-qualified,
/// the name validated and quoted): applied once B's cursor for `P` on the
/// event's stream reached the event's version, exactly as B's own waiters
/// decide. The wait re-asks whenever the service commits an apply (one
/// LISTEN connection on its applied channel per `PgService`, started by the
/// first wait and shared by all; a cheap primary-key query per re-ask), and
/// on a backoff from 5 ms up to 200 ms besides, which bounds what a lost
/// notification costs. Cheap to clone (clones share the LISTEN).
#[derive(Clone, Debug)]
pub struct PgService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    schema: SchemaName,
    statement: String,
    /// Notified (all waiters) on every NOTIFY on the service's applied channel.
    applied: Arc<Notify>,
    /// The LISTEN task, started by the first wait.
    listener: OnceLock<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get() {
            task.abort();
        }
    }
}

impl PgService {
    pub(crate) fn new(pool: PgPool, schema: SchemaName) -> Self {
        let s = schema.quoted();
        let statement = format!(
            "select e.stream_id, e.stream_version, c.version, c.failed_version, c.failure_message
               from {s}.wh_events e
               left join {s}.wh_perspective_cursors c
                      on c.perspective = $1 and c.model_key = e.stream_id
              where e.event_id = $2"
        );
        PgService {
            inner: Arc::new(Inner {
                pool,
                schema,
                statement,
                applied: Arc::new(Notify::new()),
                listener: OnceLock::new(),
            }),
        }
    }

    /// Starts, once, the LISTEN on the service's applied channel (one
    /// connection for every wait on this service).
    fn listen(&self) {
        let inner = &self.inner;
        inner.listener.get_or_init(|| {
            let pool = inner.pool.clone();
            let channel = inner.schema.channel(crate::wire::APPLIED_CHANNEL);
            let applied = Arc::clone(&inner.applied);
            tokio::spawn(async move {
                loop {
                    let result: std::result::Result<(), sqlx::Error> = async {
                        let mut listener = PgListener::connect_with(&pool).await?;
                        listener.listen(&channel).await?;
                        // What was applied before the LISTEN: re-ask now.
                        applied.notify_waiters();
                        loop {
                            listener.recv().await?;
                            applied.notify_waiters();
                        }
                    }
                    .await;
                    if let Err(error) = result {
                        tracing::debug!(%error, "LISTEN on another service's applied channel failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            })
        });
    }

    /// Its schema.
    #[must_use]
    pub fn schema(&self) -> &SchemaName {
        &self.inner.schema
    }

    /// Where `event` stands for the service's perspective `perspective`:
    /// [`EventSyncStatus::NotArrived`] until the service stored it,
    /// `Pending` until the perspective applied it, then `Applied` (or
    /// `Failed` when the perspective failed on its stream at or before it).
    ///
    /// # Errors
    /// A backend failure (a schema that is not migrated fails here).
    pub async fn perspective_status(
        &self,
        perspective: &str,
        event: EventId,
    ) -> Result<EventSyncStatus> {
        type Row = (Uuid, i64, Option<i64>, Option<i64>, Option<String>);
        let row: Option<Row> = sqlx::query_as(&self.inner.statement)
            .bind(perspective)
            .bind(event.as_uuid())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(db_error(
                format!(
                    "read whether perspective `{perspective}` of schema `{}` applied event {event}",
                    self.inner.schema
                ),
                Stored::Nothing,
            ))?;
        let Some((stream, version, applied, failed, message)) = row else {
            return Ok(EventSyncStatus::NotArrived);
        };
        let (stream, version) = (StreamId::from(stream), to_u64(version));
        Ok(match (failed.map(to_u64), message) {
            (Some(failed), Some(message)) if failed <= version => EventSyncStatus::Failed {
                stream,
                version: failed,
                message,
            },
            _ if applied.map_or(0, to_u64) >= version => EventSyncStatus::Applied,
            _ => EventSyncStatus::Pending { stream, version },
        })
    }

    /// Waits until the service's perspective `perspective` applied `event`
    /// ([`SyncOutcome::Synced`]), failed on it ([`SyncOutcome::Failed`]), or
    /// `timeout` passed ([`SyncOutcome::TimedOut`], also when the event
    /// never arrived). Cancel-safe: it only reads.
    ///
    /// # Errors
    /// A backend failure.
    pub async fn wait_for_perspective(
        &self,
        perspective: &str,
        event: EventId,
        timeout: Duration,
    ) -> Result<SyncOutcome> {
        let span = tracing::info_span!(
            "whizbang.service.wait",
            schema = %self.inner.schema,
            perspective,
            event_id = %event,
        );
        self.wait(perspective, event, timeout)
            .instrument(span)
            .await
    }

    async fn wait(
        &self,
        perspective: &str,
        event: EventId,
        timeout: Duration,
    ) -> Result<SyncOutcome> {
        self.listen();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        loop {
            // Registered before the read: a commit after it wakes this wait.
            let applied = self.inner.applied.notified();
            tokio::pin!(applied);
            applied.as_mut().enable();
            match self.perspective_status(perspective, event).await? {
                EventSyncStatus::Applied => return Ok(SyncOutcome::Synced),
                EventSyncStatus::Failed {
                    stream,
                    version,
                    message,
                } => {
                    return Ok(SyncOutcome::Failed {
                        stream,
                        version,
                        message,
                    })
                }
                _ => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(SyncOutcome::TimedOut);
            }
            tokio::select! {
                () = &mut applied => {}
                () = tokio::time::sleep(delay.min(deadline - now)) => {
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
            }
        }
    }
}

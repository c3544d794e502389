//! The outbox publisher: leases outbox rows, publishes them through a
//! transport, marks them published, retries with backoff.

use super::{backoff, Outbox, OutboxEntry, Transport};
use crate::dispatch::Runtime;
use crate::error::{Error, Result};
use crate::message::InstanceId;
use crate::queue::FailOutcome;
use crate::stage::LifecycleStage;
use crate::store::{EventMetadata, StoredEvent};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::Instrument;

/// How an [`OutboxPublisher`] works. Builder-style.
///
/// ```
/// use std::time::Duration;
/// use whizbang_core::outbox::OutboxPublisherOptions;
///
/// let o = OutboxPublisherOptions::default().backoff(Duration::from_millis(10), Duration::from_secs(1));
/// assert_eq!(o.backoff_base, Duration::from_millis(10));
/// assert_eq!(o.batch, 32);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxPublisherOptions {
    /// Rows leased per tick (default 32).
    pub batch: usize,
    /// How long a lease lasts (default 30 s): a publisher that dies holding
    /// rows leaves them to another publisher after this. Keep it longer than
    /// a publish takes.
    pub lease: Duration,
    /// How long an idle publisher waits before it looks again without a
    /// wake-up (default 500 ms). Also the granularity of the backoff.
    pub poll_interval: Duration,
    /// The backoff after a first failed publish (default 100 ms); it
    /// doubles with each attempt.
    pub backoff_base: Duration,
    /// The longest backoff (default 60 s).
    pub backoff_max: Duration,
}

impl Default for OutboxPublisherOptions {
    fn default() -> Self {
        OutboxPublisherOptions {
            batch: 32,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl OutboxPublisherOptions {
    /// Sets [`batch`](Self::batch) (at least 1).
    #[must_use]
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Sets [`lease`](Self::lease) (at least 1 ms).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// Sets [`poll_interval`](Self::poll_interval) (at least 1 ms).
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Sets [`backoff_base`](Self::backoff_base) and [`backoff_max`](Self::backoff_max).
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max.max(base);
        self
    }
}

/// Counters of a publisher since it was built (see [`OutboxPublisher::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Rows published and marked.
    pub published: u64,
    /// Failed publishes given back for a retry after their backoff.
    pub retried: u64,
    /// Rows dead-lettered by a failed publish at the attempt limit.
    pub dead_lettered: u64,
    /// Rows whose lease was taken over before they were marked (another
    /// publisher publishes them again: the receiver refuses the copy).
    pub lease_lost: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    lease_lost: AtomicU64,
}

/// What publishing one row did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// The transport accepted it and it is marked published.
    Published,
    /// The publish failed; it is retried after its backoff.
    Retrying {
        /// Attempts so far.
        attempts: u32,
        /// What went wrong.
        error: String,
    },
    /// The publish failed at the attempt limit: dead-lettered.
    DeadLettered {
        /// Attempts made.
        attempts: u32,
        /// What went wrong.
        error: String,
    },
}

struct Shared {
    outbox: Arc<dyn Outbox>,
    transport: Arc<dyn Transport>,
    runtime: Option<Runtime>,
    instance: InstanceId,
    options: OutboxPublisherOptions,
    wake: Arc<Notify>,
    counters: Counters,
}

/// Publishes an outbox's rows through a transport (see the
/// [module docs](super)). Cheap to clone (shared). Drive it one tick at a
/// time ([`publish_once`](Self::publish_once)) or [`start`](Self::start) it.
///
/// Each row is published in a `whizbang.outbox.publish` span carrying its
/// message, correlation and causation ids, its type and attempt. With a
/// [`runtime`](Self::runtime), the event's `PreOutbox` receptors fire
/// before the publish (a failing inline one fails the attempt) and its
/// `PostOutbox` receptors after the row is marked published.
#[derive(Clone)]
pub struct OutboxPublisher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for OutboxPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxPublisher")
            .field("instance", &self.shared.instance)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl OutboxPublisher {
    /// A publisher of `outbox`'s rows through `transport`, as a new
    /// instance, with the default options.
    #[must_use]
    pub fn new(outbox: Arc<dyn Outbox>, transport: Arc<dyn Transport>) -> Self {
        OutboxPublisher {
            shared: Arc::new(Shared {
                outbox,
                transport,
                runtime: None,
                instance: InstanceId::new(),
                options: OutboxPublisherOptions::default(),
                wake: Arc::new(Notify::new()),
                counters: Counters::default(),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => f(shared),
            None => {
                tracing::warn!("an outbox publisher was configured after it was cloned; ignored")
            }
        }
        self
    }

    /// Uses these options (configure before cloning or starting it).
    #[must_use]
    pub fn options(self, options: OutboxPublisherOptions) -> Self {
        self.edit(|s| s.options = options)
    }

    /// Fires the outbox lifecycle stages (`PreOutbox`, `PostOutbox`) of
    /// `runtime`'s receptors around each publish.
    #[must_use]
    pub fn runtime(self, runtime: Runtime) -> Self {
        self.edit(|s| s.runtime = Some(runtime))
    }

    /// Owns its leases as `instance` (default a new one).
    #[must_use]
    pub fn instance(self, instance: InstanceId) -> Self {
        self.edit(|s| s.instance = instance)
    }

    /// Wakes the started publisher when `notify` is notified (for example
    /// [`MemoryOutbox::wakeup`](super::MemoryOutbox::wakeup)), besides its poll.
    #[must_use]
    pub fn wake_on(self, notify: Arc<Notify>) -> Self {
        self.edit(|s| s.wake = notify)
    }

    /// What wakes the started publisher: notify it (`notify_one`) when rows
    /// were written, for example from a backend's LISTEN
    /// (`PgOutbox::wakeups`).
    #[must_use]
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.wake)
    }

    /// The instance that owns its leases.
    #[must_use]
    pub fn instance_id(&self) -> InstanceId {
        self.shared.instance
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> OutboxStats {
        let c = &self.shared.counters;
        OutboxStats {
            published: c.published.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            lease_lost: c.lease_lost.load(Ordering::Relaxed),
        }
    }

    /// One tick: leases up to [`batch`](OutboxPublisherOptions::batch) rows
    /// and publishes each. Returns how many were leased.
    ///
    /// Cancel-safe: dropped mid-way, the rows it leased and did not mark
    /// stay leased until their lease expires, then another tick publishes
    /// them again (at least once; the receiving inbox refuses the copy).
    ///
    /// # Errors
    /// The outbox's (leasing, marking); a row whose lease was taken over is
    /// counted ([`OutboxStats::lease_lost`]), not an error.
    pub async fn publish_once(&self) -> Result<usize> {
        self.tick(None).await
    }

    async fn tick(&self, stop: Option<&AtomicBool>) -> Result<usize> {
        let s = &self.shared;
        let entries = s
            .outbox
            .lease(s.instance, s.options.batch, s.options.lease)
            .await?;
        let leased = entries.len();
        let mut rest = entries.into_iter();
        while let Some(entry) = rest.next() {
            if stop.is_some_and(|stop| stop.load(Ordering::Acquire)) {
                // A graceful shutdown: give back what was not started.
                let mut ids = vec![entry.leased.message.id];
                ids.extend(rest.map(|e| e.leased.message.id));
                s.outbox.release(&ids, s.instance).await?;
                break;
            }
            match self.publish_entry(entry).await {
                Ok(_) => {}
                Err(Error::LeaseLost { .. }) => bump(&s.counters.lease_lost),
                Err(error) => return Err(error),
            }
        }
        Ok(leased)
    }

    /// Publishes one leased row (see the type docs).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when its lease was taken over before it was
    /// marked; the outbox's.
    pub async fn publish_entry(&self, entry: OutboxEntry) -> Result<PublishOutcome> {
        let m = &entry.leased.message;
        let span = tracing::info_span!(
            "whizbang.outbox.publish",
            message_id = %m.id,
            message_type = %m.message_type,
            correlation_id = %m.correlation_id,
            causation_id = m.causation_id.map(tracing::field::display),
            attempt = entry.leased.attempt,
            instance = %self.shared.instance,
        );
        self.publish_inner(&entry).instrument(span).await
    }

    async fn publish_inner(&self, entry: &OutboxEntry) -> Result<PublishOutcome> {
        let s = &self.shared;
        let message = &entry.leased.message;
        let id = message.id;
        let event = self.stored_event(entry);
        let attempt = async {
            self.fire(
                &event,
                LifecycleStage::PreOutboxInline,
                LifecycleStage::PreOutboxDetached,
            )
            .await?;
            s.transport.publish(message).await
        };
        match attempt.await {
            Ok(()) => {
                s.outbox.mark_published(id, s.instance).await?;
                bump(&s.counters.published);
                tracing::debug!("published");
                if let Err(error) = self
                    .fire(
                        &event,
                        LifecycleStage::PostOutboxInline,
                        LifecycleStage::PostOutboxDetached,
                    )
                    .await
                {
                    tracing::warn!(%error, "a PostOutbox receptor failed (the event is published)");
                }
                Ok(PublishOutcome::Published)
            }
            Err(error) => {
                let text = error.to_string();
                let retry_in = backoff(
                    entry.leased.attempt,
                    s.options.backoff_base,
                    s.options.backoff_max,
                );
                tracing::warn!(error = %text, ?retry_in, "publish failed");
                match s.outbox.fail(id, s.instance, &text, retry_in).await? {
                    FailOutcome::DeadLettered { attempts } => {
                        bump(&s.counters.dead_lettered);
                        Ok(PublishOutcome::DeadLettered {
                            attempts,
                            error: text,
                        })
                    }
                    FailOutcome::Retry { attempts } => {
                        bump(&s.counters.retried);
                        Ok(PublishOutcome::Retrying {
                            attempts,
                            error: text,
                        })
                    }
                }
            }
        }
    }

    /// The event of a row, as its receptors see it (no global position).
    fn stored_event(&self, entry: &OutboxEntry) -> Arc<StoredEvent> {
        let m = &entry.leased.message;
        Arc::new(StoredEvent {
            position: 0,
            event_id: m.id.into(),
            stream_id: entry.stream_id,
            stream_version: entry.stream_version,
            event_type: std::borrow::Cow::Owned(m.message_type.clone()),
            data: m.payload.clone(),
            metadata: EventMetadata {
                correlation_id: m.correlation_id,
                causation_id: m.causation_id,
                timestamp: m.enqueued_at,
                extra: m.headers.clone(),
            },
            typed: None,
        })
    }

    /// Fires the receptors at an outbox point, when a runtime is set: the
    /// inline ones in a scope completed before this returns, the detached
    /// ones on their own tasks.
    async fn fire(
        &self,
        event: &Arc<StoredEvent>,
        inline: LifecycleStage,
        detached: LifecycleStage,
    ) -> Result<()> {
        let Some(runtime) = &self.shared.runtime else {
            return Ok(());
        };
        let scope = runtime.scope();
        scope.fire_stages(event, &[inline, detached]).await?;
        scope.complete().await
    }

    /// Starts publishing on a task of its own: a tick, then (when the tick
    /// found less than a full batch) a wait for a wake-up or the poll
    /// interval. Stop it with [`OutboxPublisherHandle::shutdown`].
    #[must_use]
    pub fn start(&self) -> OutboxPublisherHandle {
        let publisher = self.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(Notify::new());
        let task = {
            let stop = Arc::clone(&stop);
            let stopped = Arc::clone(&stopped);
            tokio::spawn(async move {
                let s = &publisher.shared;
                while !stop.load(Ordering::Acquire) {
                    let full = match publisher.tick(Some(&stop)).await {
                        Ok(n) => n >= s.options.batch,
                        Err(error) => {
                            tracing::warn!(%error, "outbox publisher tick failed");
                            false
                        }
                    };
                    if full {
                        continue;
                    }
                    tokio::select! {
                        () = s.wake.notified() => {}
                        () = stopped.notified() => {}
                        () = tokio::time::sleep(s.options.poll_interval) => {}
                    }
                }
            })
        };
        OutboxPublisherHandle {
            publisher: self.clone(),
            stop,
            stopped,
            task: Some(task),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A started [`OutboxPublisher`]. Dropping it stops the task at once (rows
/// in flight stay leased until their lease expires);
/// [`shutdown`](Self::shutdown) stops it gracefully.
#[derive(Debug)]
pub struct OutboxPublisherHandle {
    publisher: OutboxPublisher,
    stop: Arc<AtomicBool>,
    stopped: Arc<Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl OutboxPublisherHandle {
    /// The publisher (its counters).
    #[must_use]
    pub fn publisher(&self) -> &OutboxPublisher {
        &self.publisher
    }

    /// Wakes it now (rows were written).
    pub fn wake(&self) {
        self.publisher.shared.wake.notify_one();
    }

    /// Stops it gracefully: the publish in flight finishes and is marked,
    /// the rows it leased and did not start are released (their attempt
    /// given back), then the task ends.
    pub async fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        self.stopped.notify_one();
        if let Some(task) = self.task.take() {
            if let Err(error) = task.await {
                tracing::warn!(%error, "the outbox publisher task ended abnormally");
            }
        }
    }

    /// The instance that owns its leases.
    #[must_use]
    pub fn instance(&self) -> InstanceId {
        self.publisher.instance_id()
    }
}

impl Drop for OutboxPublisherHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

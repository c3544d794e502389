//! The inbox worker: recovers messages no delivery finishes (failed attempts
//! waiting for a retry, leases of dead instances), on a timer and on a wake-up.

use super::{Inbox, InboxStats};
use crate::error::Result;
use crate::message::MessageId;
use crate::queue::limits::MAX_BATCH;
use crate::util::lock;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

/// How an [`InboxWorker`] runs. Builder-style.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxWorkerOptions {
    /// How many messages it handles at once (default 8, at least 1).
    pub concurrency: usize,
    /// How often it looks for orphaned messages without a wake-up (default 1 s).
    pub poll_interval: Duration,
}

impl Default for InboxWorkerOptions {
    fn default() -> Self {
        InboxWorkerOptions {
            concurrency: 8,
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl InboxWorkerOptions {
    /// Sets [`concurrency`](Self::concurrency) (raised to 1).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.clamp(1, MAX_BATCH);
        self
    }

    /// Sets [`poll_interval`](Self::poll_interval) (at least 1 ms).
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(1));
        self
    }
}

/// Recovers orphaned inbox messages: those waiting in the queue (a failed
/// attempt's retry, a released lease) and those whose lease expired (their
/// instance died). Each is handled in its own scope by
/// [`Inbox::process`], at most [`concurrency`](InboxWorkerOptions::concurrency)
/// at once, leases renewed while they run.
///
/// It looks every [`poll_interval`](InboxWorkerOptions::poll_interval), when
/// woken ([`InboxWorkerHandle::wake`], or the `Notify` from
/// [`InboxWorkerHandle::waker`] given to a queue's notification listener), and
/// as soon as a slot frees up.
#[derive(Debug)]
pub struct InboxWorker;

impl InboxWorker {
    /// Starts a worker for `inbox` on the current tokio runtime.
    #[must_use]
    pub fn start(inbox: Inbox, options: InboxWorkerOptions) -> InboxWorkerHandle {
        let shared = Arc::new(Shared {
            wake: Arc::new(Notify::new()),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            grace: Mutex::new(None),
            in_flight: Mutex::new(HashSet::new()),
        });
        let task = tokio::spawn(run(inbox.clone(), options, Arc::clone(&shared)));
        InboxWorkerHandle {
            inbox,
            shared,
            task: Some(task),
        }
    }
}

struct Shared {
    wake: Arc<Notify>,
    stop: Notify,
    stopping: AtomicBool,
    /// How long a shutdown waits for messages in flight (`None`: until they finish).
    grace: Mutex<Option<Duration>>,
    /// The messages being handled.
    in_flight: Mutex<HashSet<MessageId>>,
}

/// Controls a running [`InboxWorker`]. Dropping it stops the worker without
/// waiting (its in-flight messages finish on their tasks); call
/// [`shutdown`](Self::shutdown) to wait for them.
pub struct InboxWorkerHandle {
    inbox: Inbox,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<usize>>,
}

impl std::fmt::Debug for InboxWorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxWorkerHandle")
            .field("instance", &self.inbox.instance())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl InboxWorkerHandle {
    /// Makes the worker look for messages now.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// The worker's wake-up: `notify_one` on it makes the worker look for
    /// messages now (hand it to a queue's notification listener).
    #[must_use]
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.wake)
    }

    /// The counters of the worker's inbox (its deliveries' included).
    #[must_use]
    pub fn stats(&self) -> InboxStats {
        self.inbox.stats()
    }

    /// The inbox it works for.
    #[must_use]
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Stops leasing and waits until every message in flight is completed or
    /// failed (their leases are renewed meanwhile), so nothing it took is left
    /// leased to it.
    ///
    /// # Errors
    /// [`Error::Invariant`](crate::Error::Invariant) when the worker's task panicked.
    pub async fn shutdown(self) -> Result<()> {
        self.stop(None).await.map(drop)
    }

    /// Stops leasing and waits up to `grace` for the messages in flight; those
    /// not finished by then are abandoned (their handling dropped, which
    /// stores nothing it had not appended yet) and their leases released, so
    /// another instance takes them at once (the attempt is given back).
    /// Returns how many were released.
    ///
    /// # Errors
    /// [`Error::Invariant`](crate::Error::Invariant) when the worker's task
    /// panicked.
    pub async fn shutdown_within(self, grace: Duration) -> Result<usize> {
        self.stop(Some(grace)).await
    }

    async fn stop(mut self, grace: Option<Duration>) -> Result<usize> {
        *lock(&self.shared.grace) = grace;
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.notify_one();
        match self.task.take() {
            Some(task) => task.await.map_err(|e| {
                crate::error::Error::Invariant(format!("the inbox worker's task failed: {e}"))
            }),
            None => Ok(0),
        }
    }
}

impl Drop for InboxWorkerHandle {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.notify_one();
    }
}

async fn run(inbox: Inbox, options: InboxWorkerOptions, shared: Arc<Shared>) -> usize {
    let slots = Arc::new(Semaphore::new(options.concurrency));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let instance = inbox.instance();
    let lease = inbox.options().lease;
    while !shared.stopping.load(Ordering::SeqCst) {
        let free = slots.available_permits();
        if free > 0 {
            let span = tracing::debug_span!("whizbang.inbox.tick", %instance, free);
            match inbox
                .queue()
                .lease_orphaned(instance, free, lease)
                .instrument(span)
                .await
            {
                Ok(batch) => {
                    for leased in batch {
                        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                            break; // cannot happen: at most `free` came back
                        };
                        let inbox = inbox.clone();
                        let shared = Arc::clone(&shared);
                        let id = leased.message.id;
                        lock(&shared.in_flight).insert(id);
                        tasks.spawn(async move {
                            let _slot = slot;
                            if let Err(error) = inbox.process(leased).await {
                                tracing::warn!(%error, "an inbox message was not finished");
                            }
                            lock(&shared.in_flight).remove(&id);
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "the inbox worker could not lease messages"),
            }
        }
        tokio::select! {
            () = shared.stop.notified() => {}
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(options.poll_interval) => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Graceful: finish what is in flight (each completes or fails its lease),
    // or within the grace period, then release what did not finish.
    let grace = *lock(&shared.grace);
    let drain = async { while tasks.join_next().await.is_some() {} };
    match grace {
        None => drain.await,
        Some(grace) => {
            if tokio::time::timeout(grace, drain).await.is_err() {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
        }
    }
    let left: Vec<MessageId> = lock(&shared.in_flight).drain().collect();
    if left.is_empty() {
        return 0;
    }
    if inbox.queue().release(&left, instance).await.is_ok() {
        return left.len();
    }
    // All or none failed (one finished or was taken over as it was dropped):
    // one at a time.
    let mut released = 0;
    for id in left {
        match inbox.queue().release(&[id], instance).await {
            Ok(()) => released += 1,
            Err(error) => tracing::warn!(
                %error, message_id = %id,
                "could not release the lease of an unfinished inbox message; it is taken over \
                 when the lease expires"
            ),
        }
    }
    released
}

//! The transport contract and the in-memory transport.

use crate::error::Result;
use crate::inbox::Inbox;
use crate::queue::QueuedMessage;
use crate::store::BoxFuture;
use crate::util::lock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Carries messages from one service's outbox to other services' inboxes.
/// Object-safe: use it as `Arc<dyn Transport>`.
///
/// Shaped for at-least-once brokers with acknowledgements:
/// - **Publishing side**: [`publish`](Self::publish) returns `Ok` only
///   after the broker accepted the message (a durable write, a publisher
///   confirm). An `Err` means it may or may not have been accepted: the
///   outbox publishes it again later, so the same message (same id) can
///   arrive twice.
/// - **Delivery side**: a transport's consumer hands each envelope to an
///   [`Inbox`] ([`Inbox::deliver`]) and acknowledges it to the broker only
///   after `deliver` returned `Ok` (processed, or a duplicate refused by its
///   id); on `Err` it does not acknowledge, so the broker redelivers. The
///   inbox makes the effects happen once.
///
/// Implementations: [`MemoryTransport`] here, `PgTransport` in
/// `whizbang-postgres` (into another service's inbox queue in the same
/// database, where that service's inbox worker is the consumer).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a whizbang transport",
    note = "use `whizbang_core::outbox::MemoryTransport` or a backend's transport (`PgTransport`)"
)]
pub trait Transport: Send + Sync + 'static {
    /// Publishes `message`; returns once the broker accepted it.
    ///
    /// # Errors
    /// The broker's (the outbox retries with backoff).
    fn publish<'a>(&'a self, message: &'a QueuedMessage) -> BoxFuture<'a, Result<()>>;
}

/// A transport in process: every published message is handed to each
/// subscribed [`Inbox`] on its own task, redelivered until `deliver`
/// succeeds (like a broker that is not acknowledged). Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    subscribers: Mutex<Vec<mpsc::UnboundedSender<QueuedMessage>>>,
    published: AtomicU64,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("subscribers", &lock(&self.inner.subscribers).len())
            .field("published", &self.published())
            .finish()
    }
}

/// A subscription of an inbox to a [`MemoryTransport`]: its delivery task.
/// Dropping it stops the deliveries (messages not yet delivered are lost
/// with it, as with a broker consumer that was never acknowledged).
#[derive(Debug)]
pub struct MemoryDelivery {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MemoryDelivery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MemoryTransport {
    /// A transport with no subscriber.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages accepted so far (each publish of the same message counts).
    #[must_use]
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }

    /// Hands every message published from now on to `inbox`, on a task of
    /// its own (spawned on the current tokio runtime): `deliver`, retried
    /// every 10 ms while it returns an error.
    #[must_use]
    pub fn subscribe(&self, inbox: Inbox) -> MemoryDelivery {
        let (tx, mut rx) = mpsc::unbounded_channel::<QueuedMessage>();
        lock(&self.inner.subscribers).push(tx);
        let task = tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                loop {
                    match inbox.deliver(message.clone()).await {
                        // Acknowledged.
                        Ok(_) => break,
                        Err(error) => {
                            tracing::warn!(%error, message_id = %message.id, "delivery failed; redelivering");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
        });
        MemoryDelivery { task }
    }
}

impl Transport for MemoryTransport {
    fn publish<'a>(&'a self, message: &'a QueuedMessage) -> BoxFuture<'a, Result<()>> {
        let mut subscribers = lock(&self.inner.subscribers);
        subscribers.retain(|s| s.send(message.clone()).is_ok());
        drop(subscribers);
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(())))
    }
}

//! The outbox: events that leave the service, written in the append's own
//! transaction and published to other services through a [`Transport`].
//!
//! This module owns the [`Outbox`] contract, its in-memory implementation
//! ([`MemoryOutbox`]), the [`Transport`] contract with an in-memory transport
//! ([`MemoryTransport`]) and the [`OutboxPublisher`] worker. It sits above
//! `dispatch` (the publisher fires the outbox lifecycle stages in a scope)
//! and `queue` (it shares the queue's lease vocabulary), beside `inbox`
//! (a transport's delivery side hands messages to an [`Inbox`](crate::inbox::Inbox)).
//!
//! # Which events leave
//! Declared per event type at compile time: `#[derive(Event)]
//! #[event(publish)]` sets [`Event::PUBLISH`](crate::Event::PUBLISH); every
//! event of that type emitted in a scope is marked
//! [`NewEvent::outbound`](crate::store::NewEvent::outbound), and the event
//! store writes it to the outbox **in the append itself**: the PostgreSQL
//! store inserts its `wh_outbox` row in the append's transaction, the memory
//! store writes to a [`MemoryOutbox`] under its lock
//! ([`MemoryEventStore::with_outbox`](crate::store::memory::MemoryEventStore::with_outbox)).
//! An append that fails (a concurrency error, a duplicate id) writes no
//! outbox row; one that commits writes all of them.
//!
//! # Publishing
//! The [`OutboxPublisher`] leases rows (a lease owner and an expiry; a
//! row whose lease expired is taken over, and the old owner's late
//! [`mark_published`](Outbox::mark_published) fails with
//! [`Error::LeaseLost`]), fires the `PreOutbox` receptors of the event,
//! publishes it through the [`Transport`] (which returns once the broker
//! accepted it), marks it published, then fires the `PostOutbox` receptors.
//! A failed publish is retried with exponential backoff; past the attempt
//! limit the row is dead-lettered with its last error. Delivery is
//! at least once: a publisher that dies between the broker's acceptance and
//! `mark_published` publishes the event again after its lease expires, and
//! the receiving inbox refuses the second copy by its id (the event id).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use whizbang_core::backend::MemoryEventStore;
//! use whizbang_core::inbox::Inbox;
//! use whizbang_core::outbox::{MemoryOutbox, MemoryTransport, OutboxPublisher};
//! use whizbang_core::queue::MemoryMessageQueue;
//! use whizbang_core::{Event, Runtime};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, Clone)]
//! #[event(name = "orders.shipped", publish)] // leaves the service
//! struct Shipped { #[stream_key] order: uuid::Uuid }
//!
//! // Service B's receptor for it, run when its inbox receives one.
//! #[derive(Default)]
//! struct Invoicing;
//! #[whizbang_core::fire_at(PreInboxInline)]
//! #[whizbang_core::receptor]
//! impl whizbang_core::Receptor<Shipped> for Invoicing {
//!     async fn handle(&self, _: Shipped, _: &mut whizbang_core::Context) -> whizbang_core::Result<()> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
//! // Service A: its store writes outbound events to its outbox.
//! let outbox = MemoryOutbox::new();
//! let a = Runtime::builder()
//!     .event_store(MemoryEventStore::new().with_outbox(outbox.clone()))
//!     .build()?;
//! // Service B: an inbox, fed by the transport.
//! let b = Runtime::in_memory()?;
//! let inbox = Inbox::builder(b.clone(), Arc::new(MemoryMessageQueue::new()))
//!     .event::<Shipped>()
//!     .build();
//! let transport = MemoryTransport::new();
//! let _delivery = transport.subscribe(inbox.clone());
//!
//! let scope = a.scope();
//! scope.publish(Shipped { order: uuid::Uuid::now_v7() }).await?;
//! scope.complete().await?;
//!
//! let publisher = OutboxPublisher::new(Arc::new(outbox.clone()), Arc::new(transport.clone()));
//! assert_eq!(publisher.publish_once().await?, 1);
//! # for _ in 0..200 { if inbox.stats().processed == 1 { break } tokio::time::sleep(Duration::from_millis(5)).await }
//! assert_eq!(inbox.stats().processed, 1);
//! # Ok(()) }
//! ```

mod memory;
mod publisher;
mod transport;

pub use memory::MemoryOutbox;
pub use publisher::{
    OutboxPublisher, OutboxPublisherHandle, OutboxPublisherOptions, OutboxStats, PublishOutcome,
};
pub use transport::{MemoryDelivery, MemoryTransport, Transport};

use crate::error::Result;
use crate::message::{EventId, InstanceId, MessageId, StreamId};
use crate::queue::{DeadLetter, FailOutcome, LeasedMessage, QueueOptions, QueuedMessage};
use crate::store::{BoxFuture, StoredEvent};
use std::time::Duration;

#[cfg(doc)]
use crate::error::Error;

/// One outbox row leased to a publisher: the message to publish and where
/// its event sits in the store.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    /// The message (its id is the event's id) with its lease.
    pub leased: LeasedMessage,
    /// The event's stream.
    pub stream_id: StreamId,
    /// The event's version in its stream.
    pub stream_version: u64,
}

/// Where an outbox row stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxStatus {
    /// Waiting to be published (or being published).
    Pending {
        /// Publish attempts so far.
        attempts: u32,
        /// The last attempt's error.
        last_error: Option<String>,
    },
    /// Published: the transport accepted it.
    Published {
        /// Attempts it took.
        attempts: u32,
    },
    /// Dead-lettered after the attempt limit.
    DeadLettered {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        error: String,
    },
}

/// The message an outbox publishes for a stored event: the event's id as
/// the message id (the receiving inbox's idempotency key), its wire name,
/// payload, correlation, causation and metadata, enqueued at its timestamp.
#[must_use]
pub fn message_of(event: &StoredEvent) -> QueuedMessage {
    QueuedMessage {
        id: MessageId::from(event.event_id),
        message_type: event.event_type.to_string(),
        payload: event.data.clone(),
        correlation_id: event.metadata.correlation_id,
        causation_id: event.metadata.causation_id,
        headers: event.metadata.extra.clone(),
        enqueued_at: event.metadata.timestamp,
    }
}

/// Rows of events to publish, leased to publishers (see the
/// [module docs](self)). Object-safe: use it as `Arc<dyn Outbox>`.
///
/// Rows are written by the event store in the append (not through this
/// trait). Implementations: [`MemoryOutbox`] here, `PgOutbox` in
/// `whizbang-postgres`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a whizbang outbox",
    note = "use `whizbang_core::outbox::MemoryOutbox` or a backend's outbox (`Postgres::outbox()`)"
)]
pub trait Outbox: Send + Sync + 'static {
    /// The options it runs with (its attempt limit).
    fn options(&self) -> &QueueOptions;

    /// Leases to `instance`, for `lease`, up to `max` rows that wait (their
    /// backoff passed) or whose lease expired, oldest first. Each lease
    /// counts an attempt; an expired row already at the attempt limit is
    /// dead-lettered instead.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a zero lease or a `max` of zero; a backend failure.
    fn lease(
        &self,
        instance: InstanceId,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<OutboxEntry>>>;

    /// Marks the row published (the transport accepted it).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when `instance` does not hold its lease (nothing
    /// changes: another publisher took it over and publishes it); a backend failure.
    fn mark_published(&self, id: MessageId, instance: InstanceId) -> BoxFuture<'_, Result<()>>;

    /// Records a failed publish: below the attempt limit the row waits
    /// `retry_in` before another lease; at the limit it is dead-lettered.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when `instance` does not hold its lease; a backend failure.
    fn fail<'a>(
        &'a self,
        id: MessageId,
        instance: InstanceId,
        error: &'a str,
        retry_in: Duration,
    ) -> BoxFuture<'a, Result<FailOutcome>>;

    /// Gives leases back unused (a graceful shutdown), attempts included.
    /// Ids `instance` does not hold are left alone.
    ///
    /// # Errors
    /// A backend failure.
    fn release<'a>(
        &'a self,
        ids: &'a [MessageId],
        instance: InstanceId,
    ) -> BoxFuture<'a, Result<()>>;

    /// Where the row of event `id` stands; `None` when there is none (the
    /// event is not outbound, or its append did not commit).
    ///
    /// # Errors
    /// A backend failure.
    fn status(&self, id: EventId) -> BoxFuture<'_, Result<Option<OutboxStatus>>>;

    /// Up to `max` dead-lettered rows, oldest first.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a `max` of zero; a backend failure.
    fn dead_letters(&self, max: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>>>;
}

/// The backoff before attempt `attempts + 1`: `base * 2^(attempts - 1)`,
/// at most `max`.
#[must_use]
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let shift = attempts.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << shift).min(max)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        let b = |n| backoff(n, ms(100), ms(1000));
        assert_eq!(
            [b(1), b(2), b(3), b(4), b(5)],
            [ms(100), ms(200), ms(400), ms(800), ms(1000)]
        );
        assert_eq!(backoff(u32::MAX, ms(100), ms(1000)), ms(1000));
    }
}

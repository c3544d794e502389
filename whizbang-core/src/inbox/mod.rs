//! The inbox: messages received from other processes, each handled once in
//! its own scope.
//!
//! This module owns the [`Inbox`] consumer and its [`InboxWorker`]. It sits
//! above `dispatch` (it opens scopes and hands events to
//! [`Scope::receive`]) and `queue` (it drives a [`MessageQueue`]); nothing in
//! the crate imports it.
//!
//! # How a message is handled
//! A transport hands a [`QueuedMessage`] to [`Inbox::deliver`], which
//! enqueues and leases it in one step ([`MessageQueue::enqueue_and_lease`]).
//! A delivery of an id that waits, is leased, was processed or is dead-lettered
//! runs nothing ([`Delivery::AlreadyQueued`] ..). A leased message is handled
//! by [`Inbox::process`]: a new scope on the runtime, the payload decoded as the
//! event type registered for its wire name ([`InboxBuilder::event`]) and
//! received through [`Scope::receive`] (its `PreInbox`/`PostInbox` receptors,
//! the distribute cascade, one append with the envelope's id, correlation
//! and causation), then the scope completes (its inline perspectives apply)
//! and the message is completed in the queue. While it runs, its lease is
//! renewed. When anything fails (the handler, a payload that does not
//! decode, a message type no event is registered for) the message is failed
//! with the error: retried by a worker, or dead-lettered at the queue's
//! attempt limit.
//!
//! The [`InboxWorker`] recovers what no delivery finishes: messages whose
//! handler failed, and those whose instance died holding the lease.
//!
//! ```
//! use std::sync::Arc;
//! use whizbang_core::inbox::{Delivery, Inbox};
//! use whizbang_core::queue::{MemoryMessageQueue, QueuedMessage};
//! use whizbang_core::{perspective, Envelope, Event, LensQuery, Runtime};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, Clone)]
//! struct Shipped { #[stream_key] order: uuid::Uuid }
//!
//! #[derive(Default, Clone, Serialize, Deserialize)]
//! struct Shipments { count: u32 }
//!
//! struct ShipmentsView;
//! #[perspective(model = Shipments, mode = inline)]
//! impl ShipmentsView {
//!     fn shipped(m: &mut Shipments, _: &Shipped) { m.count += 1; }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
//! let runtime = Runtime::in_memory()?;
//! let inbox = Inbox::builder(runtime.clone(), Arc::new(MemoryMessageQueue::new()))
//!     .event::<Shipped>()
//!     .build();
//! let order = uuid::Uuid::now_v7();
//! // What a transport hands over.
//! let message = QueuedMessage::from_envelope(&Envelope::new(Shipped { order }))?;
//! assert_eq!(inbox.deliver(message.clone()).await?, Delivery::Processed);
//! assert_eq!(inbox.deliver(message).await?, Delivery::AlreadyProcessed);
//! let view = runtime.lens::<ShipmentsView>().get(order.into()).await?.unwrap();
//! assert_eq!(view.count, 1, "handled once");
//! # Ok(()) }
//! ```

mod worker;

pub use worker::{InboxWorker, InboxWorkerHandle, InboxWorkerOptions};

use crate::dispatch::{Runtime, Scope};
use crate::error::{Error, Result};
use crate::message::{Event, InstanceId};
use crate::queue::{EnqueueOutcome, FailOutcome, LeasedMessage, MessageQueue, QueuedMessage};
use crate::store::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Hands a decoded message to a scope (one per registered event type).
type Route = for<'a> fn(&'a Scope, &'a QueuedMessage) -> BoxFuture<'a, Result<()>>;

fn receive_event<'a, E: Event>(
    scope: &'a Scope,
    message: &'a QueuedMessage,
) -> BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let envelope = message.decode::<E>()?;
        scope.receive(envelope).await.map(drop)
    })
}

/// What [`Inbox::deliver`] or [`Inbox::process`] did with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// Handled and completed: its effects are stored and it is recorded processed.
    Processed,
    /// Its handling failed; it waits in the queue for another attempt.
    Retrying {
        /// Attempts made so far.
        attempts: u32,
        /// What went wrong.
        error: String,
    },
    /// Its handling failed at the attempt limit: it is in the dead letters.
    DeadLettered {
        /// Attempts made.
        attempts: u32,
        /// What went wrong.
        error: String,
    },
    /// The id waits in the queue or is being handled: nothing ran.
    AlreadyQueued,
    /// The id was processed: nothing ran (acknowledge the delivery).
    AlreadyProcessed,
    /// The id is in the dead letters: nothing ran.
    AlreadyDeadLettered,
}

/// How an [`Inbox`] leases and records messages. Builder-style.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxOptions {
    /// How long a lease lasts (default 30 s). A message whose instance stops
    /// renewing is taken over by another instance's worker after this.
    pub lease: Duration,
    /// How often a message being handled has its lease renewed (default a
    /// third of the lease).
    pub renew_every: Duration,
    /// The handler name its processed records carry (default `whizbang.inbox`).
    pub handler: String,
}

impl Default for InboxOptions {
    fn default() -> Self {
        InboxOptions {
            lease: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
            handler: "whizbang.inbox".to_owned(),
        }
    }
}

/// Counters of an inbox since it was built, shared by its deliveries and its
/// workers (see [`Inbox::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxStats {
    /// Messages handled and completed.
    pub processed: u64,
    /// Failed attempts given back to the queue for a retry.
    pub retried: u64,
    /// Messages moved to the dead letters by a failed attempt.
    pub dead_lettered: u64,
    /// Deliveries refused as already queued, processed or dead-lettered.
    pub duplicates: u64,
    /// Messages whose lease was taken over before they completed or failed
    /// (another instance handles them).
    pub lease_lost: u64,
    /// Queue round trips its workers made ([`MessageQueue::tick`]).
    pub ticks: u64,
    /// Messages leasable in the queue at a worker's last measure (counted up
    /// to [`MAX_BATCH`](crate::queue::limits::MAX_BATCH)); `None` before the
    /// first, or when the queue cannot tell.
    pub queue_depth: Option<u64>,
    /// How long the oldest leasable message had waited at a worker's last
    /// measure (the queue lag); `None` as for
    /// [`queue_depth`](Self::queue_depth).
    pub queue_lag: Option<Duration>,
}

/// `u64::MAX` in a gauge: not measured.
const UNMEASURED: u64 = u64::MAX;

struct Counters {
    processed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    duplicates: AtomicU64,
    lease_lost: AtomicU64,
    ticks: AtomicU64,
    queue_depth: AtomicU64,
    /// Microseconds.
    queue_lag: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            processed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            lease_lost: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            queue_depth: AtomicU64::new(UNMEASURED),
            queue_lag: AtomicU64::new(UNMEASURED),
        }
    }
}

fn gauge(value: &AtomicU64) -> Option<u64> {
    Some(value.load(Ordering::Relaxed)).filter(|v| *v != UNMEASURED)
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct InboxInner {
    runtime: Runtime,
    queue: Arc<dyn MessageQueue>,
    instance: InstanceId,
    options: InboxOptions,
    routes: HashMap<&'static str, Route>,
    counters: Counters,
}

/// The inbox consumer: enqueues and leases delivered messages and handles
/// each once in its own scope (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    inner: Arc<InboxInner>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("instance", &self.inner.instance)
            .field("events", &self.inner.routes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Builds an [`Inbox`]: which event types it receives, as which instance.
pub struct InboxBuilder {
    runtime: Runtime,
    queue: Arc<dyn MessageQueue>,
    instance: InstanceId,
    options: InboxOptions,
    routes: HashMap<&'static str, Route>,
}

impl std::fmt::Debug for InboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxBuilder")
            .field("instance", &self.instance)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl InboxBuilder {
    /// Receives messages named [`E::NAME`](crate::Message::NAME) as events of type `E`.
    #[must_use]
    pub fn event<E: Event>(mut self) -> Self {
        self.routes.insert(E::NAME, receive_event::<E>);
        self
    }

    /// The instance that owns this inbox's leases (default a new one).
    #[must_use]
    pub fn instance(mut self, instance: InstanceId) -> Self {
        self.instance = instance;
        self
    }

    /// The lease length; renewals every third of it.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        let lease = lease.max(Duration::from_millis(3));
        self.options.lease = lease;
        self.options.renew_every = lease / 3;
        self
    }

    /// The handler name processed records carry.
    #[must_use]
    pub fn handler(mut self, handler: impl Into<String>) -> Self {
        self.options.handler = handler.into();
        self
    }

    /// The inbox.
    #[must_use]
    pub fn build(self) -> Inbox {
        Inbox {
            inner: Arc::new(InboxInner {
                runtime: self.runtime,
                queue: self.queue,
                instance: self.instance,
                options: self.options,
                routes: self.routes,
                counters: Counters::default(),
            }),
        }
    }
}

impl Inbox {
    /// An inbox on `runtime` whose messages wait in `queue`.
    #[must_use]
    pub fn builder(runtime: Runtime, queue: Arc<dyn MessageQueue>) -> InboxBuilder {
        InboxBuilder {
            runtime,
            queue,
            instance: InstanceId::new(),
            options: InboxOptions::default(),
            routes: HashMap::new(),
        }
    }

    /// The instance that owns this inbox's leases.
    #[must_use]
    pub fn instance(&self) -> InstanceId {
        self.inner.instance
    }

    /// The options it runs with.
    #[must_use]
    pub fn options(&self) -> &InboxOptions {
        &self.inner.options
    }

    /// Its queue.
    #[must_use]
    pub fn queue(&self) -> &Arc<dyn MessageQueue> {
        &self.inner.queue
    }

    /// Its runtime.
    #[must_use]
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> InboxStats {
        let c = &self.inner.counters;
        InboxStats {
            processed: c.processed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            lease_lost: c.lease_lost.load(Ordering::Relaxed),
            ticks: c.ticks.load(Ordering::Relaxed),
            queue_depth: gauge(&c.queue_depth),
            queue_lag: gauge(&c.queue_lag).map(Duration::from_micros),
        }
    }

    /// Takes a message a transport delivered: enqueues and leases it, and
    /// when it was new, handles it ([`process`](Self::process)).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a message no queue accepts
    /// ([`QueuedMessage::validate`]); a queue failure; [`Error::LeaseLost`]
    /// when another instance took the message over before it finished. A
    /// failing handler is not an error here: see [`Delivery`].
    pub async fn deliver(&self, message: QueuedMessage) -> Result<Delivery> {
        let inner = &self.inner;
        let outcome = inner
            .queue
            .enqueue_and_lease(message, inner.instance, inner.options.lease)
            .await?;
        let delivery = match outcome {
            EnqueueOutcome::Leased(leased) => return self.process(leased).await,
            EnqueueOutcome::AlreadyQueued => Delivery::AlreadyQueued,
            EnqueueOutcome::AlreadyProcessed => Delivery::AlreadyProcessed,
            EnqueueOutcome::DeadLettered => Delivery::AlreadyDeadLettered,
        };
        bump(&inner.counters.duplicates);
        Ok(delivery)
    }

    /// Handles a message this inbox's instance leased: in a new scope,
    /// renewing the lease meanwhile; then completes it, or fails it with the
    /// error (a retry, or the dead letters at the attempt limit).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease was taken over before the message
    /// completed or failed (its effects may be stored: the new owner's
    /// attempt finds its event id stored and completes); a queue failure.
    pub async fn process(&self, leased: LeasedMessage) -> Result<Delivery> {
        let message = &leased.message;
        let span = tracing::info_span!(
            "whizbang.inbox.process",
            message_id = %message.id,
            message_type = %message.message_type,
            correlation_id = %message.correlation_id,
            causation_id = message.causation_id.map(tracing::field::display),
            attempt = leased.attempt,
            instance = %self.inner.instance,
        );
        self.process_inner(&leased).instrument(span).await
    }

    async fn process_inner(&self, leased: &LeasedMessage) -> Result<Delivery> {
        let inner = &self.inner;
        let id = leased.message.id;
        let result = self.handle_renewing(&leased.message).await;
        let result = match result {
            // An earlier attempt stored the event and stopped before it
            // completed the message: its effects happened; complete it now.
            Err(Error::DuplicateEventId { event_id }) if event_id == id.into() => Ok(()),
            other => other,
        };
        let outcome = match result {
            Ok(()) => inner
                .queue
                .complete(id, inner.instance, &inner.options.handler)
                .await
                .map(|()| Delivery::Processed),
            Err(error) => {
                let text = error.to_string();
                tracing::warn!(error = %text, "inbox message failed");
                inner
                    .queue
                    .fail(id, inner.instance, &text)
                    .await
                    .map(|outcome| match outcome {
                        FailOutcome::DeadLettered { attempts } => Delivery::DeadLettered {
                            attempts,
                            error: text,
                        },
                        FailOutcome::Retry { attempts } => Delivery::Retrying {
                            attempts,
                            error: text,
                        },
                    })
            }
        };
        let c = &inner.counters;
        match &outcome {
            Ok(Delivery::Processed) => bump(&c.processed),
            Ok(Delivery::Retrying { .. }) => bump(&c.retried),
            Ok(Delivery::DeadLettered { .. }) => bump(&c.dead_lettered),
            Err(Error::LeaseLost { .. }) => bump(&c.lease_lost),
            _ => {}
        }
        outcome
    }

    /// Handles a message this inbox's instance leased, in a new scope, like
    /// [`process`](Self::process), but neither renews its lease nor
    /// completes or fails it: the worker does that in its ticks. `Err` holds
    /// the error text to fail it with.
    pub(crate) async fn handle_leased(
        &self,
        leased: &LeasedMessage,
    ) -> std::result::Result<(), String> {
        let message = &leased.message;
        let span = tracing::info_span!(
            "whizbang.inbox.process",
            message_id = %message.id,
            message_type = %message.message_type,
            correlation_id = %message.correlation_id,
            causation_id = message.causation_id.map(tracing::field::display),
            attempt = leased.attempt,
            instance = %self.inner.instance,
        );
        let id = message.id;
        match self.handle(message).instrument(span.clone()).await {
            Ok(()) => Ok(()),
            // An earlier attempt stored the event and stopped before it
            // completed the message: its effects happened; complete it now.
            Err(Error::DuplicateEventId { event_id }) if event_id == id.into() => Ok(()),
            Err(error) => {
                let text = error.to_string();
                span.in_scope(|| tracing::warn!(error = %text, "inbox message failed"));
                Err(text)
            }
        }
    }

    /// Runs the message's handling while renewing its lease.
    async fn handle_renewing(&self, message: &QueuedMessage) -> Result<()> {
        let inner = &self.inner;
        let work = self.handle(message);
        tokio::pin!(work);
        let every = inner.options.renew_every.max(Duration::from_millis(1));
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = renew.tick() => {
                    if let Err(error) = inner
                        .queue
                        .renew(&[message.id], inner.instance, inner.options.lease)
                        .await
                    {
                        tracing::warn!(%error, "could not renew the lease of an inbox message");
                    }
                }
            }
        }
    }

    /// Decodes and receives the message in a new scope, then completes the scope.
    async fn handle(&self, message: &QueuedMessage) -> Result<()> {
        let Some(route) = self.inner.routes.get(message.message_type.as_str()) else {
            return Err(Error::InvalidInput(format!(
                "inbox message {} is a `{}`, a type this inbox does not receive; register its \
                 event with `InboxBuilder::event::<E>()` (and replay it from the dead letters)",
                message.id, message.message_type
            )));
        };
        let scope = self.inner.runtime.scope();
        route(&scope, message).await?;
        scope.complete().await
    }
}

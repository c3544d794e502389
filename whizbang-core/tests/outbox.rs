//! The outbox in memory: outbound events (`#[event(publish)]`) written by
//! the append, published by the outbox publisher through the memory
//! transport into a second runtime's inbox; retries with backoff, dead
//! letters, the outbox lifecycle stages, a publisher dropped mid-publish.

mod common;
use common::{bounded, ms, until};

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::backend::{BoxFuture, MemoryEventStore};
use whizbang_core::inbox::Inbox;
use whizbang_core::outbox::{
    MemoryOutbox, MemoryTransport, Outbox, OutboxPublisher, OutboxPublisherOptions, OutboxStatus,
    PublishOutcome, Transport,
};
use whizbang_core::queue::{MemoryMessageQueue, QueueOptions, QueuedMessage};
use whizbang_core::{
    fire_at, receptor, Context, Error, Event, ExpectedVersion, FromServices, InstanceId, Receptor,
    Result, Runtime, Services,
};

/// Leaves the service.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "test.order_placed", publish)]
struct OrderPlaced {
    #[stream_key]
    order: Uuid,
    amount: u32,
}

/// Stays in the service.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "test.note_taken")]
struct NoteTaken {
    #[stream_key]
    order: Uuid,
}

/// What the receiving service's receptors and the outbox stages count.
#[derive(Default)]
struct Effects {
    received: Mutex<HashMap<Uuid, u32>>,
    notes: AtomicUsize,
    pre_outbox: AtomicUsize,
    post_outbox: AtomicUsize,
}

impl Effects {
    fn received(&self, order: Uuid) -> u32 {
        self.received
            .lock()
            .unwrap()
            .get(&order)
            .copied()
            .unwrap_or(0)
    }
}

struct Billing(Arc<Effects>);
impl FromServices for Billing {
    fn from_services(s: &Services) -> Result<Self> {
        Ok(Billing(s.require::<Effects>("Billing")?))
    }
}

/// Runs only for events received from another service.
#[fire_at(PreInboxInline)]
#[receptor]
impl Receptor<OrderPlaced> for Billing {
    async fn handle(&self, e: OrderPlaced, _: &mut Context) -> Result<()> {
        *self.0.received.lock().unwrap().entry(e.order).or_default() += 1;
        Ok(())
    }
}

#[fire_at(PreInboxInline)]
#[receptor]
impl Receptor<NoteTaken> for Billing {
    async fn handle(&self, _: NoteTaken, _: &mut Context) -> Result<()> {
        self.0.notes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct OutboxWatch(Arc<Effects>);
impl FromServices for OutboxWatch {
    fn from_services(s: &Services) -> Result<Self> {
        Ok(OutboxWatch(s.require::<Effects>("OutboxWatch")?))
    }
}

#[fire_at(PreOutboxInline)]
#[receptor]
impl Receptor<OrderPlaced> for OutboxWatch {
    async fn handle(&self, _: OrderPlaced, _: &mut Context) -> Result<()> {
        self.0.pre_outbox.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Published(Arc<Effects>);
impl FromServices for Published {
    fn from_services(s: &Services) -> Result<Self> {
        Ok(Published(s.require::<Effects>("Published")?))
    }
}

#[fire_at(PostOutboxInline)]
#[receptor]
impl Receptor<OrderPlaced> for Published {
    async fn handle(&self, _: OrderPlaced, _: &mut Context) -> Result<()> {
        self.0.post_outbox.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Service A: its store writes outbound events to `outbox`.
fn sender(outbox: &MemoryOutbox) -> (Runtime, Arc<Effects>) {
    let effects = Arc::new(Effects::default());
    let rt = Runtime::builder()
        .event_store(MemoryEventStore::new().with_outbox(outbox.clone()))
        .shared_service(Arc::clone(&effects))
        .build()
        .unwrap();
    (rt, effects)
}

/// Service B: an inbox for both event types.
fn receiver() -> (Runtime, Inbox, Arc<Effects>) {
    let effects = Arc::new(Effects::default());
    let rt = Runtime::builder()
        .shared_service(Arc::clone(&effects))
        .build()
        .unwrap();
    let inbox = Inbox::builder(rt.clone(), Arc::new(MemoryMessageQueue::new()))
        .event::<OrderPlaced>()
        .event::<NoteTaken>()
        .build();
    (rt, inbox, effects)
}

fn fast() -> OutboxPublisherOptions {
    OutboxPublisherOptions::default()
        .poll_interval(ms(5))
        .backoff(ms(5), ms(40))
}

#[tokio::test]
async fn an_outbound_event_reaches_the_other_service_and_a_local_one_does_not() {
    let outbox = MemoryOutbox::new();
    let (a, a_effects) = sender(&outbox);
    let (_b, inbox, b_effects) = receiver();
    let transport = MemoryTransport::new();
    let _delivery = transport.subscribe(inbox.clone());

    let order = Uuid::now_v7();
    let scope = a.scope();
    let placed = scope
        .publish(OrderPlaced { order, amount: 7 })
        .await
        .unwrap();
    scope.publish(NoteTaken { order }).await.unwrap();
    scope.complete().await.unwrap();
    assert_eq!(outbox.len(), 1, "only the outbound event has an outbox row");
    assert!(matches!(
        outbox.status(placed).await.unwrap(),
        Some(OutboxStatus::Pending { attempts: 0, .. })
    ));

    let publisher = OutboxPublisher::new(Arc::new(outbox.clone()), Arc::new(transport.clone()))
        .runtime(a.clone())
        .options(fast())
        .wake_on(outbox.wakeup());
    let handle = publisher.start();
    until(|| b_effects.received(order) == 1).await;
    until(|| inbox.stats().processed == 1).await;
    assert_eq!(
        b_effects.notes.load(Ordering::SeqCst),
        0,
        "NoteTaken never left A"
    );
    assert_eq!(
        a_effects.received(order),
        0,
        "A's inbox receptor did not run in A"
    );
    assert!(matches!(
        outbox.status(placed).await.unwrap(),
        Some(OutboxStatus::Published { attempts: 1 })
    ));
    // The outbox stages fired in the publisher, once each.
    assert_eq!(a_effects.pre_outbox.load(Ordering::SeqCst), 1);
    until(|| a_effects.post_outbox.load(Ordering::SeqCst) == 1).await;
    // The event arrived in B with A's event id (B's store holds it under it).
    let located = inbox
        .runtime()
        .event_store()
        .locate(&[placed])
        .await
        .unwrap();
    assert_eq!(located.len(), 1, "B stored the event under A's event id");
    bounded(handle.shutdown()).await;
    assert_eq!(publisher.stats().published, 1);
}

#[tokio::test]
async fn a_failed_append_writes_no_outbox_row() {
    let outbox = MemoryOutbox::new();
    let (a, _) = sender(&outbox);
    let order = Uuid::now_v7();
    let scope = a.scope();
    scope
        .publish(OrderPlaced { order, amount: 1 })
        .await
        .unwrap();
    scope.complete().await.unwrap();
    assert_eq!(outbox.len(), 1);
    // An append at a stale expected version fails: no event, no outbox row.
    let err = a
        .event_store()
        .append(vec![whizbang_core::backend::StreamAppend {
            stream_id: order.into(),
            expected: ExpectedVersion::NoStream,
            events: vec![whizbang_core::backend::NewEvent {
                event_id: whizbang_core::EventId::new(),
                stream_id: order.into(),
                event_type: "test.order_placed",
                data: serde_json::value::to_raw_value(&OrderPlaced { order, amount: 2 }).unwrap(),
                metadata: whizbang_core::backend::EventMetadata {
                    correlation_id: whizbang_core::MessageId::new(),
                    causation_id: None,
                    timestamp: std::time::SystemTime::now(),
                    extra: whizbang_core::Metadata::default(),
                },
                typed: None,
                outbound: true,
            }],
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Concurrency { .. }), "{err:?}");
    assert_eq!(outbox.len(), 1, "the failed append wrote no outbox row");
}

/// Fails the first `failures` publishes, then hands over to the memory transport.
struct Flaky {
    failures: AtomicU32,
    inner: MemoryTransport,
    attempts: AtomicU32,
}

impl Transport for Flaky {
    fn publish<'a>(&'a self, message: &'a QueuedMessage) -> BoxFuture<'a, Result<()>> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            Box::pin(async { Err(Error::rejected("the broker is down")) })
        } else {
            self.inner.publish(message)
        }
    }
}

#[tokio::test]
async fn a_failed_publish_is_retried_with_backoff_and_delivered_once() {
    let outbox = MemoryOutbox::new();
    let (a, _) = sender(&outbox);
    let (_b, inbox, b_effects) = receiver();
    let memory = MemoryTransport::new();
    let _delivery = memory.subscribe(inbox.clone());
    let flaky = Arc::new(Flaky {
        failures: AtomicU32::new(3),
        inner: memory,
        attempts: AtomicU32::new(0),
    });

    let order = Uuid::now_v7();
    let scope = a.scope();
    let placed = scope
        .publish(OrderPlaced { order, amount: 3 })
        .await
        .unwrap();
    scope.complete().await.unwrap();

    let publisher = OutboxPublisher::new(Arc::new(outbox.clone()), flaky.clone()).options(
        OutboxPublisherOptions::default()
            .poll_interval(ms(1))
            .backoff(ms(30), ms(1000)),
    );
    // First attempt fails; the row is not leasable again before its backoff.
    assert_eq!(publisher.publish_once().await.unwrap(), 1);
    assert_eq!(publisher.publish_once().await.unwrap(), 0, "backing off");
    let started = std::time::Instant::now();
    let handle = publisher.start();
    until(|| b_effects.received(order) == 1).await;
    // Backoffs of 30 + 60 + 120 ms came before the fourth attempt.
    assert!(
        started.elapsed() >= Duration::from_millis(60),
        "retried without backoff"
    );
    bounded(handle.shutdown()).await;
    assert_eq!(flaky.attempts.load(Ordering::SeqCst), 4);
    let stats = publisher.stats();
    assert_eq!((stats.retried, stats.published), (3, 1));
    assert!(matches!(
        outbox.status(placed).await.unwrap(),
        Some(OutboxStatus::Published { attempts: 4 })
    ));
    until(|| inbox.stats().processed == 1).await;
    let processed = inbox.queue().processed(placed.into()).await.unwrap();
    assert!(processed.is_some(), "B recorded the message processed");
    assert_eq!(b_effects.received(order), 1, "delivered once");
}

struct Down;
impl Transport for Down {
    fn publish<'a>(&'a self, _: &'a QueuedMessage) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Err(Error::rejected("the broker refuses everything")) })
    }
}

#[tokio::test]
async fn a_publish_that_always_fails_is_dead_lettered_at_the_attempt_limit() {
    let outbox = MemoryOutbox::with_options(QueueOptions::default().max_attempts(3));
    let (a, _) = sender(&outbox);
    let order = Uuid::now_v7();
    let scope = a.scope();
    let placed = scope
        .publish(OrderPlaced { order, amount: 1 })
        .await
        .unwrap();
    scope.complete().await.unwrap();

    let publisher = OutboxPublisher::new(Arc::new(outbox.clone()), Arc::new(Down)).options(fast());
    let handle = publisher.start();
    until(|| publisher.stats().dead_lettered == 1).await;
    bounded(handle.shutdown()).await;
    assert_eq!(publisher.stats().retried, 2);
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, placed.into());
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].error.contains("refuses everything"),
        "{}",
        dead[0].error
    );
    assert!(matches!(
        outbox.status(placed).await.unwrap(),
        Some(OutboxStatus::DeadLettered { attempts: 3, .. })
    ));
}

/// Accepts the message (hands it to the broker), then never returns: the
/// publisher dies between the broker's acceptance and marking the row.
struct AcceptsThenHangs(MemoryTransport);
impl Transport for AcceptsThenHangs {
    fn publish<'a>(&'a self, message: &'a QueuedMessage) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.0.publish(message).await?;
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_publisher_dropped_mid_publish_is_taken_over_and_the_event_handled_once() {
    let outbox = MemoryOutbox::new();
    let (a, _) = sender(&outbox);
    let (_b, inbox, b_effects) = receiver();
    let transport = MemoryTransport::new();
    let _delivery = transport.subscribe(inbox.clone());
    let order = Uuid::now_v7();
    let scope = a.scope();
    let placed = scope
        .publish(OrderPlaced { order, amount: 5 })
        .await
        .unwrap();
    scope.complete().await.unwrap();

    let lease = OutboxPublisherOptions::default().lease(ms(50));
    let dying = OutboxPublisher::new(
        Arc::new(outbox.clone()),
        Arc::new(AcceptsThenHangs(transport.clone())),
    )
    .options(lease.clone());
    // The first publisher hangs after the broker accepted: drop it there.
    let tick = tokio::time::timeout(ms(100), dying.publish_once()).await;
    assert!(tick.is_err(), "the hanging publish was dropped");
    until(|| b_effects.received(order) == 1).await;
    assert!(matches!(
        outbox.status(placed).await.unwrap(),
        Some(OutboxStatus::Pending { attempts: 1, .. })
    ));

    // Another publisher takes the expired lease over and publishes again.
    let survivor = OutboxPublisher::new(Arc::new(outbox.clone()), Arc::new(transport.clone()))
        .options(lease.poll_interval(ms(5)));
    let handle = survivor.start();
    until(|| survivor.stats().published == 1).await;
    bounded(handle.shutdown()).await;
    assert_eq!(transport.published(), 2, "published twice (at least once)");
    until(|| inbox.stats().duplicates == 1).await;
    assert_eq!(b_effects.received(order), 1, "handled once in B");
    // The first owner's late mark is refused.
    let late = outbox
        .mark_published(placed.into(), dying.instance_id())
        .await;
    assert!(matches!(late, Err(Error::LeaseLost { .. })), "{late:?}");
}

#[tokio::test]
async fn release_gives_the_leases_and_their_attempts_back() {
    let outbox = MemoryOutbox::new();
    let (a, _) = sender(&outbox);
    let scope = a.scope();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let order = Uuid::now_v7();
        ids.push(
            scope
                .publish(OrderPlaced { order, amount: 1 })
                .await
                .unwrap(),
        );
    }
    scope.complete().await.unwrap();
    let me = InstanceId::new();
    let leased = outbox.lease(me, 10, ms(60_000)).await.unwrap();
    assert_eq!(leased.len(), 3);
    let all: Vec<_> = leased.iter().map(|e| e.leased.message.id).collect();
    outbox.release(&all, me).await.unwrap();
    for id in ids {
        assert!(matches!(
            outbox.status(id).await.unwrap(),
            Some(OutboxStatus::Pending { attempts: 0, .. })
        ));
    }
    let outcome = {
        let publisher =
            OutboxPublisher::new(Arc::new(outbox.clone()), Arc::new(MemoryTransport::new()));
        let entry = outbox
            .lease(publisher.instance_id(), 1, ms(60_000))
            .await
            .unwrap();
        publisher
            .publish_entry(entry.into_iter().next().unwrap())
            .await
            .unwrap()
    };
    assert_eq!(outcome, PublishOutcome::Published);
}

/// Accepts every message after a delay.
struct Slow(MemoryTransport, Duration);
impl Transport for Slow {
    fn publish<'a>(&'a self, message: &'a QueuedMessage) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            tokio::time::sleep(self.1).await;
            self.0.publish(message).await
        })
    }
}

#[tokio::test]
async fn a_graceful_shutdown_finishes_the_publish_in_flight_and_releases_the_rest() {
    let outbox = MemoryOutbox::new();
    let (a, _) = sender(&outbox);
    let scope = a.scope();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let order = Uuid::now_v7();
        ids.push(
            scope
                .publish(OrderPlaced { order, amount: 1 })
                .await
                .unwrap(),
        );
    }
    scope.complete().await.unwrap();
    let transport = MemoryTransport::new();
    let publisher = OutboxPublisher::new(
        Arc::new(outbox.clone()),
        Arc::new(Slow(transport.clone(), ms(100))),
    )
    .options(fast().batch(5));
    let handle = publisher.start();
    // The first publish is in flight (all five are leased).
    until(|| {
        ids.iter().all(|id| {
            matches!(
                futures_now(outbox.status(*id)),
                Some(OutboxStatus::Pending { attempts: 1, .. })
            )
        })
    })
    .await;
    bounded(handle.shutdown()).await;
    assert_eq!(transport.published(), 1, "only the publish in flight ran");
    let mut published = 0;
    for id in &ids {
        match outbox.status(*id).await.unwrap() {
            Some(OutboxStatus::Published { attempts: 1 }) => published += 1,
            Some(OutboxStatus::Pending { attempts: 0, .. }) => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(
        published, 1,
        "the publish in flight finished and was marked"
    );
    assert_eq!(publisher.stats().published, 1);
}

/// The status now (the memory outbox answers at once).
fn futures_now(f: BoxFuture<'_, Result<Option<OutboxStatus>>>) -> Option<OutboxStatus> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = f;
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r.unwrap(),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test]
async fn a_received_outbound_event_is_not_published_again_by_the_receiver() {
    let a_outbox = MemoryOutbox::new();
    let (a, _) = sender(&a_outbox);
    // B's store has an outbox too: what B receives must not land in it.
    let b_outbox = MemoryOutbox::new();
    let effects = Arc::new(Effects::default());
    let b = Runtime::builder()
        .event_store(MemoryEventStore::new().with_outbox(b_outbox.clone()))
        .shared_service(Arc::clone(&effects))
        .build()
        .unwrap();
    let inbox = Inbox::builder(b, Arc::new(MemoryMessageQueue::new()))
        .event::<OrderPlaced>()
        .build();
    let transport = MemoryTransport::new();
    let _delivery = transport.subscribe(inbox.clone());
    let order = Uuid::now_v7();
    let scope = a.scope();
    scope
        .publish(OrderPlaced { order, amount: 2 })
        .await
        .unwrap();
    scope.complete().await.unwrap();
    let publisher = OutboxPublisher::new(Arc::new(a_outbox.clone()), Arc::new(transport));
    assert_eq!(publisher.publish_once().await.unwrap(), 1);
    until(|| effects.received(order) == 1).await;
    until(|| inbox.stats().processed == 1).await;
    assert!(
        b_outbox.is_empty(),
        "B wrote no outbox row for a received event"
    );
}

#[tokio::test]
async fn the_memory_outbox_keeps_the_outbox_contracts() {
    use whizbang_core::backend::conformance::outbox::{run_all, OutboxUnderTest};
    run_all(&|| async {
        let outbox = MemoryOutbox::with_options(QueueOptions::default().max_attempts(3));
        OutboxUnderTest {
            events: Arc::new(MemoryEventStore::json().with_outbox(outbox.clone())),
            outbox: Arc::new(outbox),
            tick: ms(20),
        }
    })
    .await;
}

//! The inbox consumer and its worker on the memory queue: each message
//! handled once, poison messages dead-lettered, orphans recovered, a graceful
//! shutdown that loses nothing, an inbox-stage receptor that waits for a
//! perspective.

mod common;
use common::{bounded, until};

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::inbox::{Delivery, Inbox, InboxWorker, InboxWorkerOptions};
use whizbang_core::queue::{
    EnqueueOutcome, ManualClock, MemoryMessageQueue, MessageQueue, QueueOptions, QueuedMessage,
};
use whizbang_core::{
    await_perspective_sync, fire_at, perspective, receptor, Context, Envelope, Error, Event,
    FromServices, InstanceId, LensQuery, Receptor, Result, Runtime, Services,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
struct Paid {
    #[stream_key]
    order: Uuid,
    amount: u32,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
struct Poison {
    #[stream_key]
    id: Uuid,
}

/// Side effects the receptors count, per order.
#[derive(Default)]
struct Effects {
    handled: Mutex<HashMap<Uuid, u32>>,
    /// What the waiting receptor read of the perspective, per order.
    seen: Mutex<HashMap<Uuid, u32>>,
    /// Correlation and causation ids the receptor saw, per order.
    ids: Mutex<HashMap<Uuid, (Uuid, Option<Uuid>)>>,
    delay: Mutex<Duration>,
    /// Handlings started (before the delay).
    started: std::sync::atomic::AtomicUsize,
}

impl Effects {
    fn handled(&self, order: Uuid) -> u32 {
        self.handled
            .lock()
            .unwrap()
            .get(&order)
            .copied()
            .unwrap_or(0)
    }
    fn total(&self) -> u32 {
        self.handled.lock().unwrap().values().sum()
    }
    fn distinct(&self) -> usize {
        self.handled.lock().unwrap().len()
    }
}

struct Handler(Arc<Effects>);
impl FromServices for Handler {
    fn from_services(s: &Services) -> Result<Self> {
        Ok(Handler(s.require::<Effects>("Handler")?))
    }
}

#[fire_at(PreInboxInline)]
#[receptor]
impl Receptor<Paid> for Handler {
    async fn handle(&self, e: Paid, cx: &mut Context) -> Result<()> {
        self.0
            .started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let delay = *self.0.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        *self.0.handled.lock().unwrap().entry(e.order).or_default() += 1;
        self.0.ids.lock().unwrap().insert(
            e.order,
            (
                cx.correlation_id().into(),
                cx.causation_id().map(Into::into),
            ),
        );
        Ok(())
    }
}

struct Poisoned;
impl FromServices for Poisoned {
    fn from_services(_: &Services) -> Result<Self> {
        Ok(Poisoned)
    }
}

#[receptor]
impl Receptor<Poison> for Poisoned {
    async fn handle(&self, _: Poison, _: &mut Context) -> Result<()> {
        Err(Error::rejected("the poison receptor always fails"))
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Revenue {
    total: u32,
}

struct RevenueView;
#[perspective(model = Revenue)]
impl RevenueView {
    fn paid(m: &mut Revenue, e: &Paid) {
        m.total += e.amount;
    }
}

struct Waiter(Arc<Effects>);
impl FromServices for Waiter {
    fn from_services(s: &Services) -> Result<Self> {
        Ok(Waiter(s.require::<Effects>("Waiter")?))
    }
}

#[fire_at(PostInboxDetached)]
#[await_perspective_sync(RevenueView, timeout_ms = 10000)]
#[receptor]
impl Receptor<Paid> for Waiter {
    async fn handle(&self, e: Paid, cx: &mut Context) -> Result<()> {
        let model = cx.lens::<RevenueView>().get(e.order.into()).await?;
        self.0
            .seen
            .lock()
            .unwrap()
            .insert(e.order, model.map_or(0, |m| m.total));
        Ok(())
    }
}

fn runtime() -> (Runtime, Arc<Effects>) {
    let effects = Arc::new(Effects::default());
    let rt = Runtime::builder()
        .shared_service(Arc::clone(&effects))
        .build()
        .expect("the runtime starts: inbox stages are accepted");
    (rt, effects)
}

fn inbox(rt: &Runtime, queue: Arc<dyn MessageQueue>) -> Inbox {
    Inbox::builder(rt.clone(), queue)
        .event::<Paid>()
        .event::<Poison>()
        .lease(Duration::from_secs(30))
        .build()
}

fn paid(order: Uuid, amount: u32) -> QueuedMessage {
    QueuedMessage::from_envelope(&Envelope::new(Paid { order, amount })).unwrap()
}

fn fast_worker() -> InboxWorkerOptions {
    InboxWorkerOptions::default()
        .concurrency(4)
        .poll_interval(Duration::from_millis(10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_delivered_three_times_is_handled_once() {
    let (rt, effects) = runtime();
    let inbox = inbox(&rt, Arc::new(MemoryMessageQueue::new()));
    let order = Uuid::now_v7();
    let cause = whizbang_core::MessageId::new();
    let correlation = whizbang_core::MessageId::new();
    let message = paid(order, 5).caused_by(correlation, cause);

    assert_eq!(
        bounded(inbox.deliver(message.clone())).await.unwrap(),
        Delivery::Processed
    );
    for _ in 0..2 {
        assert_eq!(
            bounded(inbox.deliver(message.clone())).await.unwrap(),
            Delivery::AlreadyProcessed
        );
    }
    assert_eq!(effects.handled(order), 1);
    assert_eq!(
        effects.ids.lock().unwrap()[&order],
        (correlation.into(), Some(cause.into())),
        "the receptor sees the envelope's correlation and causation"
    );
    let stats = inbox.stats();
    assert_eq!((stats.processed, stats.duplicates), (1, 2));

    // Three concurrent deliveries of a new message: one runs.
    let order = Uuid::now_v7();
    let message = paid(order, 1);
    let (a, b, c) = bounded(async {
        tokio::join!(
            inbox.deliver(message.clone()),
            inbox.deliver(message.clone()),
            inbox.deliver(message.clone())
        )
    })
    .await;
    let outcomes = [a.unwrap(), b.unwrap(), c.unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|d| **d == Delivery::Processed)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(effects.handled(order), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_reach_dead_letters_with_their_error_while_others_flow() {
    let (rt, effects) = runtime();
    let queue = Arc::new(MemoryMessageQueue::with_options(
        QueueOptions::default().max_attempts(3),
    ));
    let inbox = inbox(&rt, queue.clone());
    let failing =
        QueuedMessage::from_envelope(&Envelope::new(Poison { id: Uuid::now_v7() })).unwrap();
    let undecodable =
        QueuedMessage::from_json(<Paid as whizbang_core::Message>::NAME, r#"{"nope": 1}"#).unwrap();
    let unknown = QueuedMessage::from_json("billing.mystery", "{}").unwrap();

    let first = bounded(inbox.deliver(failing.clone())).await.unwrap();
    assert!(
        matches!(&first, Delivery::Retrying { attempts: 1, error } if error.contains("always fails")),
        "{first:?}"
    );
    bounded(inbox.deliver(undecodable.clone())).await.unwrap();
    bounded(inbox.deliver(unknown.clone())).await.unwrap();

    let worker = InboxWorker::start(inbox.clone(), fast_worker());
    let orders: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    for order in &orders {
        assert_eq!(
            bounded(inbox.deliver(paid(*order, 2))).await.unwrap(),
            Delivery::Processed
        );
    }
    until(|| inbox.stats().dead_lettered == 3).await;
    bounded(worker.shutdown()).await.unwrap();

    let dead = queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    let error_of = |id| {
        dead.iter()
            .find(|d| d.message.id == id)
            .map(|d| (d.attempts, d.error.clone()))
            .expect("dead-lettered")
    };
    let (attempts, error) = error_of(failing.id);
    assert_eq!(attempts, 3);
    assert!(error.contains("always fails"), "{error}");
    let (_, error) = error_of(undecodable.id);
    assert!(
        error.contains("Paid") || error.contains("deserial"),
        "{error}"
    );
    let (_, error) = error_of(unknown.id);
    assert!(
        error.contains("billing.mystery") && error.contains("does not receive"),
        "{error}"
    );
    for order in &orders {
        assert_eq!(effects.handled(*order), 1);
    }
    let stats = inbox.stats();
    assert_eq!(
        stats.retried, 6,
        "two retries each before the third attempt"
    );
    assert_eq!(stats.processed, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_message_is_recovered_by_the_worker() {
    let (rt, effects) = runtime();
    let clock = ManualClock::new();
    let queue = Arc::new(MemoryMessageQueue::with_clock(
        QueueOptions::default(),
        clock.clone(),
    ));
    let dead_instance = InstanceId::new();
    let order = Uuid::now_v7();
    let message = paid(order, 3);
    let leased = queue
        .enqueue_and_lease(message.clone(), dead_instance, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(leased, EnqueueOutcome::Leased(_)));

    let inbox = inbox(&rt, queue.clone());
    let worker = InboxWorker::start(inbox.clone(), fast_worker());
    // Not expired yet: nothing runs.
    worker.wake();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(effects.handled(order), 0);

    clock.advance(Duration::from_secs(6));
    worker.wake();
    until(|| effects.handled(order) == 1).await;
    until(|| inbox.stats().processed == 1).await;
    bounded(worker.shutdown()).await.unwrap();
    let record = queue
        .processed(message.id)
        .await
        .unwrap()
        .expect("recorded processed");
    assert_eq!(record.handler, "whizbang.inbox");
    // The dead instance's late complete is refused.
    let late = queue.complete(message.id, dead_instance, "late").await;
    assert!(matches!(late, Err(Error::LeaseLost { .. })), "{late:?}");
    assert_eq!(effects.handled(order), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_under_load_loses_nothing() {
    let (rt, effects) = runtime();
    *effects.delay.lock().unwrap() = Duration::from_millis(2);
    let queue = Arc::new(MemoryMessageQueue::new());
    let feeder = InstanceId::new();
    let total = 300;
    let mut ids = Vec::new();
    for _ in 0..total {
        let m = paid(Uuid::now_v7(), 1);
        ids.push(m.id);
        queue
            .enqueue_and_lease(m, feeder, Duration::from_secs(30))
            .await
            .unwrap();
    }
    queue.release(&ids, feeder).await.unwrap();

    let first = inbox(&rt, queue.clone());
    let worker = InboxWorker::start(first.clone(), fast_worker());
    until(|| first.stats().processed >= 30).await;
    bounded(worker.shutdown()).await.unwrap();
    let done = first.stats().processed;
    assert_eq!(
        u64::from(effects.total()),
        done,
        "every started message finished"
    );
    // Nothing is left leased to the stopped worker: all the rest can be leased now.
    let probe = InstanceId::new();
    let rest = queue
        .lease_orphaned(probe, total, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(rest.len() as u64, total as u64 - done);
    let rest: Vec<_> = rest.iter().map(|m| m.message.id).collect();
    queue.release(&rest, probe).await.unwrap();

    let second = inbox(&rt, queue.clone());
    let worker = InboxWorker::start(second.clone(), fast_worker());
    until(|| effects.total() as usize == total).await;
    bounded(worker.shutdown()).await.unwrap();
    assert_eq!(effects.distinct(), total, "each message handled once");
    assert!(effects.handled.lock().unwrap().values().all(|n| *n == 1));
    for id in ids {
        assert!(queue.processed(id).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_stage_receptor_waits_for_its_perspective() {
    let (rt, effects) = runtime();
    let inbox = inbox(&rt, Arc::new(MemoryMessageQueue::new()));
    let order = Uuid::now_v7();
    assert_eq!(
        bounded(inbox.deliver(paid(order, 42))).await.unwrap(),
        Delivery::Processed
    );
    until(|| effects.seen.lock().unwrap().contains_key(&order)).await;
    assert_eq!(
        effects.seen.lock().unwrap()[&order],
        42,
        "the receptor ran after the perspective applied the received event"
    );
    assert_eq!(rt.detached_failures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_event_was_stored_before_its_instance_died_is_completed_not_dead_lettered()
{
    let (rt, effects) = runtime();
    let clock = ManualClock::new();
    let queue = Arc::new(MemoryMessageQueue::with_clock(
        QueueOptions::default().max_attempts(2),
        clock.clone(),
    ));
    let dead_instance = InstanceId::new();
    let order = Uuid::now_v7();
    let message = paid(order, 4);
    bounded(queue.enqueue_and_lease(message.clone(), dead_instance, Duration::from_secs(5)))
        .await
        .unwrap();
    // The dead instance stored the event, then died before completing the message.
    let scope = rt.scope();
    bounded(scope.receive(message.decode::<Paid>().unwrap()))
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
    clock.advance(Duration::from_secs(6));

    let inbox = inbox(&rt, queue.clone());
    let worker = InboxWorker::start(inbox.clone(), fast_worker());
    worker.wake();
    until(|| inbox.stats().processed == 1).await;
    bounded(worker.shutdown()).await.unwrap();
    assert!(queue.processed(message.id).await.unwrap().is_some());
    assert!(queue.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(
        common::stream_len(&rt, order).await,
        1,
        "the event is stored once"
    );
    // Its inline pre-inbox receptor ran again before the append was refused:
    // effects outside the store are at least once.
    assert_eq!(effects.handled(order), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_past_its_grace_period_releases_what_did_not_finish() {
    let (rt, effects) = runtime();
    *effects.delay.lock().unwrap() = Duration::from_secs(60);
    let queue = Arc::new(MemoryMessageQueue::new());
    let feeder = InstanceId::new();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let m = paid(Uuid::now_v7(), 1);
        ids.push(m.id);
        queue
            .enqueue_and_lease(m, feeder, Duration::from_secs(30))
            .await
            .unwrap();
    }
    queue.release(&ids, feeder).await.unwrap();

    let first = inbox(&rt, queue.clone());
    let worker = InboxWorker::start(first.clone(), fast_worker());
    until(|| effects.started.load(std::sync::atomic::Ordering::SeqCst) == 4).await;
    let released = bounded(worker.shutdown_within(Duration::from_millis(50)))
        .await
        .unwrap();
    assert_eq!(released, 4);
    assert_eq!(effects.total(), 0, "nothing finished");

    // Released, not failed: the next lease is the first attempt again.
    let probe = InstanceId::new();
    let again = queue
        .lease_orphaned(probe, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.len(), 4);
    assert!(again.iter().all(|m| m.attempt == 1), "{again:?}");
    queue.release(&ids, probe).await.unwrap();

    *effects.delay.lock().unwrap() = Duration::ZERO;
    let second = inbox(&rt, queue.clone());
    let worker = InboxWorker::start(second.clone(), fast_worker());
    until(|| second.stats().processed == 4).await;
    bounded(worker.shutdown()).await.unwrap();
    assert_eq!(effects.distinct(), 4);
    assert!(effects.handled.lock().unwrap().values().all(|n| *n == 1));
}

/// The worker's counters: ticks (one queue round trip each), the queue's
/// depth and lag measured in its ticks, and processed messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_counts_its_ticks_and_measures_the_queue_depth_and_lag() {
    let (rt, effects) = runtime();
    let queue = Arc::new(MemoryMessageQueue::new());
    let inbox = inbox(&rt, queue.clone());
    let dead = InstanceId::new();
    let orders: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for order in &orders {
        bounded(queue.enqueue_and_lease(paid(*order, 1), dead, Duration::from_millis(1)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await; // all five are orphans
    *effects.delay.lock().unwrap() = Duration::from_millis(400);
    assert_eq!(inbox.stats().queue_depth, None, "nothing measured yet");
    let worker = InboxWorker::start(
        inbox.clone(),
        InboxWorkerOptions::default()
            .concurrency(1)
            .poll_interval(Duration::from_millis(20)),
    );
    // The first tick leases one (a slow handling) and measures the four left.
    until(|| inbox.stats().queue_depth.is_some()).await;
    let stats = inbox.stats();
    assert_eq!(stats.queue_depth, Some(4), "{stats:?}");
    assert!(
        stats
            .queue_lag
            .is_some_and(|lag| lag >= Duration::from_millis(15)),
        "the oldest waited since it became an orphan: {stats:?}"
    );
    assert!(stats.ticks >= 1);
    *effects.delay.lock().unwrap() = Duration::ZERO;
    until(|| inbox.stats().processed == 5).await;
    until(|| inbox.stats().queue_depth == Some(0)).await;
    let stats = inbox.stats();
    assert_eq!(stats.queue_lag, Some(Duration::ZERO), "{stats:?}");
    assert!(
        stats.ticks >= 5,
        "at least one tick per message leased one at a time: {stats:?}"
    );
    bounded(worker.shutdown()).await.unwrap();
    for order in &orders {
        assert_eq!(effects.handled(*order), 1);
    }
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
struct Exploding {
    #[stream_key]
    id: Uuid,
}

struct Exploder;
impl FromServices for Exploder {
    fn from_services(_: &Services) -> Result<Self> {
        Ok(Exploder)
    }
}

#[receptor]
impl Receptor<Exploding> for Exploder {
    async fn handle(&self, _: Exploding, _: &mut Context) -> Result<()> {
        panic!("the exploding receptor panics (on purpose, in a test)")
    }
}

/// A handler that panics does not take the worker down: its message is
/// failed (retried after its backoff, dead-lettered at the limit) with an
/// error saying the handling stopped, and the others flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_message_and_the_worker_keeps_going() {
    let (rt, effects) = runtime();
    let queue = Arc::new(MemoryMessageQueue::with_options(
        QueueOptions::default()
            .max_attempts(3)
            .retry_backoff(Duration::from_millis(5), Duration::from_millis(5)),
    ));
    let inbox = Inbox::builder(rt.clone(), queue.clone())
        .event::<Paid>()
        .event::<Exploding>()
        .lease(Duration::from_secs(30))
        .build();
    let boom =
        QueuedMessage::from_envelope(&Envelope::new(Exploding { id: Uuid::now_v7() })).unwrap();
    let dead = InstanceId::new();
    bounded(queue.enqueue_and_lease(boom.clone(), dead, Duration::from_millis(1)))
        .await
        .unwrap();
    let orders: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    for order in &orders {
        bounded(queue.enqueue_and_lease(paid(*order, 1), dead, Duration::from_millis(1)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let worker = InboxWorker::start(inbox.clone(), fast_worker());
    until(|| inbox.stats().dead_lettered == 1 && inbox.stats().processed == 10).await;
    bounded(worker.shutdown()).await.unwrap();
    let letters = queue.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message.id, boom.id);
    assert_eq!(letters[0].attempts, 3);
    assert!(
        letters[0].error.contains("panicked"),
        "{}",
        letters[0].error
    );
    assert_eq!(
        inbox.stats().retried,
        1,
        "attempt 2 retried, attempt 3 dead"
    );
    for order in &orders {
        assert_eq!(effects.handled(*order), 1);
    }
}

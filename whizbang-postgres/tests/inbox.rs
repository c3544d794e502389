//! The core's inbox consumer and worker on `PgMessageQueue`: two runtimes on
//! one database share the work and handle each message once; a worker
//! recovers a message whose instance died holding its lease.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{backend, bounded, eventually, fast_options};
use uuid::Uuid;
use whizbang_core::inbox::{Delivery, Inbox, InboxWorker, InboxWorkerOptions};
use whizbang_core::queue::{EnqueueOutcome, MessageQueue, QueuedMessage};
use whizbang_core::{
    receptor, Context, Envelope, Event, FromServices, InstanceId, Receptor, Registry, Result,
    Runtime, Services,
};
use whizbang_postgres::Postgres;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_inbox.credited")]
struct Credited {
    #[stream_key]
    account: Uuid,
    amount: u32,
}

/// Side effects counted per account, by the runtime that handled them.
#[derive(Default)]
struct Effects(Mutex<HashMap<Uuid, u32>>);

impl Effects {
    fn total(&self) -> u32 {
        self.0.lock().unwrap().values().sum()
    }
}

struct Crediting(Arc<Effects>);

impl FromServices for Crediting {
    fn from_services(s: &Services) -> Result<Self> {
        Ok(Crediting(s.require::<Effects>("Crediting")?))
    }
}

#[receptor]
impl Receptor<Credited> for Crediting {
    async fn handle(&self, e: Credited, _: &mut Context) -> Result<()> {
        *self.0 .0.lock().unwrap().entry(e.account).or_default() += 1;
        Ok(())
    }
}

fn registry() -> Arc<Registry> {
    Arc::new(
        Registry::builder()
            .receptors_of::<Crediting>()
            .build()
            .unwrap(),
    )
}

/// A runtime on `pg` with its own side-effect counter, and its inbox.
fn service(pg: &Postgres) -> (Runtime, Inbox, Arc<Effects>) {
    let effects = Arc::new(Effects::default());
    let rt = Runtime::builder()
        .registry(registry())
        .backend(pg.clone())
        .shared_service(Arc::clone(&effects))
        .build()
        .unwrap();
    let inbox = Inbox::builder(rt.clone(), Arc::new(pg.message_queue()))
        .event::<Credited>()
        .instance(InstanceId::new())
        .lease(Duration::from_secs(30))
        .build();
    (rt, inbox, effects)
}

fn credited(amount: u32) -> QueuedMessage {
    QueuedMessage::from_envelope(&Envelope::new(Credited {
        account: Uuid::now_v7(),
        amount,
    }))
    .unwrap()
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn two_runtimes_handle_each_of_a_thousand_messages_delivered_twice_exactly_once(
    pool: PgPool,
) {
    let options = fast_options().pool_size(10);
    let pg_a = backend(&pool, options.clone()).await;
    let pg_b = backend(&pool, options).await;
    let (rt_a, inbox_a, effects_a) = service(&pg_a);
    let (rt_b, inbox_b, effects_b) = service(&pg_b);
    let messages: Arc<Vec<QueuedMessage>> = Arc::new((0..1000).map(credited).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let processed = Arc::new(AtomicUsize::new(0));

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (messages, next, processed) = (messages.clone(), next.clone(), processed.clone());
        let (a, b) = (inbox_a.clone(), inbox_b.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(m) = messages.get(i) else { return };
                // Both runtimes receive the message at once.
                let (x, y) = tokio::join!(a.deliver(m.clone()), b.deliver(m.clone()));
                for outcome in [x.unwrap(), y.unwrap()] {
                    match outcome {
                        Delivery::Processed => {
                            processed.fetch_add(1, Ordering::Relaxed);
                        }
                        Delivery::AlreadyQueued | Delivery::AlreadyProcessed => {}
                        other => panic!("message {i}: {other:?}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the deliveries finished within 120 s")
            .unwrap();
    }

    assert_eq!(processed.load(Ordering::Relaxed), 1000);
    let (a, b) = (effects_a.total(), effects_b.total());
    assert_eq!(a + b, 1000, "one side effect per message");
    let mut all = effects_a.0.lock().unwrap().clone();
    for (account, n) in effects_b.0.lock().unwrap().iter() {
        *all.entry(*account).or_default() += n;
    }
    assert_eq!(all.len(), 1000);
    assert!(all.values().all(|n| *n == 1), "a message was handled twice");
    assert!(
        a >= 50 && b >= 50,
        "the work spread across both: {a} and {b}"
    );
    let (recorded,): (i64,) = sqlx::query_as("select count(*) from wh_processed_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1000);
    let (queued,): (i64,) = sqlx::query_as("select count(*) from wh_message_queue")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 0, "every message completed");
    let stats = (inbox_a.stats(), inbox_b.stats());
    assert_eq!(stats.0.processed + stats.1.processed, 1000);
    assert_eq!(stats.0.duplicates + stats.1.duplicates, 1000);

    for (rt, pg) in [(rt_a, pg_a), (rt_b, pg_b)] {
        drop(rt);
        bounded(pg.close()).await;
    }
    drop((inbox_a, inbox_b));
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_worker_takes_over_a_message_whose_instance_died(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let (rt, inbox, effects) = service(&pg);
    let queue = pg.message_queue();
    let dead = InstanceId::new();
    let message = credited(9);
    let leased =
        bounded(queue.enqueue_and_lease(message.clone(), dead, Duration::from_millis(300)))
            .await
            .unwrap();
    assert!(matches!(leased, EnqueueOutcome::Leased(_)));

    let worker = InboxWorker::start(
        inbox.clone(),
        InboxWorkerOptions::default().poll_interval(Duration::from_millis(50)),
    );
    eventually("the worker handled the orphan", || {
        let done = effects.total() == 1;
        async move { done.then_some(()) }
    })
    .await;
    eventually("the message is recorded processed", || {
        let queue = queue.clone();
        async move { queue.processed(message.id).await.unwrap().map(drop) }
    })
    .await;
    bounded(worker.shutdown()).await.unwrap();
    assert_eq!(inbox.stats().processed, 1);
    let late = queue.complete(message.id, dead, "late").await;
    assert!(
        matches!(late, Err(whizbang_core::Error::LeaseLost { .. })),
        "{late:?}"
    );
    drop((inbox, rt));
    bounded(pg.close()).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_release_on_another_instance_wakes_an_idle_worker_at_once(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let (rt, inbox, effects) = service(&pg);
    let queue = pg.message_queue();
    // It polls once a minute: only the wake-up can make it find the message in time.
    let worker = InboxWorker::start(
        inbox.clone(),
        InboxWorkerOptions::default().poll_interval(Duration::from_secs(60)),
    );
    let mut wakeups = queue.wakeups(worker.waker());
    bounded(wakeups.listening()).await;
    // A wake-up arriving while the worker is busy is kept (`notify_one`).

    let other = InstanceId::new();
    let message = credited(1);
    bounded(queue.enqueue_and_lease(message.clone(), other, Duration::from_secs(30)))
        .await
        .unwrap();
    bounded(queue.release(&[message.id], other)).await.unwrap();
    eventually("the woken worker handled the released message", || {
        let done = effects.total() == 1;
        async move { done.then_some(()) }
    })
    .await;
    bounded(worker.shutdown()).await.unwrap();
    drop(wakeups);
    drop((inbox, rt));
    bounded(pg.close()).await;
}

/// One message delivered three times (by three runtimes at once, then once
/// more after it completed) is handled once: one side effect, one stored
/// event, one processed record; the other deliveries run nothing.
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn one_message_delivered_three_times_is_handled_once(pool: PgPool) {
    let options = fast_options().pool_size(4);
    let mut services = Vec::new();
    for _ in 0..3 {
        let pg = backend(&pool, options.clone()).await;
        let (rt, inbox, effects) = service(&pg);
        services.push((pg, rt, inbox, effects));
    }
    let message = credited(3);
    let (x, y, z) = tokio::join!(
        services[0].2.deliver(message.clone()),
        services[1].2.deliver(message.clone()),
        services[2].2.deliver(message.clone()),
    );
    let outcomes = [x.unwrap(), y.unwrap(), z.unwrap()];
    let processed = outcomes
        .iter()
        .filter(|o| **o == Delivery::Processed)
        .count();
    assert_eq!(
        processed, 1,
        "exactly one delivery handled it: {outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            Delivery::Processed | Delivery::AlreadyQueued | Delivery::AlreadyProcessed
        )),
        "{outcomes:?}"
    );
    let again = bounded(services[1].2.deliver(message.clone()))
        .await
        .unwrap();
    assert_eq!(
        again,
        Delivery::AlreadyProcessed,
        "a later delivery runs nothing"
    );
    let effects: u32 = services.iter().map(|s| s.3.total()).sum();
    assert_eq!(effects, 1, "one side effect");
    let (events,): (i64,) = sqlx::query_as("select count(*) from wh_events where event_id = $1")
        .bind(message.id.as_uuid())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 1, "its event is stored once");
    let (records,): (i64,) =
        sqlx::query_as("select count(*) from wh_processed_messages where message_id = $1")
            .bind(message.id.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(records, 1);
    for (pg, rt, inbox, _) in services {
        drop((inbox, rt));
        bounded(pg.close()).await;
    }
}

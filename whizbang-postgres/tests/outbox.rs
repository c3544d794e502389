//! The outbox on PostgreSQL: rows written in the append's transaction,
//! published through the PostgreSQL transport into another service's inbox
//! in its own schema of the same database, a publisher dropped mid-publish
//! taken over, and a caller in the first service waiting for the second
//! service's perspective by the event id.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{bounded, event, fast_options};
use uuid::Uuid;
use whizbang_core::backend::{BoxFuture, EventStore, StreamAppend};
use whizbang_core::inbox::{Inbox, InboxWorker, InboxWorkerOptions};
use whizbang_core::outbox::{
    Outbox, OutboxPublisher, OutboxPublisherOptions, OutboxStatus, Transport,
};
use whizbang_core::queue::{MessageQueue, QueueOptions, QueuedMessage};
use whizbang_core::{
    fire_at, perspective, receptor, Context, Error, Event, ExpectedVersion, FromServices,
    InstanceId, Receptor, Registry, Result, Runtime, Services, StreamId, SyncOutcome,
};
use whizbang_postgres::{PgEventStore, PgTransport, Postgres};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_outbox.order_placed", publish)]
struct OrderPlaced {
    #[stream_key]
    order: Uuid,
    amount: u32,
}

/// Orders' command: emits `OrderPlaced`, returns its event id.
#[derive(whizbang_core::Command, Serialize, Deserialize, Debug)]
#[command(output = whizbang_core::EventId)]
struct PlaceOrder {
    order: Uuid,
    amount: u32,
}

#[derive(Default)]
struct OrderDesk;

#[receptor]
impl Receptor<PlaceOrder> for OrderDesk {
    async fn handle(&self, c: PlaceOrder, cx: &mut Context) -> Result<whizbang_core::EventId> {
        cx.emit(OrderPlaced {
            order: c.order,
            amount: c.amount,
        })
    }
}

/// Billing's side effect: one invoice per order received.
#[derive(Default)]
struct Invoices(Mutex<HashMap<Uuid, u32>>);

impl Invoices {
    fn of(&self, order: Uuid) -> u32 {
        self.0.lock().unwrap().get(&order).copied().unwrap_or(0)
    }
}

struct Invoicing(Arc<Invoices>);
impl FromServices for Invoicing {
    fn from_services(s: &Services) -> Result<Self> {
        Ok(Invoicing(s.require::<Invoices>("Invoicing")?))
    }
}

#[fire_at(PostInboxInline)]
#[receptor]
impl Receptor<OrderPlaced> for Invoicing {
    async fn handle(&self, e: OrderPlaced, _: &mut Context) -> Result<()> {
        *self.0 .0.lock().unwrap().entry(e.order).or_default() += 1;
        Ok(())
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Receivable {
    amount: u32,
}

struct Receivables;
#[perspective(model = Receivable, name = "pg_outbox.receivables")]
impl Receivables {
    fn placed(m: &mut Receivable, e: &OrderPlaced) {
        m.amount += e.amount;
    }
}

/// Service "orders": its command's appends write the outbox.
fn orders(pg: &Postgres) -> Runtime {
    Runtime::builder()
        .registry(Arc::new(
            Registry::builder()
                .receptors_of::<OrderDesk>()
                .build()
                .unwrap(),
        ))
        .backend(pg.clone())
        .build()
        .unwrap()
}

/// Service "billing": the invoicing receptor and the receivables perspective.
fn billing(pg: &Postgres) -> (Runtime, Inbox, Arc<Invoices>) {
    let invoices = Arc::new(Invoices::default());
    let registry = Registry::builder()
        .receptors_of::<Invoicing>()
        .perspective::<Receivables>()
        .build()
        .unwrap();
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .shared_service(Arc::clone(&invoices))
        .build()
        .unwrap();
    let inbox = Inbox::builder(rt.clone(), Arc::new(pg.message_queue()))
        .event::<OrderPlaced>()
        .instance(InstanceId::new())
        .build();
    (rt, inbox, invoices)
}

async fn connect(pool: &PgPool, schema: &str) -> Postgres {
    let pg = support::backend(pool, fast_options().schema(schema)).await;
    bounded(pg.migrate()).await.unwrap();
    pg
}

fn quick() -> OutboxPublisherOptions {
    OutboxPublisherOptions::default()
        .poll_interval(Duration::from_millis(10))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn the_outbox_row_commits_with_the_append_and_not_without_it(pool: PgPool) {
    let store = PgEventStore::new(pool.clone());
    let stream = StreamId::new();
    let mut outbound = event(
        stream,
        "pg_outbox.order_placed",
        serde_json::json!({"order": stream, "amount": 1}),
    );
    outbound.outbound = true;
    let local = event(stream, "pg_outbox.note", serde_json::json!({}));
    let (out_id, local_id) = (outbound.event_id, local.event_id);
    bounded(store.append(vec![StreamAppend {
        stream_id: stream,
        expected: ExpectedVersion::NoStream,
        events: vec![outbound, local],
    }]))
    .await
    .unwrap();
    let outbox = whizbang_postgres::PgOutbox::new(pool.clone());
    assert_eq!(
        outbox.status(out_id).await.unwrap(),
        Some(OutboxStatus::Pending {
            attempts: 0,
            last_error: None
        })
    );
    assert_eq!(outbox.status(local_id).await.unwrap(), None, "not outbound");

    // A concurrency error: the append rolls back, and its outbox row with it.
    let mut late = event(
        stream,
        "pg_outbox.order_placed",
        serde_json::json!({"order": stream, "amount": 2}),
    );
    late.outbound = true;
    let late_id = late.event_id;
    let err = bounded(store.append(vec![StreamAppend {
        stream_id: stream,
        expected: ExpectedVersion::NoStream,
        events: vec![late],
    }]))
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Concurrency { .. }), "{err:?}");
    assert_eq!(
        outbox.status(late_id).await.unwrap(),
        None,
        "no row without its event"
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from wh_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[sqlx::test(migrations = false)]
async fn an_event_leaves_orders_and_billing_applies_it_and_orders_waits_for_it(pool: PgPool) {
    let pg_orders = connect(&pool, "orders").await;
    let pg_billing = connect(&pool, "billing").await;
    let rt_orders = orders(&pg_orders);
    let (_rt_billing, inbox, invoices) = billing(&pg_billing);
    let worker = InboxWorker::start(
        inbox.clone(),
        InboxWorkerOptions::default().poll_interval(Duration::from_millis(10)),
    );
    let transport = PgTransport::new(pg_orders.pool().clone())
        .deliver_to("billing")
        .unwrap();
    let publisher = OutboxPublisher::new(Arc::new(pg_orders.outbox()), Arc::new(transport))
        .runtime(rt_orders.clone())
        .options(quick());
    let handle = publisher.start();
    // What orders' wait listens to: billing's applied channel.
    let mut applied = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    applied.listen("whizbang_applied.billing").await.unwrap();

    // The command in orders emits the outbound event.
    let order = Uuid::now_v7();
    let scope = rt_orders.scope();
    let placed = scope.send(PlaceOrder { order, amount: 12 }).await.unwrap();
    scope.complete().await.unwrap();

    // The caller in orders waits for billing's perspective by the event id.
    let outcome = bounded(pg_orders.service("billing").unwrap().wait_for_perspective(
        "pg_outbox.receivables",
        placed,
        Duration::from_secs(10),
    ))
    .await
    .unwrap();
    assert_eq!(outcome, SyncOutcome::Synced);
    assert_eq!(invoices.of(order), 1);
    let heard = bounded(applied.recv()).await.unwrap();
    assert!(
        heard.payload().contains("pg_outbox.receivables"),
        "billing's apply NOTIFYs its own applied channel: {}",
        heard.payload()
    );
    let model: serde_json::Value = sqlx::query_scalar(
        "select data from billing.wh_perspective_rows where perspective = $1 and model_key = $2",
    )
    .bind("pg_outbox.receivables")
    .bind(order)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(model["amount"], 12);
    // The tables are per schema: orders' own queue and billing's outbox are empty.
    let (orders_queue, billing_outbox): (i64, i64) = sqlx::query_as(
        "select (select count(*) from orders.wh_message_queue) + (select count(*) from orders.wh_processed_messages),
                (select count(*) from billing.wh_outbox)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((orders_queue, billing_outbox), (0, 0));
    // An event billing never received: a bounded TimedOut, not Synced.
    let never = bounded(pg_orders.service("billing").unwrap().wait_for_perspective(
        "pg_outbox.receivables",
        whizbang_core::EventId::new(),
        Duration::from_millis(100),
    ))
    .await
    .unwrap();
    assert_eq!(never, SyncOutcome::TimedOut);
    bounded(handle.shutdown()).await;
    bounded(worker.shutdown()).await.unwrap();
}

/// Delivers through the PostgreSQL transport, then hangs: the publisher
/// dies after the "broker" accepted the message and before marking it.
struct DeliversThenHangs {
    inner: PgTransport,
    calls: AtomicU32,
}

impl Transport for DeliversThenHangs {
    fn publish<'a>(&'a self, message: &'a QueuedMessage) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.publish(message).await?;
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

#[sqlx::test(migrations = false)]
async fn a_publisher_dropped_mid_publish_is_taken_over_and_billing_handles_the_event_once(
    pool: PgPool,
) {
    let pg_orders = connect(&pool, "orders").await;
    let pg_billing = connect(&pool, "billing").await;
    let rt_orders = orders(&pg_orders);
    let (_rt_billing, inbox, invoices) = billing(&pg_billing);
    let worker = InboxWorker::start(
        inbox.clone(),
        InboxWorkerOptions::default().poll_interval(Duration::from_millis(10)),
    );
    let transport = PgTransport::new(pg_orders.pool().clone())
        .deliver_to("billing")
        .unwrap();

    let order = Uuid::now_v7();
    let scope = rt_orders.scope();
    let placed = scope
        .publish(OrderPlaced { order, amount: 5 })
        .await
        .unwrap();
    scope.complete().await.unwrap();

    let lease = quick().lease(Duration::from_millis(300));
    let dying = OutboxPublisher::new(
        Arc::new(pg_orders.outbox()),
        Arc::new(DeliversThenHangs {
            inner: transport.clone(),
            calls: AtomicU32::new(0),
        }),
    )
    .options(lease.clone());
    let tick = tokio::time::timeout(Duration::from_millis(200), dying.publish_once()).await;
    assert!(tick.is_err(), "the hanging publish was dropped mid-way");
    let outbox = pg_orders.outbox();
    assert!(matches!(
        outbox.status(placed).await.unwrap(),
        Some(OutboxStatus::Pending { attempts: 1, .. })
    ));

    // Another publisher takes the expired lease over and publishes again.
    let survivor =
        OutboxPublisher::new(Arc::new(outbox.clone()), Arc::new(transport)).options(lease);
    let handle = survivor.start();
    bounded(async {
        while survivor.stats().published < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    bounded(handle.shutdown()).await;
    let outcome = bounded(pg_orders.service("billing").unwrap().wait_for_perspective(
        "pg_outbox.receivables",
        placed,
        Duration::from_secs(10),
    ))
    .await
    .unwrap();
    assert_eq!(outcome, SyncOutcome::Synced);
    assert!(matches!(
        outbox.status(placed).await.unwrap(),
        Some(OutboxStatus::Published { attempts: 2 })
    ));
    // Handled once in billing: one side effect, one processed record, one stored event.
    assert_eq!(invoices.of(order), 1);
    assert!(pg_billing
        .message_queue()
        .processed(placed.into())
        .await
        .unwrap()
        .is_some());
    let stored: i64 =
        sqlx::query_scalar("select count(*) from billing.wh_events where event_id = $1")
            .bind(placed.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 1);
    // The dead publisher's late mark is refused.
    let late = outbox
        .mark_published(placed.into(), dying.instance_id())
        .await;
    assert!(matches!(late, Err(Error::LeaseLost { .. })), "{late:?}");
    bounded(worker.shutdown()).await.unwrap();
}

struct Down;
impl Transport for Down {
    fn publish<'a>(&'a self, _: &'a QueuedMessage) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Err(Error::rejected("no route to billing")) })
    }
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_publish_that_always_fails_is_dead_lettered_with_its_error(pool: PgPool) {
    let pg = support::backend(&pool, fast_options()).await;
    let rt = orders(&pg);
    let scope = rt.scope();
    let placed = scope
        .publish(OrderPlaced {
            order: Uuid::now_v7(),
            amount: 1,
        })
        .await
        .unwrap();
    scope.complete().await.unwrap();
    let outbox = whizbang_postgres::PgOutbox::with_options(
        pg.pool().clone(),
        QueueOptions::default().max_attempts(3),
    );
    let publisher = OutboxPublisher::new(Arc::new(outbox.clone()), Arc::new(Down)).options(quick());
    let handle = publisher.start();
    bounded(async {
        while publisher.stats().dead_lettered < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    bounded(handle.shutdown()).await;
    assert_eq!(publisher.stats().retried, 2);
    let dead = outbox.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, placed.into());
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].error.contains("no route to billing"),
        "{}",
        dead[0].error
    );
}

#[sqlx::test(migrations = false)]
async fn a_hostile_schema_name_never_reaches_sql(pool: PgPool) {
    let options = fast_options().schema("billing\"; drop table wh_events; --");
    let err = Postgres::connect_with_options((*pool.connect_options()).clone(), options)
        .await
        .unwrap_err();
    assert!(
        matches!(err, whizbang_postgres::Error::InvalidSchema(_)),
        "{err}"
    );
    let err = PgTransport::new(pool.clone())
        .deliver_to("Billing")
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}

#[sqlx::test(migrations = false)]
async fn services_in_their_own_schemas_notify_on_their_own_channels(pool: PgPool) {
    let pg_orders = connect(&pool, "orders").await;
    let _pg_billing = connect(&pool, "billing").await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener
        .listen_all([
            "whizbang_events.billing",
            "whizbang_applied.billing",
            "whizbang_events",
            "whizbang_events.orders",
        ])
        .await
        .unwrap();
    let rt_orders = orders(&pg_orders);
    let scope = rt_orders.scope();
    scope
        .send(PlaceOrder {
            order: Uuid::now_v7(),
            amount: 1,
        })
        .await
        .unwrap();
    scope.complete().await.unwrap();
    // Orders' append notifies orders' events channel, and nothing else.
    let first = bounded(listener.recv()).await.unwrap();
    assert_eq!(first.channel(), "whizbang_events.orders");
    let more = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(
        more.is_err(),
        "a notification leaked: {:?}",
        more.map(|n| n.map(|n| n.channel().to_owned()))
    );
}

#[sqlx::test(migrations = false)]
async fn a_delivery_wakes_the_other_services_inbox_worker_on_its_own_channel(pool: PgPool) {
    let pg_orders = connect(&pool, "orders").await;
    let pg_billing = connect(&pool, "billing").await;
    let rt_orders = orders(&pg_orders);
    let (_rt_billing, inbox, invoices) = billing(&pg_billing);
    // A worker that would poll once a minute: only the wake-up can start it.
    let worker = InboxWorker::start(
        inbox.clone(),
        InboxWorkerOptions::default().poll_interval(Duration::from_secs(60)),
    );
    let mut wakeups = pg_billing.message_queue().wakeups(worker.waker());
    bounded(wakeups.listening()).await;
    let transport = PgTransport::new(pg_orders.pool().clone())
        .deliver_to("billing")
        .unwrap();
    let publisher = OutboxPublisher::new(Arc::new(pg_orders.outbox()), Arc::new(transport));

    let order = Uuid::now_v7();
    let scope = rt_orders.scope();
    scope.send(PlaceOrder { order, amount: 3 }).await.unwrap();
    scope.complete().await.unwrap();
    assert_eq!(bounded(publisher.publish_once()).await.unwrap(), 1);
    // Within the 10 s bound, far below the worker's 60 s poll.
    bounded(async {
        while invoices.of(order) == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    drop(wakeups);
    bounded(worker.shutdown()).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn the_postgres_outbox_keeps_the_outbox_contracts(pool: PgPool) {
    use whizbang_core::backend::conformance::outbox::{run_all, OutboxUnderTest};
    // Each contract gets an empty outbox: a schema of its own.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let connect = (*pool.connect_options()).clone();
    run_all(&move || {
        let n = next.fetch_add(1, Ordering::SeqCst);
        let connect = connect.clone();
        async move {
            let options = fast_options().runner(false).schema(format!("contract_{n}"));
            let pg = Postgres::connect_with_options(connect, options)
                .await
                .unwrap();
            pg.migrate().await.unwrap();
            OutboxUnderTest {
                events: Arc::new(PgEventStore::new(pg.pool().clone())),
                outbox: Arc::new(whizbang_postgres::PgOutbox::with_options(
                    pg.pool().clone(),
                    QueueOptions::default().max_attempts(3),
                )),
                tick: Duration::from_millis(300),
            }
        }
    })
    .await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn published_rows_are_pruned_by_age_in_batches(pool: PgPool) {
    let store = PgEventStore::new(pool.clone());
    let outbox = whizbang_postgres::PgOutbox::new(pool.clone());
    let me = InstanceId::new();
    for _ in 0..3 {
        let stream = StreamId::new();
        let mut e = event(stream, "pg_outbox.order_placed", serde_json::json!({}));
        e.outbound = true;
        bounded(store.append(vec![StreamAppend {
            stream_id: stream,
            expected: ExpectedVersion::NoStream,
            events: vec![e],
        }]))
        .await
        .unwrap();
    }
    let leased = outbox.lease(me, 10, Duration::from_secs(60)).await.unwrap();
    // Two published, one still pending.
    for entry in &leased[..2] {
        outbox
            .mark_published(entry.leased.message.id, me)
            .await
            .unwrap();
    }
    assert_eq!(
        outbox
            .prune_published(Duration::from_secs(3600), 10)
            .await
            .unwrap(),
        0,
        "too young"
    );
    assert_eq!(
        outbox.prune_published(Duration::ZERO, 1).await.unwrap(),
        1,
        "a batch of one"
    );
    assert_eq!(outbox.prune_published(Duration::ZERO, 10).await.unwrap(), 1);
    let left: i64 = sqlx::query_scalar("select count(*) from wh_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "the pending row stays");
}

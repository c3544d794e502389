//! Child process for the two-service test (`tests/pg_two_services.rs`):
//! two services, "orders" and "billing", in their own schemas of one
//! database, with no broker between them.
//!
//! Usage:
//! - `pg_service billing <url>`: service billing. Migrates its schema,
//!   receives `orders.order_placed` through its inbox (an inbox worker on its
//!   queue): its `PreInboxInline` receptor opens one invoice per order (an
//!   event appended with the received one, atomically) and its
//!   `billing.receivables` perspective sums the amounts (its worker is woken
//!   by the NOTIFY a delivery sends on billing's queue channel, and polls
//!   every 200 ms besides). Prints `ready`, then
//!   runs until its stdin closes or it is killed.
//! - `pg_service orders <url> <n> <publish>`: service orders. Migrates its
//!   schema and sends `n` `PlaceOrder` commands, each emitting an outbound
//!   `orders.order_placed`. With `publish` = `yes` it runs an outbox
//!   publisher into billing's inbox and, for each command, waits for
//!   billing's perspective by the event id, printing
//!   `synced <i> outcome=<outcome> elapsed_ms=<ms>`; with `no` it only
//!   appends (printing `sent <i>`). Prints `finished` at the end.
//! - `pg_service publisher <url> <delay_ms>`: an outbox publisher of
//!   orders into billing only, each publish slowed by `delay_ms` (so a
//!   SIGKILL lands mid-publish); prints `ready`, then `idle` once the outbox
//!   has no pending row, and runs until killed or its stdin closes.

use serde::{Deserialize, Serialize};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;
use whizbang_core::backend::BoxFuture;
use whizbang_core::inbox::{Inbox, InboxWorker, InboxWorkerOptions};
use whizbang_core::outbox::{OutboxPublisher, OutboxPublisherOptions, Transport};
use whizbang_core::queue::QueuedMessage;
use whizbang_core::{
    perspective, receptor, Command, Context, Event, EventId, Receptor, Registry, Result, Runtime,
};
use whizbang_postgres::{PgTransport, Postgres, PostgresOptions};
use whizbang_tests::child::{outcome_label, say};

/// No step of the child may take longer than this.
const BOUND: Duration = Duration::from_secs(60);

// ----- the contract between the services: the outbound event -----

/// Emitted by orders; leaves it through the outbox.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "orders.order_placed", publish)]
struct OrderPlaced {
    #[stream_key]
    order: Uuid,
    amount: u32,
}

// ----- service orders -----

#[derive(Command, Serialize, Deserialize, Debug)]
#[command(output = EventId)]
struct PlaceOrder {
    order: Uuid,
    amount: u32,
}

#[derive(Default)]
struct OrderDesk;

#[receptor]
impl Receptor<PlaceOrder> for OrderDesk {
    async fn handle(&self, c: PlaceOrder, cx: &mut Context) -> Result<EventId> {
        cx.emit(OrderPlaced {
            order: c.order,
            amount: c.amount,
        })
    }
}

// ----- service billing -----

/// Billing's side effect of a received order: appended with it, atomically.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "billing.invoice_opened")]
struct InvoiceOpened {
    #[stream_key]
    invoice: Uuid,
    order: Uuid,
}

#[derive(Default)]
struct Invoicing;

#[whizbang_core::fire_at(PreInboxInline)]
#[receptor]
impl Receptor<OrderPlaced> for Invoicing {
    async fn handle(&self, e: OrderPlaced, cx: &mut Context) -> Result<()> {
        cx.emit(InvoiceOpened {
            invoice: Uuid::now_v7(),
            order: e.order,
        })?;
        Ok(())
    }
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Receivable {
    amount: u64,
    orders: u64,
}

struct Receivables;

#[perspective(model = Receivable, name = "billing.receivables")]
impl Receivables {
    fn placed(m: &mut Receivable, e: &OrderPlaced) {
        m.amount += u64::from(e.amount);
        m.orders += 1;
    }
}

fn options(schema: &str) -> PostgresOptions {
    PostgresOptions::default()
        .schema(schema)
        .pool_size(6)
        .lease_duration(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(200))
        .rescan_interval(Duration::from_millis(100))
}

async fn connect(url: &str, schema: &str) -> std::result::Result<Postgres, String> {
    let pg = tokio::time::timeout(BOUND, Postgres::connect_with(url, options(schema)))
        .await
        .map_err(|_| format!("connecting as {schema} timed out"))?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(BOUND, pg.migrate())
        .await
        .map_err(|_| format!("migrating {schema} timed out"))?
        .map_err(|e| e.to_string())?;
    Ok(pg)
}

/// Waits until stdin closes (the parent's way to stop a child).
async fn until_stdin_closes() {
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await
    .ok();
}

async fn billing(url: &str) -> std::result::Result<(), String> {
    let pg = connect(url, "billing").await?;
    let registry = Registry::builder()
        .receptors_of::<Invoicing>()
        .perspective::<Receivables>()
        .build()
        .map_err(|e| e.to_string())?;
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let inbox = Inbox::builder(rt.clone(), Arc::new(pg.message_queue()))
        .event::<OrderPlaced>()
        .lease(Duration::from_secs(5))
        .build();
    let worker = InboxWorker::start(
        inbox,
        InboxWorkerOptions::default().poll_interval(Duration::from_millis(200)),
    );
    // Deliveries into billing's queue NOTIFY its own channel: wake the worker.
    let mut wakeups = pg.message_queue().wakeups(worker.waker());
    tokio::time::timeout(BOUND, wakeups.listening())
        .await
        .map_err(|_| "LISTEN on billing's queue channel timed out".to_owned())?;
    say("ready");
    until_stdin_closes().await;
    drop(wakeups);
    worker.shutdown().await.map_err(|e| e.to_string())?;
    Ok(())
}

fn orders_runtime(pg: &Postgres) -> std::result::Result<Runtime, String> {
    let registry = Registry::builder()
        .receptors_of::<OrderDesk>()
        .build()
        .map_err(|e| e.to_string())?;
    Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .map_err(|e| e.to_string())
}

fn publisher_of(pg: &Postgres, transport: Arc<dyn Transport>) -> OutboxPublisher {
    OutboxPublisher::new(Arc::new(pg.outbox()), transport).options(
        OutboxPublisherOptions::default()
            .lease(Duration::from_secs(1))
            .poll_interval(Duration::from_millis(10))
            .backoff(Duration::from_millis(20), Duration::from_millis(500)),
    )
}

fn to_billing(pg: &Postgres) -> std::result::Result<PgTransport, String> {
    PgTransport::new(pg.pool().clone())
        .deliver_to("billing")
        .map_err(|e| e.to_string())
}

async fn orders(url: &str, n: u64, publish: bool) -> std::result::Result<(), String> {
    let pg = connect(url, "orders").await?;
    let rt = orders_runtime(&pg)?;
    let handle = if publish {
        let publisher = publisher_of(&pg, Arc::new(to_billing(&pg)?));
        // Woken by orders' own appends that wrote outbox rows.
        let wakeups = pg.outbox().wakeups(publisher.waker());
        Some((publisher.start(), wakeups))
    } else {
        None
    };
    let billing = pg.service("billing").map_err(|e| e.to_string())?;
    for i in 0..n {
        let scope = rt.scope();
        let amount = u32::try_from(i % 100).unwrap_or(0) + 1;
        let placed = scope
            .send(PlaceOrder {
                order: Uuid::now_v7(),
                amount,
            })
            .await
            .map_err(|e| format!("order {i}: {e}"))?;
        scope.complete().await.map_err(|e| e.to_string())?;
        if publish {
            let started = Instant::now();
            let outcome = billing
                .wait_for_perspective("billing.receivables", placed, Duration::from_secs(30))
                .await
                .map_err(|e| e.to_string())?;
            say(&format!(
                "synced {i} outcome={} elapsed_ms={}",
                outcome_label(&outcome),
                started.elapsed().as_millis()
            ));
        } else {
            say(&format!("sent {i}"));
        }
    }
    if let Some((handle, wakeups)) = handle {
        drop(wakeups);
        handle.shutdown().await;
    }
    say("finished");
    Ok(())
}

/// The PostgreSQL transport, each publish slowed by a delay after the
/// delivery committed (the window a SIGKILL aims at).
struct Slow {
    inner: PgTransport,
    delay: Duration,
}

impl Transport for Slow {
    fn publish<'a>(&'a self, message: &'a QueuedMessage) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.inner.publish(message).await?;
            tokio::time::sleep(self.delay).await;
            Ok(())
        })
    }
}

async fn publisher(url: &str, delay_ms: u64) -> std::result::Result<(), String> {
    let pg = connect(url, "orders").await?;
    let slow = Slow {
        inner: to_billing(&pg)?,
        delay: Duration::from_millis(delay_ms),
    };
    let handle = publisher_of(&pg, Arc::new(slow)).start();
    say("ready");
    let watch = async {
        loop {
            let pending: i64 =
                sqlx::query_scalar("select count(*) from wh_outbox where status = 'pending'")
                    .fetch_one(pg.pool())
                    .await
                    .unwrap_or(-1);
            if pending == 0 {
                say("idle");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::join!(watch, until_stdin_closes());
    handle.shutdown().await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["billing", url] => billing(url).await,
        ["orders", url, n, publish] => match n.parse() {
            Ok(n) => orders(url, n, *publish == "yes").await,
            Err(_) => Err(format!("not a number: {n:?}")),
        },
        ["publisher", url, delay] => match delay.parse() {
            Ok(delay) => publisher(url, delay).await,
            Err(_) => Err(format!("not a number: {delay:?}")),
        },
        _ => Err(
            "usage: pg_service billing <url> | orders <url> <n> <yes|no> | \
                  publisher <url> <delay_ms>"
                .to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_service: {e}");
            ExitCode::FAILURE
        }
    }
}

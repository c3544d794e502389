//! The quick start: an order flow on the in-memory backend, no server needed.
//!
//! `CreateOrder` -> `OrderCreated` -> the async `OrderSummaries` perspective,
//! plus an event receptor that "sends" a confirmation once the summary shows
//! the order. The caller reads its own writes with `send_and_sync`. Run it with
//! `cargo run --example orders`.
//!
//! The same flow runs on PostgreSQL when `DATABASE_URL` is set or with
//! `--postgres` (default URL `postgres://postgres@127.0.0.1:5432/postgres`):
//! `cargo run --example orders -- --postgres`. The only difference is one
//! line, `Runtime::builder().backend(pg)`; the events, read models and
//! cursors then live in the database and the partitioned runner applies the
//! async perspective.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use uuid::Uuid;
use whizbang_core::{
    await_perspective_sync, fire_at, perspective, receptor, Command, Context, Error, Event,
    FromServices, LensQuery, Receptor, Result, Runtime, Services,
};

// ---- messages -------------------------------------------------------------

/// Place an order; returns the new order's id (the state the caller needs).
#[derive(Command, Serialize, Deserialize, Debug)]
#[command(output = Uuid)]
struct CreateOrder {
    customer: String,
    lines: Vec<(String, u32, i64)>, // (sku, quantity, unit price in cents)
}

/// Ship an order that exists.
#[derive(Command, Serialize, Deserialize, Debug)]
struct ShipOrder {
    order_id: Uuid,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "orders.created")]
struct OrderCreated {
    #[stream_key]
    order_id: Uuid,
    customer: String,
    total_cents: i64,
    items: u32,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "orders.shipped")]
struct OrderShipped {
    #[stream_key]
    order_id: Uuid,
}

// ---- the write side ---------------------------------------------------------

#[derive(Default)]
struct OrderDesk;

#[receptor]
impl Receptor<CreateOrder> for OrderDesk {
    async fn handle(&self, cmd: CreateOrder, cx: &mut Context) -> Result<Uuid> {
        if cmd.lines.is_empty() {
            return Err(Error::rejected("an order needs at least one line"));
        }
        let order_id = Uuid::now_v7();
        let total_cents = cmd.lines.iter().map(|(_, q, p)| i64::from(*q) * p).sum();
        let items = cmd.lines.iter().map(|(_, q, _)| q).sum();
        cx.emit(OrderCreated {
            order_id,
            customer: cmd.customer,
            total_cents,
            items,
        })?;
        Ok(order_id)
    }
}

#[receptor]
impl Receptor<ShipOrder> for OrderDesk {
    async fn handle(&self, cmd: ShipOrder, cx: &mut Context) -> Result<()> {
        // Optimistic concurrency: ship only an order that exists (version >= 1).
        let version = cx.stream_version(cmd.order_id.into()).await?;
        if version == 0 {
            return Err(Error::rejected(format!(
                "order {} does not exist",
                cmd.order_id
            )));
        }
        cx.emit_expecting(
            OrderShipped {
                order_id: cmd.order_id,
            },
            whizbang_core::ExpectedVersion::Exact(version),
        )?;
        Ok(())
    }
}

/// A service the confirmation receptor needs, offered with `RuntimeBuilder::service`.
#[derive(Default)]
struct Outbox {
    sent: AtomicU32,
}

/// An event receptor: reacts to `OrderCreated` on its own task once the
/// `OrderSummaries` perspective has applied that very event, so the summary it
/// reads is never stale.
struct ConfirmationMailer {
    outbox: Arc<Outbox>,
}

impl FromServices for ConfirmationMailer {
    fn from_services(services: &Services) -> Result<Self> {
        Ok(Self {
            outbox: services.require::<Outbox>("ConfirmationMailer")?,
        })
    }
}

#[fire_at(PostPerspectiveDetached)]
#[await_perspective_sync(OrderSummaries, timeout_ms = 2000)]
#[receptor]
impl Receptor<OrderCreated> for ConfirmationMailer {
    async fn handle(&self, e: OrderCreated, cx: &mut Context) -> Result<()> {
        let summary = cx.lens::<OrderSummaries>().get(e.order_id.into()).await?;
        let items = summary.map_or(0, |s| s.items);
        self.outbox.sent.fetch_add(1, Ordering::SeqCst);
        println!(
            "  mailer    : summary synced ({items} items); confirmation queued for {} (order {})",
            e.customer,
            short(e.order_id)
        );
        Ok(())
    }
}

// ---- the read side -----------------------------------------------------------

#[derive(Default, Clone, Serialize, Deserialize, Debug)]
struct OrderSummary {
    customer: String,
    total_cents: i64,
    items: u32,
    status: String,
}

struct OrderSummaries;

/// Async: applied by the background runner, so reads may lag the writes.
#[perspective(model = OrderSummary, mode = async)]
impl OrderSummaries {
    fn created(s: &mut OrderSummary, e: &OrderCreated) {
        s.customer.clone_from(&e.customer);
        s.total_cents = e.total_cents;
        s.items = e.items;
        s.status = "created".into();
    }
    fn shipped(s: &mut OrderSummary, _: &OrderShipped) {
        s.status = "shipped".into();
    }
}

fn print_summary(when: &str, order: Uuid, summary: Option<OrderSummary>) {
    match summary {
        Some(s) => println!(
            "  read model: OrderSummaries[{}] {when}: {} item(s), {}.{:02} total, {} for {}",
            short(order),
            s.items,
            s.total_cents / 100,
            s.total_cents % 100,
            s.status,
            s.customer
        ),
        None => println!(
            "  read model: OrderSummaries[{}] {when}: not there yet",
            short(order)
        ),
    }
}

fn short(id: Uuid) -> String {
    id.to_string()[..8].to_owned()
}

/// The PostgreSQL URL to run on, when asked for (`DATABASE_URL` or `--postgres`).
fn postgres_url() -> Option<String> {
    let flag = std::env::args().skip(1).any(|a| a == "--postgres");
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if flag => Some("postgres://postgres@127.0.0.1:5432/postgres".to_owned()),
        _ => None,
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let outbox = Arc::new(Outbox::default());
    let builder = Runtime::builder().shared_service(Arc::clone(&outbox));
    let (runtime, postgres) = match postgres_url() {
        Some(url) => {
            let pg = whizbang_postgres::Postgres::connect(&url).await?;
            pg.migrate().await?;
            println!("whizbang quick start: orders, on PostgreSQL\n");
            (builder.backend(pg.clone()).build()?, Some(pg))
        }
        None => {
            println!("whizbang quick start: orders, in memory\n");
            (builder.build()?, None)
        }
    };
    run(&runtime, &outbox).await?;
    if let Some(pg) = postgres {
        drop(runtime);
        pg.close().await; // the runner releases its partitions first
    }
    Ok(())
}

async fn run(runtime: &Runtime, outbox: &Outbox) -> Result<()> {
    let scope = runtime.scope();
    println!("> send_and_sync CreateOrder {{ customer: ada, 2 x book @ 12.50, 1 x pen @ 3.00 }}");
    let order = scope
        .send_and_sync(CreateOrder {
            customer: "ada".into(),
            lines: vec![("book".into(), 2, 1250), ("pen".into(), 1, 300)],
        })
        .await?
        .into_synced()?;
    println!(
        "  desk      : order {} created, returned to the caller",
        short(order)
    );
    // The summary is async, yet send_and_sync waited for exactly this order's
    // event to be applied: the caller reads its own write.
    let lens = runtime.lens::<OrderSummaries>();
    print_summary("after create", order, lens.get(order.into()).await?);

    println!("> send_and_sync ShipOrder");
    scope
        .send_and_sync(ShipOrder { order_id: order })
        .await?
        .into_synced()?;
    print_summary("after ship", order, lens.get(order.into()).await?);
    scope.complete().await?;
    println!(
        "  scope     : completed, {} events appended",
        runtime.event_store().stream_version(order.into()).await?
    );

    println!("> send CreateOrder with no lines");
    match runtime
        .scope()
        .send(CreateOrder {
            customer: "bo".into(),
            lines: vec![],
        })
        .await
    {
        Err(e) => println!("  desk      : rejected: {e}"),
        Ok(_) => unreachable!("an empty order is rejected"),
    }

    // Let the detached mailer finish before reporting.
    runtime.wait_idle().await;
    println!("confirmations sent: {}", outbox.sent.load(Ordering::SeqCst));
    Ok(())
}

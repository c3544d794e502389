// `#[fire_at]` and `#[await_perspective_sync]` above and below `#[receptor]`,
// under every path they are reachable by.
use serde::{Deserialize, Serialize};
use whizbang_core::{
    await_perspective_sync, fire_at, receptor, Context, LifecycleStage, Receptor, Registry,
    Result, SyncFire,
};
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "orders.created")]
struct OrderCreated {
    #[stream_key]
    order: uuid::Uuid,
}

#[derive(Event, Serialize, Deserialize)]
struct OrderShipped(#[stream_key] uuid::Uuid);

struct OrderViews;

#[perspective(model = u32, name = "order-views")]
impl OrderViews {
    fn created(count: &mut u32, _: &OrderCreated) {
        *count += 1;
    }
}

struct Stock;

#[perspective(model = u32)]
impl Stock {
    fn shipped(count: &mut u32, _: &OrderShipped) {
        *count += 1;
    }
}

// Both above `#[receptor]`: they move themselves below it.
#[derive(Default)]
struct Invoicer;

#[fire_at(PostPerspectiveDetached)]
#[await_perspective_sync(OrderViews, event_types = [OrderCreated, OrderShipped], timeout_ms = 2000)]
#[receptor]
impl Receptor<OrderCreated> for Invoicer {
    async fn handle(&self, _: OrderCreated, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

// Both below, with full paths, several awaits and `fire = always`.
#[derive(Default)]
struct Mailer;

#[whizbang_core::receptor]
#[whizbang_core::await_perspective_sync(OrderViews, fire = always)]
#[whizbang_core::fire_at(PostAllPerspectivesDetached)]
#[await_perspective_sync(Stock, timeout_ms = 0, event_types = [OrderShipped], fire = on_success, trigger = true)]
impl Receptor<OrderShipped> for Mailer {
    async fn handle(&self, _: OrderShipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

// Above and below at once, with an attribute in between: the order written is kept.
#[derive(Default)]
struct Auditor;

/// Audits shipped orders.
#[await_perspective_sync(Stock)]
#[allow(clippy::unused_async)]
#[whizbang_core::await_perspective_sync(OrderViews)]
#[receptor]
#[await_perspective_sync(Stock, timeout_ms = 10, trigger = false)]
impl Receptor<OrderShipped> for Auditor {
    async fn handle(&self, _: OrderShipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

// Neither: the defaults.
#[derive(Default)]
struct Plain;

#[receptor]
impl Receptor<OrderCreated> for Plain {
    async fn handle(&self, _: OrderCreated, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {
    let registry = Registry::global().unwrap();
    let find = |name: &str| {
        registry
            .receptors()
            .iter()
            .find(|r| r.receptor == name)
            .unwrap_or_else(|| panic!("{name} is not registered"))
    };

    let invoicer = find("Invoicer");
    assert_eq!(invoicer.stage, Some(LifecycleStage::PostPerspectiveDetached));
    assert_eq!(invoicer.sync.len(), 1);
    assert_eq!(invoicer.sync[0].perspective, "order-views");
    assert_eq!(invoicer.sync[0].event_types, ["orders.created", "OrderShipped"]);
    assert_eq!(invoicer.sync[0].timeout_ms, 2000);
    assert_eq!(invoicer.sync[0].fire, SyncFire::OnSuccess);
    assert!(!invoicer.sync[0].trigger);

    let mailer = find("Mailer");
    assert_eq!(mailer.stage, Some(LifecycleStage::PostAllPerspectivesDetached));
    assert_eq!(mailer.sync.len(), 2);
    assert_eq!(mailer.sync[0].perspective, "order-views");
    assert!(mailer.sync[0].event_types.is_empty());
    assert_eq!(mailer.sync[0].timeout_ms, 5000);
    assert_eq!(mailer.sync[0].fire, SyncFire::Always);
    assert_eq!(mailer.sync[1].perspective, "Stock");
    assert_eq!(mailer.sync[1].event_types, ["OrderShipped"]);
    assert_eq!(mailer.sync[1].timeout_ms, 0);
    assert_eq!(mailer.sync[1].fire, SyncFire::OnSuccess);
    assert!(!mailer.sync[0].trigger);
    assert!(mailer.sync[1].trigger);

    let auditor = find("Auditor");
    assert_eq!(auditor.stage, None);
    assert_eq!(auditor.effective_stage(), LifecycleStage::PostDistributeDetached);
    let awaited: Vec<_> = auditor.sync.iter().map(|s| (s.perspective, s.timeout_ms)).collect();
    assert_eq!(awaited, [("Stock", 5000), ("order-views", 5000), ("Stock", 10)]);
    assert!(auditor.sync.iter().all(|s| !s.trigger));

    let plain = find("Plain");
    assert_eq!(plain.stage, None);
    assert!(plain.sync.is_empty());
    assert_eq!(plain.effective_stage(), LifecycleStage::PostDistributeInline);
}

use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::strategy::{Decision, PendingState, SyncStrategy};
use whizbang_core::{Perspective, Registry};
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct OrderPlaced {
    #[stream_key]
    order_id: Uuid,
    customer_id: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Totals {
    orders: u64,
}

mod custom {
    use super::*;

    /// Runs at 10 pending, else waits a minute.
    pub struct Tens;

    impl SyncStrategy for Tens {
        fn decide(&self, state: &PendingState) -> Decision {
            if state.pending >= 10 {
                Decision::Run { max_events: 10 }
            } else {
                Decision::Wait(Duration::from_secs(60))
            }
        }
        fn describe(&self) -> String {
            "tens".into()
        }
    }
}

struct Batched;
#[perspective(model = Totals, key = customer_id, strategy = batch(10, "1s"))]
impl Batched {
    fn placed(m: &mut Totals, _: &OrderPlaced) {
        m.orders += 1;
    }
}

struct Scheduled;
#[perspective(model = Totals, key = customer_id, strategy = scheduled("5s"), mode = async)]
impl Scheduled {
    fn placed(m: &mut Totals, _: &OrderPlaced) {
        m.orders += 1;
    }
}

struct Custom;
#[perspective(model = Totals, key = customer_id, strategy = custom::Tens)]
impl Custom {
    fn placed(m: &mut Totals, _: &OrderPlaced) {
        m.orders += 1;
    }
}

fn main() {
    assert!(<Batched as Perspective>::KEYED);
    assert_eq!(Batched::STRATEGY.describe(), "batch(10, 1s)");
    assert_eq!(Scheduled::STRATEGY.describe(), "scheduled(5s)");
    assert_eq!(Custom::STRATEGY.describe(), "tens");
    let registry = Registry::global().unwrap();
    let reg = registry.perspective_named("Batched").unwrap();
    assert!(reg.is_keyed());
    assert_eq!(reg.strategy.describe(), "batch(10, 1s)");
}

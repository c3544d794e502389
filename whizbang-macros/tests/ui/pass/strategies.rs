use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::strategy::{Batch, Decision, PendingState, SyncStrategy};
use whizbang_core::Perspective;
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct OrderCreated {
    #[stream_key]
    order_id: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Count(u64);

mod custom {
    use super::*;

    pub struct Nightly;

    impl SyncStrategy for Nightly {
        fn decide(&self, _: &PendingState) -> Decision {
            Decision::Wait(Duration::from_secs(3600))
        }
        fn describe(&self) -> String {
            "nightly".into()
        }
    }

    pub const BIG_BATCH: Batch = Batch {
        max_events: 1000,
        max_wait: Duration::from_secs(1),
    };
}

struct Batched;
#[perspective(model = Count, strategy = batch(100, "50ms"))]
impl Batched {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

struct Every5s;
#[perspective(model = Count, strategy = scheduled("5s"))]
impl Every5s {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

struct Live;
#[perspective(model = Count, strategy = realtime, mode = async)]
impl Live {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

struct Custom;
#[perspective(model = Count, strategy = custom::Nightly)]
impl Custom {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

struct CustomConst;
#[perspective(model = Count, strategy = custom::BIG_BATCH)]
impl CustomConst {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

struct Default_;
#[perspective(model = Count)]
impl Default_ {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

fn main() {
    assert_eq!(Batched::STRATEGY.describe(), "batch(100, 50ms)");
    assert_eq!(Every5s::STRATEGY.describe(), "scheduled(5s)");
    assert!(Live::STRATEGY.is_realtime());
    assert_eq!(Custom::STRATEGY.describe(), "nightly");
    assert_eq!(CustomConst::STRATEGY.describe(), "batch(1000, 1s)");
    assert!(Default_::STRATEGY.is_realtime());
}

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct OrderCreated {
    #[stream_key]
    order_id: Uuid,
}

struct Zero;

#[perspective(model = u64, version = 0)]
impl Zero {
    fn created(count: &mut u64, _: &OrderCreated) {
        *count += 1;
    }
}

struct Twice;

#[perspective(model = u64, version = 2, version = 3)]
impl Twice {
    fn created(count: &mut u64, _: &OrderCreated) {
        *count += 1;
    }
}

fn main() {}

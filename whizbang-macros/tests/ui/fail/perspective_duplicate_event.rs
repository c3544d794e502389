use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct OrderCreated {
    #[stream_key]
    order_id: Uuid,
}

struct Orders;

#[perspective(model = u64, mode = eventually)]
impl Orders {
    fn created(count: &mut u64, _: &OrderCreated) {
        *count += 1;
    }

    fn created_again(count: &mut u64, _: &OrderCreated) {
        *count += 1;
    }
}

struct Empty;

#[perspective(model = u64)]
impl Empty {}

fn main() {}

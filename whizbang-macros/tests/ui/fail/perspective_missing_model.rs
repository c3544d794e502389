use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct OrderCreated {
    #[stream_key]
    order_id: Uuid,
}

struct Orders;

#[perspective(mode = inline)]
impl Orders {
    fn created(count: &mut u64, _: &OrderCreated) {
        *count += 1;
    }
}

fn main() {}

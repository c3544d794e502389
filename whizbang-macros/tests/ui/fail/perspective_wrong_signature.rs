use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct OrderCreated {
    #[stream_key]
    order_id: Uuid,
}

#[derive(Event, Serialize, Deserialize)]
struct OrderShipped {
    #[stream_key]
    order_id: Uuid,
}

struct Orders;

#[perspective(model = u64)]
impl Orders {
    fn with_self(&self, _: &OrderCreated) {}

    fn one_argument(count: &mut u64) {
        *count += 1;
    }

    fn shared_model(_count: &u64, _: &OrderCreated) {}

    fn wrong_model(count: &mut u32, _: &OrderShipped) {
        *count += 1;
    }

    async fn not_async(count: &mut u64, _: &OrderShipped) {
        *count += 1;
    }
}

fn main() {}

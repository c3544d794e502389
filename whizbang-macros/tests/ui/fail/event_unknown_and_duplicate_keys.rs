use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::Event;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "orders.created", version = 2)]
#[event(name = "orders.made")]
struct OrderCreated {
    #[stream_key]
    order_id: Uuid,
}

fn main() {}

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::Event;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "orders.placed", publish = true)]
struct OrderPlaced {
    #[stream_key]
    order_id: Uuid,
}

#[derive(Event, Serialize, Deserialize)]
#[event(publish, publish)]
struct OrderShipped {
    #[stream_key]
    order_id: Uuid,
}

fn main() {}

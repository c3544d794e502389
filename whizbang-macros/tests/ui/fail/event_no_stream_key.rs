use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::Event;

#[derive(Event, Serialize, Deserialize)]
struct OrderCreated {
    order_id: Uuid,
}

fn main() {}

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::Event;

#[derive(Event, Serialize, Deserialize)]
struct OrderMerged {
    #[stream_key]
    order_id: Uuid,
    #[stream_key]
    other_order_id: Uuid,
}

fn main() {}

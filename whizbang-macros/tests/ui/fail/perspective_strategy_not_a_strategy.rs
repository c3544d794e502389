use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct OrderCreated {
    #[stream_key]
    order_id: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Count(u64);

/// Not a `SyncStrategy`.
struct Hourly;

struct Orders;
#[perspective(model = Count, strategy = Hourly)]
impl Orders {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

fn main() {}

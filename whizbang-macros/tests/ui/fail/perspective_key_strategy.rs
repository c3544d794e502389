use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct OrderPlaced {
    #[stream_key]
    order_id: Uuid,
    customer_id: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Totals {
    orders: u64,
}

struct Customers;

// A keyed perspective takes a strategy, but neither a keyed perspective nor
// a strategy can be inline: both errors are reported.
#[perspective(model = Totals, key = customer_id, strategy = batch(10, "1s"), mode = inline)]
impl Customers {
    fn placed(m: &mut Totals, _: &OrderPlaced) {
        m.orders += 1;
    }
}

fn main() {}

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_core::store::ModelKey;
use whizbang_core::{IntoModelKey, Perspective, Registry, StreamId, StreamKey};
use whizbang_macros::{perspective, Event};

/// A user's own id type, keyed through `IntoModelKey`.
#[derive(Serialize, Deserialize, Clone, Copy)]
struct CustomerId(Uuid);

impl IntoModelKey for CustomerId {
    fn to_model_key(&self) -> ModelKey {
        StreamId::from(self.0)
    }
}

#[derive(Event, Serialize, Deserialize)]
struct OrderPlaced {
    #[stream_key]
    order_id: Uuid,
    customer_id: Uuid,
    amount: u64,
}

#[derive(Event, Serialize, Deserialize)]
struct OrderRefunded {
    #[stream_key]
    order_id: StreamId,
    customer_id: StreamId,
    amount: u64,
}

#[derive(Event, Serialize, Deserialize)]
struct LoyaltyGranted {
    #[stream_key]
    grant: Uuid,
    customer_id: CustomerId,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct CustomerTotals {
    total: i64,
    loyal: bool,
}

struct Customers;

#[perspective(model = CustomerTotals, key = customer_id, mode = async)]
impl Customers {
    fn placed(m: &mut CustomerTotals, e: &OrderPlaced) {
        m.total += i64::try_from(e.amount).unwrap_or(i64::MAX);
    }
    fn refunded(m: &mut CustomerTotals, e: &OrderRefunded) {
        m.total -= i64::try_from(e.amount).unwrap_or(i64::MAX);
    }
    fn loyal(m: &mut CustomerTotals, _: &LoyaltyGranted) {
        m.loyal = true;
    }
}

fn main() {
    assert!(<Customers as Perspective>::KEYED);
    let reg = Registry::global().unwrap();
    let reg = reg.perspective_named("Customers").unwrap();
    assert!(reg.is_keyed());
    let _ = Uuid::nil().to_stream_id();
}

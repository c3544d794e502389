//! The order domain of the README's "A taste" section, so the README's later
//! snippets compile against it (they import it in a hidden `# use` line).
//! Keep it the same code as that section.

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_core::{perspective, receptor, Command, Context, Event, Receptor, Result};

/// Creates an order; the caller gets its id back.
#[derive(Command, Serialize, Deserialize)]
#[command(output = Uuid)]
pub struct CreateOrder {
    /// Who ordered.
    pub customer: String,
}

/// An order was created.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "orders.created")]
pub struct OrderCreated {
    /// The order's id: its stream.
    #[stream_key]
    pub order_id: Uuid,
    /// Who ordered.
    pub customer: String,
}

/// Handles [`CreateOrder`].
#[derive(Default)]
pub struct OrderDesk;

#[receptor]
impl Receptor<CreateOrder> for OrderDesk {
    async fn handle(&self, cmd: CreateOrder, cx: &mut Context) -> Result<Uuid> {
        let order_id = Uuid::now_v7();
        cx.emit(OrderCreated {
            order_id,
            customer: cmd.customer,
        })?;
        Ok(order_id)
    }
}

/// The read model of one order.
#[derive(Default, Clone, Serialize, Deserialize)]
pub struct OrderSummary {
    /// Who ordered.
    pub customer: String,
}

/// Folds orders into [`OrderSummary`] (async).
pub struct OrderSummaries;

#[perspective(model = OrderSummary)]
impl OrderSummaries {
    fn created(s: &mut OrderSummary, e: &OrderCreated) {
        s.customer.clone_from(&e.customer);
    }
}

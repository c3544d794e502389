//! The order domain of the README's "A taste" and "Deciding from current
//! state" sections, so the README's later snippets compile against it (they
//! import it in a hidden `# use` line). Keep it the same code as those sections.

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_core::{
    perspective, receptor, Command, Context, Error, Event, ExpectedVersion, Receptor, Result,
};

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

/// Cancels an order (the README's live fold example).
#[derive(Command, Serialize, Deserialize)]
pub struct CancelOrder {
    /// The order.
    pub order_id: Uuid,
}

/// An order was cancelled.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "orders.cancelled")]
pub struct OrderCancelled {
    /// The order's id: its stream.
    #[stream_key]
    pub order_id: Uuid,
}

/// The state [`OrderClerk`] decides from.
#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderState {
    /// The order was created.
    pub placed: bool,
    /// The order was cancelled.
    pub cancelled: bool,
}

/// Folds an order's stream into [`OrderState`].
pub struct OrderStates;

#[perspective(model = OrderState)]
impl OrderStates {
    fn created(s: &mut OrderState, _: &OrderCreated) {
        s.placed = true;
    }
    fn cancelled(s: &mut OrderState, _: &OrderCancelled) {
        s.cancelled = true;
    }
}

/// Handles [`CancelOrder`] from the order's current state.
#[derive(Default)]
pub struct OrderClerk;

#[receptor]
impl Receptor<CancelOrder> for OrderClerk {
    async fn handle(&self, cmd: CancelOrder, cx: &mut Context) -> Result<()> {
        let order = cx.aggregate::<OrderStates>(cmd.order_id).await?; // folds the stream now
        if !order.placed {
            return Err(Error::rejected("no such order"));
        }
        if order.cancelled {
            return Err(Error::rejected("already cancelled"));
        }
        let cancelled = OrderCancelled {
            order_id: cmd.order_id,
        };
        cx.emit_expecting(cancelled, ExpectedVersion::Exact(order.version))?;
        Ok(())
    }
}

// An event receptor without #[receptor] would compile and never run: it is
// a compile error whose note says to add the attribute.
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_core::{Context, Receptor, Result};
use whizbang_macros::Event;

#[derive(Event, Serialize, Deserialize)]
struct OrderPlaced {
    #[stream_key]
    order: Uuid,
}

#[derive(Default)]
struct Mailer;

impl Receptor<OrderPlaced> for Mailer {
    async fn handle(&self, _: OrderPlaced, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}

use serde::{Deserialize, Serialize};
use whizbang_core::{fire_at, receptor, Context, Receptor, Result};
use whizbang_macros::Event;

#[derive(Event, Serialize, Deserialize)]
struct Shipped(#[stream_key] uuid::Uuid);

#[derive(Default)]
struct Empty;

#[fire_at]
#[receptor]
impl Receptor<Shipped> for Empty {
    async fn handle(&self, _: Shipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct TwoStages;

#[receptor]
#[fire_at(PreOutboxDetached, PostOutboxDetached)]
impl Receptor<Shipped> for TwoStages {
    async fn handle(&self, _: Shipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}

use serde::{Deserialize, Serialize};
use whizbang_core::{fire_at, receptor, Context, Receptor, Result};
use whizbang_macros::Event;

#[derive(Event, Serialize, Deserialize)]
struct Shipped(#[stream_key] uuid::Uuid);

#[derive(Default)]
struct Mailer;

#[fire_at(PostPerspectiveDetached)]
#[receptor]
#[fire_at(PostAllPerspectivesDetached)]
impl Receptor<Shipped> for Mailer {
    async fn handle(&self, _: Shipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct BothAbove;

#[fire_at(PreOutboxDetached)]
#[fire_at(PostOutboxDetached)]
#[receptor]
impl Receptor<Shipped> for BothAbove {
    async fn handle(&self, _: Shipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}

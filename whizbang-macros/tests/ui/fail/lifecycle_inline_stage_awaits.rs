use serde::{Deserialize, Serialize};
use whizbang_core::{await_perspective_sync, fire_at, receptor, Context, Receptor, Result};
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct Shipped(#[stream_key] uuid::Uuid);

struct Views;

#[perspective(model = u32)]
impl Views {
    fn shipped(count: &mut u32, _: &Shipped) {
        *count += 1;
    }
}


#[derive(Default)]
struct Above;

#[fire_at(PostPerspectiveInline)]
#[await_perspective_sync(Views)]
#[receptor]
impl Receptor<Shipped> for Above {
    async fn handle(&self, _: Shipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct Below;

#[receptor]
#[await_perspective_sync(Views, timeout_ms = 100)]
#[fire_at(PreDistributeInline)]
impl Receptor<Shipped> for Below {
    async fn handle(&self, _: Shipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}

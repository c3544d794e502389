use serde::{Deserialize, Serialize};
use whizbang_core::{await_perspective_sync, receptor, Context, Receptor, Result};
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct Shipped(#[stream_key] uuid::Uuid);

struct Views;

#[perspective(model = u32, strategy = scheduled("1h"))]
impl Views {
    fn shipped(count: &mut u32, _: &Shipped) {
        *count += 1;
    }
}

#[derive(Default)]
struct Mailer;

#[await_perspective_sync(Views, trigger = yes)]
#[await_perspective_sync(Views, trigger = "true")]
#[await_perspective_sync(Views, trigger = 1)]
#[await_perspective_sync(Views, trigger)]
#[await_perspective_sync(Views, trigger = true, trigger = false)]
#[receptor]
impl Receptor<Shipped> for Mailer {
    async fn handle(&self, _: Shipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}

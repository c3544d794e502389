// The runtime reached through a re-export under another name.
mod app {
    pub use whizbang_core as wb;
}

use app::wb;
use serde::{Deserialize, Serialize};
use whizbang_macros::{perspective, receptor, Command, Event};

#[derive(Command, Serialize, Deserialize)]
#[command(crate = crate::app::wb, output = u32)]
struct Double {
    n: u32,
}

#[derive(Event, Serialize, Deserialize)]
#[event(crate = crate::app::wb)]
struct Doubled {
    #[stream_key]
    stream: wb::StreamId,
    n: u32,
}

#[derive(Default)]
struct Doubler;

#[receptor(crate = crate::app::wb)]
impl wb::Receptor<Double> for Doubler {
    async fn handle(&self, cmd: Double, _: &mut wb::Context) -> wb::Result<u32> {
        Ok(cmd.n * 2)
    }
}

struct Totals;

#[perspective(crate = crate::app::wb, model = u32)]
impl Totals {
    fn doubled(total: &mut u32, e: &Doubled) {
        *total += e.n;
    }
}

fn main() {
    let registry = wb::Registry::global().unwrap();
    assert_eq!(registry.receptors().len(), 1);
    assert_eq!(registry.perspectives().len(), 1);
    assert_eq!(registry.messages().len(), 2);
}

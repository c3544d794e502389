use serde::{Deserialize, Serialize};
use whizbang_core::{Context, Receptor, Result};
use whizbang_macros::{receptor, Command};

#[derive(Command, Serialize, Deserialize)]
struct Ping;

#[derive(Default)]
struct Pinger;

#[receptor(name = "pinger")]
impl Receptor<Ping> for Pinger {
    async fn handle(&self, _: Ping, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}

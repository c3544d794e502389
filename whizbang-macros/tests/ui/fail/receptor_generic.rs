use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use whizbang_core::{Context, Receptor, Result};
use whizbang_macros::{receptor, Command};

#[derive(Command, Serialize, Deserialize)]
struct Ping;

#[derive(Default)]
struct Pinger<T>(PhantomData<fn() -> T>);

#[receptor]
impl<T: 'static> Receptor<Ping> for Pinger<T> {
    async fn handle(&self, _: Ping, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}

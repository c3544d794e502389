//! Stage names are resolved by rustc against `whizbang_core`'s stage constants:
//! an unknown one is rejected on the word, with the near one suggested.

use serde::{Deserialize, Serialize};
use whizbang_core::{fire_at, receptor, Context, Receptor, Result};
use whizbang_macros::Event;

#[derive(Event, Serialize, Deserialize)]
struct Shipped(#[stream_key] uuid::Uuid);

#[derive(Default)]
struct Typo;

#[fire_at(PostPerspectivDetached)]
#[receptor]
impl Receptor<Shipped> for Typo {
    async fn handle(&self, _: Shipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct NoMode;

#[receptor]
#[fire_at(PostPerspective)]
impl Receptor<Shipped> for NoMode {
    async fn handle(&self, _: Shipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct Unknown;

#[receptor]
#[fire_at(Whenever)]
impl Receptor<Shipped> for Unknown {
    async fn handle(&self, _: Shipped, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn main() {}

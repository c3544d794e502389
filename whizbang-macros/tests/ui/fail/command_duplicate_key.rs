use serde::{Deserialize, Serialize};
use whizbang_macros::Command;

#[derive(Command, Serialize, Deserialize)]
#[command(output = u32, output = u64)]
struct Count;

fn main() {}

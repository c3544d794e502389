use whizbang_macros::receptor;

#[receptor]
fn handle() {}

fn main() {}

// Sending a type that is not a command: the note names the derive by the
// path of the crate users depend on (`whizbang_core`).
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PlaceOrder;

async fn send<C: whizbang_core::Command>(scope: &whizbang_core::Scope, command: C) {
    let _ = scope.send(command).await;
}

fn takes_a_message<M: whizbang_core::Message>(_: M) {}

fn main() {
    let _ = send::<PlaceOrder>;
    takes_a_message(PlaceOrder);
}

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::Event;

#[derive(Event, Serialize, Deserialize)]
struct Wrapped<T> {
    #[stream_key]
    id: Uuid,
    inner: T,
}

#[derive(Event, Serialize, Deserialize)]
enum OrderEvent {
    Created { id: Uuid },
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "")]
struct Unnamed {
    #[stream_key]
    id: Uuid,
}

fn main() {}

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct OrderCreated {
    #[stream_key]
    order_id: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Count(u64);

struct BadUnit;
#[perspective(model = Count, strategy = batch(100, "50 parsecs"))]
impl BadUnit {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

struct ZeroBatch;
#[perspective(model = Count, strategy = batch(0, "50ms"))]
impl ZeroBatch {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

struct ZeroSchedule;
#[perspective(model = Count, strategy = scheduled("0s"))]
impl ZeroSchedule {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

struct NotAString;
#[perspective(model = Count, strategy = scheduled(5))]
impl NotAString {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

struct Unknown;
#[perspective(model = Count, strategy = hourly("1h"))]
impl Unknown {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

struct InlineBatch;
#[perspective(model = Count, mode = inline, strategy = batch(10, "1s"))]
impl InlineBatch {
    fn created(c: &mut Count, _: &OrderCreated) {
        c.0 += 1;
    }
}

fn main() {}

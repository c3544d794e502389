use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_core::perspective::BulkBatch;
use whizbang_macros::{perspective, Event};

#[derive(Event, Serialize, Deserialize)]
struct Placed {
    #[stream_key]
    id: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Count {
    n: u64,
}

struct Counts;

// The hook must be async: a plain function is refused where it is named.
#[perspective(model = Count, bulk = sink)]
impl Counts {
    fn placed(m: &mut Count, _: &Placed) {
        m.n += 1;
    }
    fn sink(_: BulkBatch<'_, Count>) {}
}

fn main() {}

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

#[derive(Debug)]
struct Refused;
impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}

/// A method of the impl, returning a `Result`.
struct ByMethod;
#[perspective(model = Count, strategy = batch(100, "50ms"), bulk = Self::upsert)]
impl ByMethod {
    fn placed(m: &mut Count, _: &Placed) {
        m.n += 1;
    }
    async fn upsert(batch: BulkBatch<'_, Count>) -> Result<(), Refused> {
        if batch.iter().any(|i| i.model().is_some_and(|m| m.n > 1_000)) {
            return Err(Refused);
        }
        Ok(())
    }
}

/// A free function returning `()`.
async fn log(batch: BulkBatch<'_, Count>) {
    let _ = batch.len();
}

struct ByFunction;
#[perspective(model = Count, bulk = log)]
impl ByFunction {
    fn placed(m: &mut Count, _: &Placed) {
        m.n += 1;
    }
}

fn main() {}

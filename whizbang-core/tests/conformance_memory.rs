//! The backend conformance suite against the memory stores, in both model
//! formats, and the JSON path end to end: a runtime on stores that keep only
//! JSON applies, reads and waits like one on typed stores.

use whizbang_core::backend::conformance::Stores;
use whizbang_core::backend::{MemoryEventStore, MemoryPerspectiveStore};

/// The memory stores keeping typed payloads and typed models.
mod typed {
    use super::*;
    whizbang_core::conformance_tests!(|| async {
        Stores::new(MemoryEventStore::new(), MemoryPerspectiveStore::new())
    });
}

/// The memory stores keeping only JSON, as a database does.
mod json {
    use super::*;
    whizbang_core::conformance_tests!(|| async {
        Stores::new(MemoryEventStore::json(), MemoryPerspectiveStore::json())
    });
}

#[tokio::test]
async fn run_all_passes_on_one_shared_pair_of_stores() {
    // Contracts use their own ids, so one pair of stores carries them all.
    let stores = Stores::new(MemoryEventStore::json(), MemoryPerspectiveStore::json());
    whizbang_core::backend::conformance::run_all(&move || {
        let s = stores.clone();
        async move { s }
    })
    .await;
}

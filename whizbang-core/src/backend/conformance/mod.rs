//! The backend conformance suite: the contract of [`backend`](super) as tests
//! any backend runs against itself (feature `conformance`).
//!
//! Each contract is an `async fn` named after the behaviour it proves, taking
//! a [`BackendFactory`] that hands out the stores under test. Run them all
//! with [`run_all`], call one from your own `#[tokio::test]`, or let
//! [`conformance_tests!`](crate::conformance_tests) generate one `#[test]` per
//! contract:
//!
//! ```
//! use whizbang_core::backend::conformance::Stores;
//! use whizbang_core::backend::{MemoryEventStore, MemoryPerspectiveStore};
//!
//! fn memory() -> Stores {
//!     Stores::new(MemoryEventStore::new(), MemoryPerspectiveStore::new())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! whizbang_core::backend::conformance::run_all(&|| async { memory() }).await;
//! # }
//! ```
//!
//! In a test file, `whizbang_core::conformance_tests!(|| async { memory() });`
//! expands to one test per contract.
//!
//! The contracts use fresh random stream ids and their own perspective names
//! (`whizbang.conformance.<contract>`), so they may share one database, run in
//! parallel and run again on the same data. A contract that finds a breach
//! panics with a sentence naming the rule it broke (this is test code). Waits
//! are bounded: what must finish gets [`BOUND`]; what must keep waiting (a
//! second claim) is watched for [`GRACE`].
//!
//! The message queue's contracts are in [`queue`], with their own runner and
//! macro: each needs a queue of its own. The outbox's are in [`outbox`].
//! Those of keyed perspectives (a global order, batches, keyed sync
//! answers), which a backend may not offer, are in [`keyed`].

use super::{EventStore, PerspectiveStore, StoreSyncBackend, SyncBackend};
use crate::store::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long an operation that must finish may take.
pub const BOUND: Duration = Duration::from_secs(5);
/// How long a second claim is watched to see that it keeps waiting.
pub const GRACE: Duration = Duration::from_millis(50);

/// The stores under test: an event store, a perspective store over the same
/// data, and the sync backend answering from them.
#[derive(Clone)]
pub struct Stores {
    /// The event store.
    pub events: Arc<dyn EventStore>,
    /// The perspective store.
    pub perspectives: Arc<dyn PerspectiveStore>,
    /// The sync backend (by default a [`StoreSyncBackend`] over the two stores).
    pub sync: Arc<dyn SyncBackend>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("model_format", &self.perspectives.model_format())
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// These stores, with a [`StoreSyncBackend`] over them.
    #[must_use]
    pub fn new(events: impl EventStore, perspectives: impl PerspectiveStore) -> Self {
        Self::from_shared(Arc::new(events), Arc::new(perspectives))
    }

    /// Already shared stores, with a [`StoreSyncBackend`] over them.
    #[must_use]
    pub fn from_shared(
        events: Arc<dyn EventStore>,
        perspectives: Arc<dyn PerspectiveStore>,
    ) -> Self {
        let sync = Arc::new(StoreSyncBackend::new(
            Arc::clone(&events),
            Arc::clone(&perspectives),
        ));
        Stores {
            events,
            perspectives,
            sync,
        }
    }

    /// Tests this sync backend instead (a database backend's own).
    #[must_use]
    pub fn with_sync_backend(mut self, sync: impl SyncBackend) -> Self {
        self.sync = Arc::new(sync);
        self
    }
}

/// Hands out the stores under test, once per contract. Implemented by every
/// `Fn() -> impl Future<Output = Stores>` (`|| async { .. }`).
pub trait BackendFactory: Send + Sync {
    /// The stores for one contract (fresh, or shared: contracts use their own
    /// ids).
    fn stores(&self) -> BoxFuture<'_, Stores>;
}

impl<F, Fut> BackendFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Stores> + Send + 'static,
{
    fn stores(&self) -> BoxFuture<'_, Stores> {
        Box::pin(self())
    }
}

/// Runs `contract` to completion on a fresh current-thread tokio runtime with
/// every driver the build has enabled (what [`conformance_tests!`](crate::conformance_tests)
/// calls from each generated `#[test]`).
///
/// # Panics
/// When the tokio runtime cannot be built, or the contract is broken.
pub fn block_on<F: Future>(contract: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime builds")
        .block_on(contract)
}

/// Generates one `#[test]` per contract of the
/// [conformance suite](crate::backend::conformance), each named after its
/// contract, running on its own current-thread tokio runtime. The argument is
/// an expression of a [`BackendFactory`](crate::backend::conformance::BackendFactory)
/// (evaluated in each test). Put each backend's tests in its own module.
///
/// ```
/// mod memory_conformance {
///     use whizbang_core::backend::conformance::Stores;
///     use whizbang_core::backend::{MemoryEventStore, MemoryPerspectiveStore};
///
///     whizbang_core::conformance_tests!(|| async {
///         Stores::new(MemoryEventStore::new(), MemoryPerspectiveStore::new())
///     });
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr $(,)?) => {
        $crate::__conformance_tests! { $factory;
            append_is_all_or_nothing_across_streams,
            stored_events_keep_their_ids_types_data_and_metadata,
            expected_version_any_admits_every_version,
            expected_version_no_stream_admits_only_a_new_stream,
            expected_version_exact_admits_only_that_version,
            concurrency_error_names_the_stream_the_expectation_and_the_actual_version,
            duplicate_ids_in_one_append_are_refused_and_nothing_is_appended,
            an_id_already_stored_is_refused_and_nothing_is_appended,
            read_stream_returns_the_events_after_a_version_in_order,
            stream_version_is_zero_for_a_new_stream_and_counts_its_events,
            locate_finds_stored_ids_and_leaves_unknown_ones_out,
            append_inline_applies_a_target_with_the_events_or_not_at_all,
            append_inline_commits_a_failed_cursor_with_the_events,
            a_second_claim_waits_until_the_first_unit_commits,
            a_second_claim_waits_until_the_first_unit_is_dropped,
            claims_on_other_keys_and_perspectives_do_not_wait,
            commit_stores_model_and_checkpoint_together,
            commit_without_a_model_keeps_the_stored_model,
            a_dropped_unit_changes_nothing_even_after_take_model,
            reads_never_wait_for_a_claim,
            failure_and_skipped_records_round_trip,
            list_models_is_ordered_by_key_and_leaves_out_keys_without_a_model,
            every_store_keeps_a_json_model,
            commit_delete_removes_the_model_and_keeps_the_cursor,
            a_batch_write_that_deletes_removes_the_model_and_keeps_the_cursor,
            sync_backend_answers_applied_once_the_cursor_reached_the_event,
            sync_backend_answers_pending_for_stored_events_not_yet_applied,
            sync_backend_answers_not_arrived_for_unknown_ids,
            sync_backend_answers_not_applicable_for_types_the_perspective_does_not_handle,
            sync_backend_answers_failed_at_and_after_the_failed_version,
            sync_backend_answers_each_inquiry_in_order,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($factory:expr; $($contract:ident),* $(,)?) => {
        $(
            #[test]
            fn $contract() {
                let factory = $factory;
                $crate::backend::conformance::block_on(
                    $crate::backend::conformance::$contract(&factory),
                );
            }
        )*
    };
}

#[doc(inline)]
pub use crate::conformance_tests;

/// Runs every contract, in order, each with stores from `backend`.
///
/// # Panics
/// At the first broken contract, naming the rule.
pub async fn run_all(backend: &dyn BackendFactory) {
    append_is_all_or_nothing_across_streams(backend).await;
    stored_events_keep_their_ids_types_data_and_metadata(backend).await;
    expected_version_any_admits_every_version(backend).await;
    expected_version_no_stream_admits_only_a_new_stream(backend).await;
    expected_version_exact_admits_only_that_version(backend).await;
    concurrency_error_names_the_stream_the_expectation_and_the_actual_version(backend).await;
    duplicate_ids_in_one_append_are_refused_and_nothing_is_appended(backend).await;
    an_id_already_stored_is_refused_and_nothing_is_appended(backend).await;
    read_stream_returns_the_events_after_a_version_in_order(backend).await;
    stream_version_is_zero_for_a_new_stream_and_counts_its_events(backend).await;
    locate_finds_stored_ids_and_leaves_unknown_ones_out(backend).await;
    append_inline_applies_a_target_with_the_events_or_not_at_all(backend).await;
    append_inline_commits_a_failed_cursor_with_the_events(backend).await;
    a_second_claim_waits_until_the_first_unit_commits(backend).await;
    a_second_claim_waits_until_the_first_unit_is_dropped(backend).await;
    claims_on_other_keys_and_perspectives_do_not_wait(backend).await;
    commit_stores_model_and_checkpoint_together(backend).await;
    commit_without_a_model_keeps_the_stored_model(backend).await;
    a_dropped_unit_changes_nothing_even_after_take_model(backend).await;
    reads_never_wait_for_a_claim(backend).await;
    failure_and_skipped_records_round_trip(backend).await;
    list_models_is_ordered_by_key_and_leaves_out_keys_without_a_model(backend).await;
    every_store_keeps_a_json_model(backend).await;
    commit_delete_removes_the_model_and_keeps_the_cursor(backend).await;
    a_batch_write_that_deletes_removes_the_model_and_keeps_the_cursor(backend).await;
    sync_backend_answers_applied_once_the_cursor_reached_the_event(backend).await;
    sync_backend_answers_pending_for_stored_events_not_yet_applied(backend).await;
    sync_backend_answers_not_arrived_for_unknown_ids(backend).await;
    sync_backend_answers_not_applicable_for_types_the_perspective_does_not_handle(backend).await;
    sync_backend_answers_failed_at_and_after_the_failed_version(backend).await;
    sync_backend_answers_each_inquiry_in_order(backend).await;
}

mod event_store;
mod helpers;
mod inline;
pub mod keyed;
pub mod outbox;
mod perspective_store;
pub mod queue;
mod sync_backend;
mod tombstone;

pub use event_store::*;
pub use inline::*;
pub use perspective_store::*;
pub use sync_backend::*;
pub use tombstone::*;

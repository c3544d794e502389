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

use super::{
    Checkpoint, CheckpointFailure, EventMetadata, EventStore, EventSyncStatus, ModelFormat,
    ModelValue, NewEvent, PerspectiveStore, PerspectiveUnit, SkippedEvent, StoreSyncBackend,
    StreamAppend, SyncBackend, SyncInquiry,
};
use crate::error::{Error, Result};
use crate::message::{EventId, ExpectedVersion, MessageId, Metadata, StreamId};
use crate::store::BoxFuture;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    sync_backend_answers_applied_once_the_cursor_reached_the_event(backend).await;
    sync_backend_answers_pending_for_stored_events_not_yet_applied(backend).await;
    sync_backend_answers_not_arrived_for_unknown_ids(backend).await;
    sync_backend_answers_not_applicable_for_types_the_perspective_does_not_handle(backend).await;
    sync_backend_answers_failed_at_and_after_the_failed_version(backend).await;
    sync_backend_answers_each_inquiry_in_order(backend).await;
}

// ---- helpers ----------------------------------------------------------------------

/// The model the perspective-store contracts commit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    count: u64,
    note: String,
}

fn tally(count: u64) -> Tally {
    Tally {
        count,
        note: format!("tally «{count}» \"quoted\""),
    }
}

/// `t` in the form `store` keeps.
fn model(store: &dyn PerspectiveStore, t: &Tally) -> ModelValue {
    match store.model_format() {
        ModelFormat::Typed => ModelValue::Typed(Box::new(t.clone())),
        ModelFormat::Json => {
            ModelValue::Json(serde_json::value::to_raw_value(t).expect("a Tally serialises"))
        }
    }
}

/// The tally in `value`, in either form.
fn read_tally(value: &ModelValue) -> Tally {
    match value {
        ModelValue::Typed(m) => m
            .as_any()
            .downcast_ref::<Tally>()
            .cloned()
            .expect("the typed model read back is the Tally committed"),
        ModelValue::Json(j) => serde_json::from_str(j.get())
            .unwrap_or_else(|e| panic!("the JSON model read back is not the Tally committed: {e}")),
    }
}

async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {BOUND:?}"),
    }
}

fn ok<T>(what: &str, r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn event(stream: StreamId, event_type: &'static str, n: u64) -> NewEvent {
    let mut extra = Metadata::default();
    extra.insert("tenant", "conformance");
    NewEvent {
        event_id: EventId::new(),
        stream_id: stream,
        event_type,
        data: serde_json::value::to_raw_value(&serde_json::json!({ "n": n, "text": "é\"\\" }))
            .expect("JSON serialises"),
        metadata: EventMetadata {
            correlation_id: MessageId::new(),
            causation_id: Some(MessageId::new()),
            timestamp: SystemTime::now(),
            extra,
        },
        typed: None,
    }
}

fn events(stream: StreamId, n: u64) -> Vec<NewEvent> {
    (1..=n)
        .map(|i| event(stream, "conformance.ticked", i))
        .collect()
}

fn to(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream_id: stream,
        expected,
        events,
    }
}

async fn append(s: &Stores, streams: Vec<StreamAppend>) -> Result<Vec<EventId>> {
    bounded("append", s.events.append(streams))
        .await
        .map(|stored| stored.iter().map(|e| e.event_id).collect())
}

async fn version(s: &Stores, stream: StreamId) -> u64 {
    ok(
        "stream_version",
        bounded("stream_version", s.events.stream_version(stream)).await,
    )
}

async fn located(s: &Stores, ids: &[EventId]) -> usize {
    ok("locate", bounded("locate", s.events.locate(ids)).await).len()
}

async fn claim(s: &Stores, perspective: &'static str, key: StreamId) -> Box<dyn PerspectiveUnit> {
    ok(
        "claim",
        bounded("claim", s.perspectives.claim(perspective, key)).await,
    )
}

async fn checkpoint(s: &Stores, perspective: &'static str, key: StreamId) -> Checkpoint {
    ok(
        "checkpoint",
        bounded(
            "checkpoint (it must not wait for a claim)",
            s.perspectives.checkpoint(perspective, key),
        )
        .await,
    )
}

async fn load(s: &Stores, perspective: &'static str, key: StreamId) -> Option<(Tally, u64)> {
    ok(
        "load_model",
        bounded(
            "load_model (it must not wait for a claim)",
            s.perspectives.load_model(perspective, key),
        )
        .await,
    )
    .map(|row| {
        assert_eq!(row.id, key, "load_model returned the row of another key");
        (read_tally(&row.model), row.version)
    })
}

fn at(version: u64) -> Checkpoint {
    Checkpoint {
        version,
        ..Checkpoint::default()
    }
}

/// Commits `t` (or only the checkpoint) at `version` on (perspective, key).
async fn commit(
    s: &Stores,
    perspective: &'static str,
    key: StreamId,
    t: Option<&Tally>,
    cp: Checkpoint,
) {
    let unit = claim(s, perspective, key).await;
    let value = t.map(|t| model(&*s.perspectives, t));
    ok("commit", bounded("commit", unit.commit(value, cp)).await);
}

fn assert_concurrency(
    r: Result<Vec<EventId>>,
    stream: StreamId,
    expected: ExpectedVersion,
    actual: u64,
) {
    match r {
        Err(Error::Concurrency {
            stream: s,
            expected: e,
            actual: a,
        }) => assert_eq!(
            (s, e, a),
            (stream, expected, actual),
            "Error::Concurrency must name the conflicting stream, the expectation and the \
             stream's actual version"
        ),
        other => panic!(
            "appending to stream {stream} at version {actual} with {expected:?} must fail with \
             Error::Concurrency, got {other:?}"
        ),
    }
}

// ---- the event store --------------------------------------------------------------

/// An append whose second stream conflicts stores nothing of the first; an
/// append across streams that all match stores every event.
pub async fn append_is_all_or_nothing_across_streams(backend: &dyn BackendFactory) {
    let s = backend.stores().await;
    let (a, b) = (StreamId::new(), StreamId::new());
    ok(
        "seeding stream a",
        append(&s, vec![to(a, ExpectedVersion::NoStream, events(a, 1))]).await,
    );
    let refused_b = events(b, 2);
    let b_ids: Vec<EventId> = refused_b.iter().map(|e| e.event_id).collect();
    let r = append(
        &s,
        vec![
            to(b, ExpectedVersion::Any, refused_b),
            to(a, ExpectedVersion::Exact(0), events(a, 1)),
        ],
    )
    .await;
    assert_concurrency(r, a, ExpectedVersion::Exact(0), 1);
    assert_eq!(
        version(&s, b).await,
        0,
        "a failed append must not store the events of its other streams"
    );
    assert_eq!(
        located(&s, &b_ids).await,
        0,
        "a failed append stored events"
    );
    assert_eq!(version(&s, a).await, 1, "a failed append changed stream a");

    let ids = ok(
        "an append across two streams",
        append(
            &s,
            vec![
                to(a, ExpectedVersion::Exact(1), events(a, 1)),
                to(b, ExpectedVersion::NoStream, events(b, 2)),
            ],
        )
        .await,
    );
    assert_eq!(ids.len(), 3, "append returns every stored event");
    assert_eq!((version(&s, a).await, version(&s, b).await), (2, 2));
}

/// Stored events keep their id, stream, type, data and metadata, are numbered
/// from 1 in their stream, and come back in the order appended with rising
/// global positions.
pub async fn stored_events_keep_their_ids_types_data_and_metadata(backend: &dyn BackendFactory) {
    let s = backend.stores().await;
    let stream = StreamId::new();
    let new = vec![
        event(stream, "conformance.opened", 1),
        event(stream, "conformance.ticked", 2),
    ];
    let expected: Vec<(EventId, &'static str, serde_json::Value, EventMetadata)> = new
        .iter()
        .map(|e| {
            (
                e.event_id,
                e.event_type,
                serde_json::from_str(e.data.get()).expect("JSON"),
                e.metadata.clone(),
            )
        })
        .collect();
    let stored = ok(
        "append",
        bounded(
            "append",
            s.events
                .append(vec![to(stream, ExpectedVersion::NoStream, new)]),
        )
        .await,
    );
    let read = ok(
        "read_stream",
        bounded("read_stream", s.events.read_stream(stream, 0)).await,
    );
    for events in [&stored, &read] {
        assert_eq!(events.len(), 2);
        for (i, (e, (id, ty, data, meta))) in events.iter().zip(&expected).enumerate() {
            assert_eq!(e.event_id, *id, "events come back in the order appended");
            assert_eq!(e.stream_id, stream);
            assert_eq!(e.stream_version, i as u64 + 1, "stream versions start at 1");
            assert_eq!(&*e.event_type, *ty, "the event type is kept");
            let got: serde_json::Value = serde_json::from_str(e.data.get()).expect("JSON");
            assert_eq!(&got, data, "the payload is kept");
            assert_eq!(e.metadata.correlation_id, meta.correlation_id);
            assert_eq!(e.metadata.causation_id, meta.causation_id);
            assert_eq!(e.metadata.extra, meta.extra, "extra metadata is kept");
            let drift = e
                .metadata
                .timestamp
                .duration_since(meta.timestamp)
                .or_else(|e| Ok::<_, ()>(e.duration()))
                .unwrap_or_default();
            assert!(
                drift < Duration::from_millis(1),
                "the timestamp is kept (to the millisecond), drifted {drift:?}"
            );
        }
        assert!(
            events[0].position < events[1].position,
            "global positions rise in append order"
        );
    }
}

/// `ExpectedVersion::Any` appends to a new stream and to one with events.
pub async fn expected_version_any_admits_every_version(backend: &dyn BackendFactory) {
    let s = backend.stores().await;
    let stream = StreamId::new();
    for n in 1..=2 {
        ok(
            "an append with ExpectedVersion::Any",
            append(
                &s,
                vec![to(stream, ExpectedVersion::Any, events(stream, 1))],
            )
            .await,
        );
        assert_eq!(version(&s, stream).await, n);
    }
}

/// `ExpectedVersion::NoStream` appends to a new stream only.
pub async fn expected_version_no_stream_admits_only_a_new_stream(backend: &dyn BackendFactory) {
    let s = backend.stores().await;
    let stream = StreamId::new();
    ok(
        "an append with NoStream to a new stream",
        append(
            &s,
            vec![to(stream, ExpectedVersion::NoStream, events(stream, 2))],
        )
        .await,
    );
    let r = append(
        &s,
        vec![to(stream, ExpectedVersion::NoStream, events(stream, 1))],
    )
    .await;
    assert_concurrency(r, stream, ExpectedVersion::NoStream, 2);
    assert_eq!(version(&s, stream).await, 2);
}

/// `ExpectedVersion::Exact(n)` appends only when the stream is at `n`.
pub async fn expected_version_exact_admits_only_that_version(backend: &dyn BackendFactory) {
    let s = backend.stores().await;
    let stream = StreamId::new();
    ok(
        "an append with Exact(0) to a new stream",
        append(
            &s,
            vec![to(stream, ExpectedVersion::Exact(0), events(stream, 1))],
        )
        .await,
    );
    ok(
        "an append with Exact(1) at version 1",
        append(
            &s,
            vec![to(stream, ExpectedVersion::Exact(1), events(stream, 1))],
        )
        .await,
    );
    for stale in [1, 3] {
        let r = append(
            &s,
            vec![to(stream, ExpectedVersion::Exact(stale), events(stream, 1))],
        )
        .await;
        assert_concurrency(r, stream, ExpectedVersion::Exact(stale), 2);
    }
    assert_eq!(version(&s, stream).await, 2);
}

/// A conflict reports the stream, what the writer expected and the version
/// the stream is at.
pub async fn concurrency_error_names_the_stream_the_expectation_and_the_actual_version(
    backend: &dyn BackendFactory,
) {
    let s = backend.stores().await;
    let (a, b) = (StreamId::new(), StreamId::new());
    ok(
        "seeding",
        append(&s, vec![to(b, ExpectedVersion::Any, events(b, 3))]).await,
    );
    let r = append(
        &s,
        vec![
            to(a, ExpectedVersion::NoStream, events(a, 1)),
            to(b, ExpectedVersion::Exact(2), events(b, 1)),
        ],
    )
    .await;
    assert_concurrency(r, b, ExpectedVersion::Exact(2), 3);
}

fn assert_duplicate(r: Result<Vec<EventId>>, id: EventId) {
    match r {
        Err(Error::DuplicateEventId { event_id }) => {
            assert_eq!(event_id, id, "DuplicateEventId must name the repeated id");
        }
        other => panic!(
            "an append repeating event id {id} must fail with DuplicateEventId, got {other:?}"
        ),
    }
}

/// One id twice in one append (across streams) is refused; nothing is stored.
pub async fn duplicate_ids_in_one_append_are_refused_and_nothing_is_appended(
    backend: &dyn BackendFactory,
) {
    let s = backend.stores().await;
    let (a, b) = (StreamId::new(), StreamId::new());
    let first = event(a, "conformance.ticked", 1);
    let id = first.event_id;
    let mut twin = event(b, "conformance.ticked", 1);
    twin.event_id = id;
    let r = append(
        &s,
        vec![
            to(a, ExpectedVersion::Any, vec![first]),
            to(b, ExpectedVersion::Any, vec![twin]),
        ],
    )
    .await;
    assert_duplicate(r, id);
    assert_eq!((version(&s, a).await, version(&s, b).await), (0, 0));
    assert_eq!(
        located(&s, &[id]).await,
        0,
        "a refused append stored an event"
    );
}

/// An id already stored is refused; nothing of the append is stored.
pub async fn an_id_already_stored_is_refused_and_nothing_is_appended(backend: &dyn BackendFactory) {
    let s = backend.stores().await;
    let (a, b) = (StreamId::new(), StreamId::new());
    let stored = event(a, "conformance.ticked", 1);
    let id = stored.event_id;
    ok(
        "seeding",
        append(&s, vec![to(a, ExpectedVersion::Any, vec![stored])]).await,
    );
    let mut again = event(a, "conformance.ticked", 2);
    again.event_id = id;
    let r = append(
        &s,
        vec![
            to(b, ExpectedVersion::Any, events(b, 1)),
            to(a, ExpectedVersion::Any, vec![again]),
        ],
    )
    .await;
    assert_duplicate(r, id);
    assert_eq!((version(&s, a).await, version(&s, b).await), (1, 0));
}

/// `read_stream` returns only the stream's events after the version, in
/// version order; nothing for a version at or past the end or an unknown stream.
pub async fn read_stream_returns_the_events_after_a_version_in_order(backend: &dyn BackendFactory) {
    let s = backend.stores().await;
    let (stream, other) = (StreamId::new(), StreamId::new());
    let mut ids = ok(
        "append",
        append(
            &s,
            vec![to(stream, ExpectedVersion::Any, events(stream, 2))],
        )
        .await,
    );
    ok(
        "append",
        append(&s, vec![to(other, ExpectedVersion::Any, events(other, 2))]).await,
    );
    ids.extend(ok(
        "append",
        append(
            &s,
            vec![to(stream, ExpectedVersion::Any, events(stream, 2))],
        )
        .await,
    ));
    for after in 0..=5u64 {
        let read = ok(
            "read_stream",
            bounded("read_stream", s.events.read_stream(stream, after)).await,
        );
        let got: Vec<(EventId, u64)> = read
            .iter()
            .map(|e| (e.event_id, e.stream_version))
            .collect();
        let want: Vec<(EventId, u64)> = ids
            .iter()
            .zip(1u64..)
            .filter(|(_, v)| *v > after)
            .map(|(id, v)| (*id, v))
            .collect();
        assert_eq!(
            got, want,
            "read_stream(after {after}) must return the later events in order"
        );
    }
    let unknown = ok(
        "read_stream",
        bounded("read_stream", s.events.read_stream(StreamId::new(), 0)).await,
    );
    assert!(unknown.is_empty(), "an unknown stream has no events");
}

/// A stream with no events is at version 0; each event adds one.
pub async fn stream_version_is_zero_for_a_new_stream_and_counts_its_events(
    backend: &dyn BackendFactory,
) {
    let s = backend.stores().await;
    let stream = StreamId::new();
    assert_eq!(version(&s, stream).await, 0);
    ok(
        "append",
        append(
            &s,
            vec![to(stream, ExpectedVersion::Any, events(stream, 3))],
        )
        .await,
    );
    assert_eq!(version(&s, stream).await, 3);
}

/// `locate` gives each stored id's stream, version and type, and leaves ids it
/// does not hold out.
pub async fn locate_finds_stored_ids_and_leaves_unknown_ones_out(backend: &dyn BackendFactory) {
    let s = backend.stores().await;
    let stream = StreamId::new();
    let ids = ok(
        "append",
        append(
            &s,
            vec![to(
                stream,
                ExpectedVersion::Any,
                vec![
                    event(stream, "conformance.opened", 1),
                    event(stream, "conformance.ticked", 2),
                ],
            )],
        )
        .await,
    );
    let unknown = EventId::new();
    let found = ok(
        "locate",
        bounded("locate", s.events.locate(&[ids[1], unknown, ids[0]])).await,
    );
    assert_eq!(
        found.len(),
        2,
        "locate must leave unknown ids out: {found:?}"
    );
    for (id, v, ty) in [
        (ids[0], 1, "conformance.opened"),
        (ids[1], 2, "conformance.ticked"),
    ] {
        let loc = found
            .iter()
            .find(|l| l.event_id == id)
            .unwrap_or_else(|| panic!("locate did not find stored event {id}"));
        assert_eq!(
            (loc.stream_id, loc.stream_version, &*loc.event_type),
            (stream, v, ty)
        );
    }
    assert!(ok("locate", bounded("locate", s.events.locate(&[])).await).is_empty());
}

// ---- the perspective store --------------------------------------------------------

/// Spawns a second claim on (perspective, key) and checks that it keeps
/// waiting for [`GRACE`].
async fn waiting_claim(
    s: &Stores,
    perspective: &'static str,
    key: StreamId,
) -> tokio::task::JoinHandle<Result<Box<dyn PerspectiveUnit>>> {
    let store = Arc::clone(&s.perspectives);
    let mut second = tokio::spawn(async move { store.claim(perspective, key).await });
    assert!(
        tokio::time::timeout(GRACE, &mut second).await.is_err(),
        "a second claim on ({perspective}, {key}) must wait while the first unit is held"
    );
    second
}

async fn joined(
    second: tokio::task::JoinHandle<Result<Box<dyn PerspectiveUnit>>>,
) -> Box<dyn PerspectiveUnit> {
    ok(
        "the second claim",
        bounded("the second claim, once the first unit was released", second)
            .await
            .expect("the claiming task does not panic"),
    )
}

/// A second claim waits while the first unit is held and gets the unit once
/// it commits, seeing what it committed.
pub async fn a_second_claim_waits_until_the_first_unit_commits(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.claim_commit";
    let s = backend.stores().await;
    let key = StreamId::new();
    let first = claim(&s, P, key).await;
    let second = waiting_claim(&s, P, key).await;
    ok(
        "commit",
        bounded(
            "commit",
            first.commit(Some(model(&*s.perspectives, &tally(1))), at(1)),
        )
        .await,
    );
    let mut unit = joined(second).await;
    assert_eq!(
        unit.checkpoint().version,
        1,
        "the next claim sees the committed checkpoint"
    );
    let m = unit
        .take_model()
        .expect("the next claim sees the committed model");
    assert_eq!(read_tally(&m), tally(1));
}

/// A second claim waits while the first unit is held and gets the unit once
/// it is dropped, seeing nothing changed.
pub async fn a_second_claim_waits_until_the_first_unit_is_dropped(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.claim_drop";
    let s = backend.stores().await;
    let key = StreamId::new();
    commit(&s, P, key, Some(&tally(1)), at(1)).await;
    let first = claim(&s, P, key).await;
    let second = waiting_claim(&s, P, key).await;
    drop(first);
    let unit = joined(second).await;
    assert_eq!(
        unit.checkpoint(),
        &at(1),
        "a dropped unit changed the checkpoint"
    );
}

/// A held unit blocks only its own (perspective, key).
pub async fn claims_on_other_keys_and_perspectives_do_not_wait(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.claim_other_p";
    const Q: &str = "whizbang.conformance.claim_other_q";
    let s = backend.stores().await;
    let (a, b) = (StreamId::new(), StreamId::new());
    let _held = claim(&s, P, a).await;
    let other_key = claim(&s, P, b).await;
    let other_perspective = claim(&s, Q, a).await;
    drop((other_key, other_perspective));
}

/// After a commit the checkpoint and the model read back together: the
/// model's version is the checkpoint's.
pub async fn commit_stores_model_and_checkpoint_together(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.commit";
    let s = backend.stores().await;
    let key = StreamId::new();
    assert_eq!(checkpoint(&s, P, key).await, Checkpoint::default());
    assert!(load(&s, P, key).await.is_none());
    let mut unit = claim(&s, P, key).await;
    assert_eq!(unit.checkpoint(), &Checkpoint::default());
    assert!(unit.take_model().is_none(), "a new key has no model");
    ok(
        "commit",
        bounded(
            "commit",
            unit.commit(Some(model(&*s.perspectives, &tally(3))), at(3)),
        )
        .await,
    );
    assert_eq!(checkpoint(&s, P, key).await, at(3));
    assert_eq!(load(&s, P, key).await, Some((tally(3), 3)));
    commit(&s, P, key, Some(&tally(5)), at(5)).await;
    assert_eq!(checkpoint(&s, P, key).await, at(5));
    assert_eq!(load(&s, P, key).await, Some((tally(5), 5)));
}

/// A commit with no model moves the checkpoint and keeps the stored model.
pub async fn commit_without_a_model_keeps_the_stored_model(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.commit_none";
    let s = backend.stores().await;
    let key = StreamId::new();
    commit(&s, P, key, Some(&tally(1)), at(1)).await;
    commit(&s, P, key, None, at(2)).await;
    assert_eq!(checkpoint(&s, P, key).await, at(2));
    assert_eq!(load(&s, P, key).await, Some((tally(1), 2)));
}

/// A unit dropped without committing (also after `take_model`) leaves model
/// and checkpoint as they were.
pub async fn a_dropped_unit_changes_nothing_even_after_take_model(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.drop";
    let s = backend.stores().await;
    let key = StreamId::new();
    commit(&s, P, key, Some(&tally(2)), at(2)).await;
    drop(claim(&s, P, key).await);
    let mut unit = claim(&s, P, key).await;
    let taken = unit.take_model().expect("the stored model");
    assert_eq!(read_tally(&taken), tally(2));
    drop(unit);
    assert_eq!(checkpoint(&s, P, key).await, at(2));
    assert_eq!(load(&s, P, key).await, Some((tally(2), 2)));
    let mut again = claim(&s, P, key).await;
    assert_eq!(again.checkpoint(), &at(2));
    let m = again.take_model().expect("the model is still stored");
    assert_eq!(read_tally(&m), tally(2));
}

/// While a unit is held (and has taken the model), `checkpoint`, `load_model`
/// and `list_models` return the last commit without waiting.
pub async fn reads_never_wait_for_a_claim(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.reads";
    let s = backend.stores().await;
    let key = StreamId::new();
    commit(&s, P, key, Some(&tally(1)), at(1)).await;
    let mut held = claim(&s, P, key).await;
    let _ = held.take_model();
    assert_eq!(checkpoint(&s, P, key).await, at(1));
    assert_eq!(load(&s, P, key).await, Some((tally(1), 1)));
    let rows = ok(
        "list_models",
        bounded(
            "list_models (it must not wait for a claim)",
            s.perspectives.list_models(P),
        )
        .await,
    );
    assert!(
        rows.iter().any(|r| r.id == key),
        "list_models left out a held key"
    );
    drop(held);
}

/// A failure and skipped-event records commit and read back unchanged, from
/// the reads and from the next claim.
pub async fn failure_and_skipped_records_round_trip(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.failure";
    let s = backend.stores().await;
    let key = StreamId::new();
    let cp = Checkpoint {
        version: 4,
        failure: Some(CheckpointFailure {
            version: 5,
            message: "apply panicked: «bad» \"input\"\nline two".into(),
        }),
        skipped: vec![
            SkippedEvent {
                version: 2,
                event_id: EventId::new(),
                reason: "operator: corrupt payload".into(),
                failure: "does not decode".into(),
            },
            SkippedEvent {
                version: 3,
                event_id: EventId::new(),
                reason: String::new(),
                failure: "division by zero".into(),
            },
        ],
    };
    commit(&s, P, key, Some(&tally(1)), cp.clone()).await;
    assert_eq!(checkpoint(&s, P, key).await, cp);
    assert_eq!(claim(&s, P, key).await.checkpoint(), &cp);
    let cleared = Checkpoint {
        failure: None,
        ..cp.clone()
    };
    commit(&s, P, key, None, cleared.clone()).await;
    assert_eq!(
        checkpoint(&s, P, key).await,
        cleared,
        "a commit clears a failure"
    );
}

/// `list_models` returns the perspective's models ordered by key, each with
/// its version, and leaves out keys that only have a checkpoint.
pub async fn list_models_is_ordered_by_key_and_leaves_out_keys_without_a_model(
    backend: &dyn BackendFactory,
) {
    const P: &str = "whizbang.conformance.list";
    const OTHER: &str = "whizbang.conformance.list_other";
    let s = backend.stores().await;
    let keys: Vec<StreamId> = (0..5).map(|_| StreamId::new()).collect();
    // Committed out of key order.
    for (i, key) in keys.iter().enumerate().rev() {
        commit(&s, P, *key, Some(&tally(i as u64)), at(i as u64 + 1)).await;
    }
    let bare = StreamId::new();
    commit(&s, P, bare, None, at(1)).await;
    commit(&s, OTHER, StreamId::new(), Some(&tally(9)), at(1)).await;
    let rows = ok(
        "list_models",
        bounded("list_models", s.perspectives.list_models(P)).await,
    );
    let all: Vec<StreamId> = rows.iter().map(|r| r.id).collect();
    let mut sorted = all.clone();
    sorted.sort_unstable();
    assert_eq!(all, sorted, "list_models must order models by key");
    assert!(
        !all.contains(&bare),
        "a key with only a checkpoint has no model"
    );
    let ours: Vec<(StreamId, Tally, u64)> = rows
        .iter()
        .filter(|r| keys.contains(&r.id))
        .map(|r| (r.id, read_tally(&r.model), r.version))
        .collect();
    let mut want: Vec<(StreamId, Tally, u64)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, tally(i as u64), i as u64 + 1))
        .collect();
    want.sort_unstable_by_key(|(k, _, _)| *k);
    assert_eq!(
        ours, want,
        "list_models must return every model with its version"
    );
}

/// Every store accepts a model committed as JSON and reads it back (a typed
/// store may keep it as JSON).
pub async fn every_store_keeps_a_json_model(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.json";
    let s = backend.stores().await;
    let key = StreamId::new();
    let unit = claim(&s, P, key).await;
    let json = serde_json::value::to_raw_value(&tally(7)).expect("a Tally serialises");
    ok(
        "commit of a JSON model",
        bounded("commit", unit.commit(Some(ModelValue::Json(json)), at(1))).await,
    );
    assert_eq!(load(&s, P, key).await, Some((tally(7), 1)));
}

// ---- the sync backend -------------------------------------------------------------

/// A stream of events `opened, ticked, opened, ticked` (versions 1..=4) and
/// an inquiry for a perspective that handles `conformance.ticked` only.
async fn sync_setup(s: &Stores) -> (StreamId, Vec<EventId>) {
    let stream = StreamId::new();
    let evs = (1..=4)
        .map(|v| {
            let ty = if v % 2 == 1 {
                "conformance.opened"
            } else {
                "conformance.ticked"
            };
            event(stream, ty, v)
        })
        .collect();
    let ids = ok(
        "append",
        append(s, vec![to(stream, ExpectedVersion::NoStream, evs)]).await,
    );
    (stream, ids)
}

async fn statuses(
    s: &Stores,
    perspective: &'static str,
    ids: &[EventId],
) -> Vec<(EventId, EventSyncStatus)> {
    let inquiry = [SyncInquiry {
        perspective,
        handled: &["conformance.ticked"],
        event_ids: ids.to_vec(),
    }];
    let mut answers = ok(
        "inquire",
        bounded("inquire", s.sync.inquire(&inquiry)).await,
    );
    assert_eq!(answers.len(), 1, "one result per inquiry");
    let answer = answers.remove(0);
    assert_eq!(answer.perspective, perspective);
    assert_eq!(
        answer.expected_ids, ids,
        "the result names the ids asked about"
    );
    answer.statuses
}

/// An event of a handled type is applied once the cursor on its stream
/// reached its version (skipped events count: the cursor moved past them).
pub async fn sync_backend_answers_applied_once_the_cursor_reached_the_event(
    backend: &dyn BackendFactory,
) {
    const P: &str = "whizbang.conformance.sync_applied";
    let s = backend.stores().await;
    let (stream, ids) = sync_setup(&s).await;
    commit(&s, P, stream, Some(&tally(1)), at(2)).await;
    assert_eq!(
        statuses(&s, P, &[ids[1]]).await,
        vec![(ids[1], EventSyncStatus::Applied)]
    );
    commit(&s, P, stream, None, at(4)).await;
    assert_eq!(
        statuses(&s, P, &[ids[3], ids[1]]).await,
        vec![
            (ids[3], EventSyncStatus::Applied),
            (ids[1], EventSyncStatus::Applied)
        ],
        "statuses come in the order asked"
    );
}

/// A stored event of a handled type past the cursor is pending, with its
/// stream and version.
pub async fn sync_backend_answers_pending_for_stored_events_not_yet_applied(
    backend: &dyn BackendFactory,
) {
    const P: &str = "whizbang.conformance.sync_pending";
    let s = backend.stores().await;
    let (stream, ids) = sync_setup(&s).await;
    let pending = |version| EventSyncStatus::Pending { stream, version };
    assert_eq!(
        statuses(&s, P, &[ids[1]]).await,
        vec![(ids[1], pending(2))],
        "no cursor yet: pending"
    );
    commit(&s, P, stream, Some(&tally(1)), at(2)).await;
    assert_eq!(statuses(&s, P, &[ids[3]]).await, vec![(ids[3], pending(4))]);
}

/// An id the event store does not hold is not arrived, never applied.
pub async fn sync_backend_answers_not_arrived_for_unknown_ids(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.sync_unknown";
    let s = backend.stores().await;
    let (stream, _) = sync_setup(&s).await;
    commit(&s, P, stream, Some(&tally(1)), at(4)).await;
    let unknown = EventId::new();
    assert_eq!(
        statuses(&s, P, &[unknown]).await,
        vec![(unknown, EventSyncStatus::NotArrived)]
    );
}

/// A stored event whose type the perspective does not handle is not
/// applicable, whatever the cursor.
pub async fn sync_backend_answers_not_applicable_for_types_the_perspective_does_not_handle(
    backend: &dyn BackendFactory,
) {
    const P: &str = "whizbang.conformance.sync_not_applicable";
    let s = backend.stores().await;
    let (stream, ids) = sync_setup(&s).await;
    assert_eq!(
        statuses(&s, P, &[ids[0], ids[2]]).await,
        vec![
            (ids[0], EventSyncStatus::NotApplicable),
            (ids[2], EventSyncStatus::NotApplicable)
        ]
    );
    commit(&s, P, stream, Some(&tally(1)), at(4)).await;
    assert_eq!(
        statuses(&s, P, &[ids[2]]).await,
        vec![(ids[2], EventSyncStatus::NotApplicable)]
    );
}

/// When the cursor failed at version `v`, handled events at or after `v` are
/// failed with the cursor's message; events before it are applied.
pub async fn sync_backend_answers_failed_at_and_after_the_failed_version(
    backend: &dyn BackendFactory,
) {
    const P: &str = "whizbang.conformance.sync_failed";
    let s = backend.stores().await;
    let (stream, ids) = sync_setup(&s).await;
    let failed = Checkpoint {
        version: 2,
        failure: Some(CheckpointFailure {
            version: 4,
            message: "apply failed".into(),
        }),
        skipped: Vec::new(),
    };
    commit(&s, P, stream, Some(&tally(1)), failed).await;
    assert_eq!(
        statuses(&s, P, &[ids[1], ids[3]]).await,
        vec![
            (ids[1], EventSyncStatus::Applied),
            (
                ids[3],
                EventSyncStatus::Failed {
                    stream,
                    version: 4,
                    message: "apply failed".into()
                }
            )
        ]
    );
}

/// A batch of inquiries gets one result per inquiry, in the order asked,
/// each for its own perspective.
pub async fn sync_backend_answers_each_inquiry_in_order(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.sync_batch_p";
    const Q: &str = "whizbang.conformance.sync_batch_q";
    let s = backend.stores().await;
    let (stream, ids) = sync_setup(&s).await;
    commit(&s, Q, stream, Some(&tally(1)), at(4)).await;
    let inquiries = [
        SyncInquiry {
            perspective: P,
            handled: &["conformance.ticked"],
            event_ids: vec![ids[1]],
        },
        SyncInquiry {
            perspective: Q,
            handled: &["conformance.ticked"],
            event_ids: vec![ids[1]],
        },
    ];
    let answers = ok(
        "inquire",
        bounded("inquire", s.sync.inquire(&inquiries)).await,
    );
    let got: Vec<(&str, Vec<(EventId, EventSyncStatus)>)> = answers
        .into_iter()
        .map(|a| (a.perspective, a.statuses))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                P,
                vec![(ids[1], EventSyncStatus::Pending { stream, version: 2 })]
            ),
            (Q, vec![(ids[1], EventSyncStatus::Applied)]),
        ]
    );
}

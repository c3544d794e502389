//! The in-memory stores as the reference behaviour: duplicate event ids are
//! refused, a dropped unit releases its (perspective, stream) unchanged, and
//! readers never wait for a claim.

mod common;

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};
use uuid::Uuid;
use whizbang_core::store::memory::{MemoryEventStore, MemoryPerspectiveStore};
use whizbang_core::store::{
    Checkpoint, EventMetadata, ModelValue, NewEvent, PerspectiveStore, StreamAppend,
};
use whizbang_core::{Error, EventId, ExpectedVersion, MessageId, Metadata, StreamId};

const P: &str = "memory_store.counts";

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Count(u64);

fn event(id: EventId, stream: StreamId) -> NewEvent {
    NewEvent {
        event_id: id,
        stream_id: stream,
        event_type: "memory_store.ticked",
        data: serde_json::value::to_raw_value(&serde_json::json!({})).unwrap(),
        metadata: EventMetadata {
            correlation_id: MessageId::new(),
            causation_id: None,
            timestamp: SystemTime::now(),
            extra: Metadata::default(),
        },
        typed: None,
        outbound: false,
    }
}

fn append(stream: StreamId, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream_id: stream,
        expected: ExpectedVersion::Any,
        events,
    }
}

fn stream() -> StreamId {
    Uuid::now_v7().into()
}

/// Bounds a wait: with paused time, a future that blocks fails the test at once.
async fn at_once<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_millis(100), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} waited (for the claim?) instead of returning at once"),
    }
}

fn count_of(model: &ModelValue) -> u64 {
    match model {
        ModelValue::Typed(m) => m.as_any().downcast_ref::<Count>().unwrap().0,
        ModelValue::Json(_) => panic!("the memory store keeps typed models"),
    }
}

/// Commits `Count(n)` at `version` on (P, `s`).
async fn commit(store: &MemoryPerspectiveStore, s: StreamId, n: u64, version: u64) {
    let unit = store.claim(P, s).await.unwrap();
    unit.commit(
        Some(ModelValue::Typed(Box::new(Count(n)))),
        Checkpoint {
            version,
            ..Checkpoint::default()
        },
    )
    .await
    .unwrap();
}

#[test]
fn two_events_with_one_id_in_one_append_are_refused_and_nothing_is_appended() {
    let store = MemoryEventStore::new();
    let (a, b) = (stream(), stream());
    let id = EventId::new();
    let err = store
        .append_now(vec![append(a, vec![event(id, a), event(id, a)])])
        .unwrap_err();
    assert_matches!(err, Error::DuplicateEventId { event_id } if *event_id == id);
    // The same id on two streams of one append.
    let err = store
        .append_now(vec![
            append(a, vec![event(EventId::new(), a), event(id, a)]),
            append(b, vec![event(id, b)]),
        ])
        .unwrap_err();
    assert_matches!(err, Error::DuplicateEventId { .. });
    assert!(store.all_events().is_empty(), "nothing was appended");
}

#[test]
fn an_id_already_stored_is_refused_with_the_same_error() {
    let store = MemoryEventStore::new();
    let a = stream();
    let id = EventId::new();
    store
        .append_now(vec![append(a, vec![event(id, a)])])
        .unwrap();
    let err = store
        .append_now(vec![append(
            a,
            vec![event(EventId::new(), a), event(id, a)],
        )])
        .unwrap_err();
    assert_matches!(err, Error::DuplicateEventId { event_id } if *event_id == id);
    assert!(err.to_string().contains("nothing was appended"), "{err}");
    assert_eq!(store.all_events().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_unit_after_take_model_leaves_the_model_and_checkpoint_unchanged() {
    let store = MemoryPerspectiveStore::new();
    let s = stream();
    commit(&store, s, 7, 3).await;

    let mut unit = at_once("claim", store.claim(P, s)).await.unwrap();
    let taken = unit.take_model().expect("the committed model");
    assert_eq!(count_of(&taken), 7);
    drop(unit);

    let row = store.load_model(P, s).await.unwrap().expect("model kept");
    assert_eq!((count_of(&row.model), row.version), (7, 3));
    assert_eq!(store.checkpoint(P, s).await.unwrap().version, 3);
    // The next unit sees it too, and the claim was released.
    let mut again = at_once("claim after drop", store.claim(P, s))
        .await
        .unwrap();
    assert_eq!(again.checkpoint().version, 3);
    assert_eq!(count_of(&again.take_model().expect("model kept")), 7);
}

#[tokio::test(start_paused = true)]
async fn reading_checkpoints_and_models_never_waits_for_a_claim() {
    let store = MemoryPerspectiveStore::new();
    let s = stream();
    commit(&store, s, 1, 1).await;

    let mut held = store.claim(P, s).await.unwrap();
    let _ = held.take_model();
    let cp = at_once("checkpoint()", store.checkpoint(P, s))
        .await
        .unwrap();
    assert_eq!(cp.version, 1);
    let row = at_once("load_model()", store.load_model(P, s))
        .await
        .unwrap()
        .expect("the committed model");
    assert_eq!((count_of(&row.model), row.version), (1, 1));
    let rows = at_once("list_models()", store.list_models(P))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);

    // Readers see the commit, and only once it is made.
    held.commit(
        Some(ModelValue::Typed(Box::new(Count(2)))),
        Checkpoint {
            version: 2,
            ..Checkpoint::default()
        },
    )
    .await
    .unwrap();
    let row = store.load_model(P, s).await.unwrap().unwrap();
    assert_eq!((count_of(&row.model), row.version), (2, 2));
    assert_eq!(store.checkpoint(P, s).await.unwrap().version, 2);
}

#[tokio::test(start_paused = true)]
async fn a_commit_without_a_model_changes_only_the_checkpoint() {
    let store = MemoryPerspectiveStore::new();
    let s = stream();
    commit(&store, s, 5, 2).await;
    let unit = store.claim(P, s).await.unwrap();
    unit.commit(
        None,
        Checkpoint {
            version: 3,
            ..Checkpoint::default()
        },
    )
    .await
    .unwrap();
    let row = store.load_model(P, s).await.unwrap().expect("model kept");
    assert_eq!((count_of(&row.model), row.version), (5, 3));
}

//! The in-memory stores as the reference behaviour: duplicate event ids are
//! refused.

use std::time::SystemTime;
use uuid::Uuid;
use whizbang_core::store::memory::MemoryEventStore;
use whizbang_core::store::{EventMetadata, NewEvent, StreamAppend};
use whizbang_core::{Error, EventId, ExpectedVersion, MessageId, Metadata, StreamId};

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

#[test]
fn two_events_with_one_id_in_one_append_are_refused_and_nothing_is_appended() {
    let store = MemoryEventStore::new();
    let (a, b) = (stream(), stream());
    let id = EventId::new();
    let err = store
        .append_now(vec![append(a, vec![event(id, a), event(id, a)])])
        .unwrap_err();
    assert!(
        matches!(err, Error::DuplicateEventId { event_id } if event_id == id),
        "{err:?}"
    );
    // The same id on two streams of one append.
    let err = store
        .append_now(vec![
            append(a, vec![event(EventId::new(), a), event(id, a)]),
            append(b, vec![event(id, b)]),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");
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
    assert!(
        matches!(err, Error::DuplicateEventId { event_id } if event_id == id),
        "{err:?}"
    );
    assert!(err.to_string().contains("nothing was appended"), "{err}");
    assert_eq!(store.all_events().len(), 1);
}

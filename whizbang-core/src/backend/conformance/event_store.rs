//! The event store's contracts.

use super::helpers::*;
use super::BackendFactory;
use crate::backend::EventMetadata;
use crate::error::{Error, Result};
use crate::message::{EventId, ExpectedVersion, StreamId};
use std::time::Duration;

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

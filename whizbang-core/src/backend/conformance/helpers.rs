//! What the contracts share: a model, events, bounded calls.

use super::Stores;
use crate::backend::{
    Checkpoint, EventMetadata, ModelFormat, ModelValue, NewEvent, PerspectiveStore,
    PerspectiveUnit, StreamAppend,
};
use crate::error::{Error, Result};
use crate::message::{EventId, ExpectedVersion, MessageId, Metadata, StreamId};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::SystemTime;

pub(super) use super::{BOUND, GRACE};

/// The model the perspective-store contracts commit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Tally {
    pub(super) count: u64,
    pub(super) note: String,
}

pub(super) fn tally(count: u64) -> Tally {
    Tally {
        count,
        note: format!("tally «{count}» \"quoted\""),
    }
}

/// `t` in the form `store` keeps.
pub(super) fn model(store: &dyn PerspectiveStore, t: &Tally) -> ModelValue {
    match store.model_format() {
        ModelFormat::Typed => ModelValue::Typed(Box::new(t.clone())),
        ModelFormat::Json => {
            ModelValue::Json(serde_json::value::to_raw_value(t).expect("a Tally serialises"))
        }
    }
}

/// The tally in `value`, in either form.
pub(super) fn read_tally(value: &ModelValue) -> Tally {
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

pub(super) async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {BOUND:?}"),
    }
}

pub(super) fn ok<T>(what: &str, r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

pub(super) fn event(stream: StreamId, event_type: &'static str, n: u64) -> NewEvent {
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
        outbound: false,
    }
}

pub(super) fn events(stream: StreamId, n: u64) -> Vec<NewEvent> {
    (1..=n)
        .map(|i| event(stream, "conformance.ticked", i))
        .collect()
}

pub(super) fn to(
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> StreamAppend {
    StreamAppend {
        stream_id: stream,
        expected,
        events,
    }
}

pub(super) async fn append(s: &Stores, streams: Vec<StreamAppend>) -> Result<Vec<EventId>> {
    bounded("append", s.events.append(streams))
        .await
        .map(|stored| stored.iter().map(|e| e.event_id).collect())
}

pub(super) async fn version(s: &Stores, stream: StreamId) -> u64 {
    ok(
        "stream_version",
        bounded("stream_version", s.events.stream_version(stream)).await,
    )
}

pub(super) async fn located(s: &Stores, ids: &[EventId]) -> usize {
    ok("locate", bounded("locate", s.events.locate(ids)).await).len()
}

pub(super) async fn claim(
    s: &Stores,
    perspective: &'static str,
    key: StreamId,
) -> Box<dyn PerspectiveUnit> {
    ok(
        "claim",
        bounded("claim", s.perspectives.claim(perspective, key)).await,
    )
}

pub(super) async fn checkpoint(s: &Stores, perspective: &'static str, key: StreamId) -> Checkpoint {
    ok(
        "checkpoint",
        bounded(
            "checkpoint (it must not wait for a claim)",
            s.perspectives.checkpoint(perspective, key),
        )
        .await,
    )
}

pub(super) async fn load(
    s: &Stores,
    perspective: &'static str,
    key: StreamId,
) -> Option<(Tally, u64)> {
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

pub(super) fn at(version: u64) -> Checkpoint {
    Checkpoint {
        version,
        ..Checkpoint::default()
    }
}

/// Commits `t` (or only the checkpoint) at `version` on (perspective, key).
pub(super) async fn commit(
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

pub(super) fn assert_concurrency(
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

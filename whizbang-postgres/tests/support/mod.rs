//! What the store tests share: a bound on every wait, and events to append.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};
use whizbang_core::backend::{EventMetadata, NewEvent};
use whizbang_core::{EventId, MessageId, Metadata, StreamId};

/// How long any store call in these tests may take.
const BOUND: Duration = Duration::from_secs(10);

/// `f`, which must finish within [`BOUND`].
pub(crate) async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

/// A new event of `event_type` on `stream` carrying `data`.
pub(crate) fn event(
    stream: StreamId,
    event_type: &'static str,
    data: serde_json::Value,
) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        stream_id: stream,
        event_type,
        data: serde_json::value::to_raw_value(&data).expect("JSON serialises"),
        metadata: EventMetadata {
            correlation_id: MessageId::new(),
            causation_id: None,
            timestamp: SystemTime::now(),
            extra: Metadata::default(),
        },
        typed: None,
    }
}

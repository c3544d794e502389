//! The sync backend's contracts.

use super::helpers::*;
use super::{BackendFactory, Stores};
use crate::backend::{Checkpoint, CheckpointFailure, EventSyncStatus, SyncInquiry};
use crate::message::{EventId, ExpectedVersion, StreamId};

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
        keyed: false,
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
            keyed: false,
        },
        SyncInquiry {
            perspective: Q,
            handled: &["conformance.ticked"],
            event_ids: vec![ids[1]],
            keyed: false,
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

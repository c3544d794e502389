//! The contracts a backend honours to run keyed (multi-stream) perspectives
//! ([`IntoModelKey`](crate::IntoModelKey)): a global order to read events in
//! ([`EventStore::read_global`](crate::backend::EventStore::read_global),
//! [`global_positions`](crate::backend::EventStore::global_positions)),
//! several models committed in one transaction
//! ([`PerspectiveStore::claim_many`](crate::backend::PerspectiveStore::claim_many)),
//! and sync answers from the perspective's one cursor
//! ([`SyncInquiry::keyed`](crate::backend::SyncInquiry::keyed)).
//!
//! A backend that does not offer keyed perspectives (the defaults answer
//! `None`) leaves these out; one that does runs them with [`run_all`] or
//! [`keyed_conformance_tests!`](crate::keyed_conformance_tests).

use super::helpers::*;
use super::{BackendFactory, Stores};
use crate::backend::{
    CheckpointFailure, EventSyncStatus, ModelWrite, PerspectiveBatch, StoredEvent, SyncInquiry,
};
use crate::message::{EventId, ExpectedVersion, StreamId};
use crate::perspective::KEYED_CURSOR;
use std::sync::Arc;

/// Generates one `#[test]` per keyed contract (see
/// [`conformance_tests!`](crate::conformance_tests), the same shape).
///
/// ```
/// mod memory_keyed_conformance {
///     use whizbang_core::backend::conformance::Stores;
///     use whizbang_core::backend::{MemoryEventStore, MemoryPerspectiveStore};
///
///     whizbang_core::keyed_conformance_tests!(|| async {
///         Stores::new(MemoryEventStore::new(), MemoryPerspectiveStore::new())
///     });
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! keyed_conformance_tests {
    ($factory:expr $(,)?) => {
        $crate::__keyed_conformance_tests! { $factory;
            read_global_returns_the_events_after_a_position_in_global_order,
            global_positions_name_stored_ids_and_leave_unknown_ones_out,
            claim_many_commits_every_model_at_once_and_a_dropped_batch_changes_nothing,
            claim_many_waits_for_a_batch_holding_one_of_its_keys,
            sync_backend_answers_keyed_inquiries_from_the_cursor_and_the_global_position,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __keyed_conformance_tests {
    ($factory:expr; $($contract:ident),* $(,)?) => {
        $(
            #[test]
            fn $contract() {
                let factory = $factory;
                $crate::backend::conformance::block_on(
                    $crate::backend::conformance::keyed::$contract(&factory),
                );
            }
        )*
    };
}

#[doc(inline)]
pub use crate::keyed_conformance_tests;

/// Runs every keyed contract, in order, each with stores from `backend`.
///
/// # Panics
/// At the first broken contract, naming the rule.
pub async fn run_all(backend: &dyn BackendFactory) {
    read_global_returns_the_events_after_a_position_in_global_order(backend).await;
    global_positions_name_stored_ids_and_leave_unknown_ones_out(backend).await;
    claim_many_commits_every_model_at_once_and_a_dropped_batch_changes_nothing(backend).await;
    claim_many_waits_for_a_batch_holding_one_of_its_keys(backend).await;
    sync_backend_answers_keyed_inquiries_from_the_cursor_and_the_global_position(backend).await;
}

/// Appends one event to each of three streams, three times round, one
/// append per event: the global order interleaves the streams.
async fn interleaved(s: &Stores) -> Vec<EventId> {
    let streams = [StreamId::new(), StreamId::new(), StreamId::new()];
    let mut ids = Vec::new();
    for round in 1..=3 {
        for stream in streams {
            let appended = ok(
                "append",
                append(
                    s,
                    vec![to(
                        stream,
                        ExpectedVersion::Exact(round - 1),
                        vec![event(stream, "conformance.ticked", round)],
                    )],
                )
                .await,
            );
            ids.extend(appended);
        }
    }
    ids
}

async fn positions(s: &Stores, ids: &[EventId]) -> Vec<(EventId, u64)> {
    ok(
        "global_positions",
        bounded("global_positions", s.events.global_positions(ids)).await,
    )
    .expect("a backend running keyed perspectives answers global_positions (not None)")
}

async fn read_global(s: &Stores, after: u64, limit: usize) -> Vec<Arc<StoredEvent>> {
    ok(
        "read_global",
        bounded("read_global", s.events.read_global(after, limit)).await,
    )
    .expect("a backend running keyed perspectives answers read_global (not None)")
}

/// Reads the global order to its end until every id of `ids` has a
/// position: a store may place events in the order only once they are safe
/// to consume (a database: once older transactions ended).
async fn settle(s: &Stores, ids: &[EventId]) {
    // A database's horizon is its whole server's: a transaction open
    // anywhere on it holds events back, so this gets a bound of its own.
    let placed = tokio::time::timeout(SETTLE, async {
        loop {
            let mut after = 0;
            loop {
                let page = read_global(s, after, 1000).await;
                let Some(last) = page.last() else { break };
                after = last.position;
            }
            if positions(s, ids).await.len() == ids.len() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        placed.is_ok(),
        "every appended event must take its place in the global order (read_global, \
         global_positions) within {SETTLE:?}"
    );
}

/// How long appended events may take to be placed in the global order.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The position of each id, in the order of `ids` (once all have one).
async fn positions_of(s: &Stores, ids: &[EventId]) -> Vec<u64> {
    settle(s, ids).await;
    let found = positions(s, ids).await;
    ids.iter()
        .map(|id| {
            found
                .iter()
                .find(|(f, _)| f == id)
                .map(|(_, p)| *p)
                .unwrap_or_else(|| panic!("global_positions left out the stored event {id}"))
        })
        .collect()
}

/// `read_global(after, limit)` returns at most `limit` events, every one
/// after `after`, in increasing position; events appended one after the
/// other come in that order, whatever their streams.
pub async fn read_global_returns_the_events_after_a_position_in_global_order(
    backend: &dyn BackendFactory,
) {
    let s = backend.stores().await;
    let ids = interleaved(&s).await;
    let at = positions_of(&s, &ids).await;
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "events appended one after the other must have increasing global positions: {at:?}"
    );
    // Everything after the first one's position, until all of ours were read.
    let mut read = Vec::new();
    let mut after = at[0] - 1;
    while read.len() < 10_000 {
        let page = read_global(&s, after, 4).await;
        assert!(page.len() <= 4, "read_global returned more than its limit");
        assert!(
            page.iter().all(|e| e.position > after),
            "read_global returned an event at or before the position it was asked to read after"
        );
        assert!(
            page.windows(2).all(|w| w[0].position < w[1].position),
            "read_global must return events in increasing global position"
        );
        let Some(last) = page.last() else { break };
        after = last.position;
        read.extend(page.iter().map(|e| e.event_id));
        if ids.iter().all(|id| read.contains(id)) {
            break;
        }
    }
    let ours: Vec<EventId> = read.into_iter().filter(|id| ids.contains(id)).collect();
    assert_eq!(
        ours, ids,
        "read_global must return every event after the position, in the order they were appended"
    );
}

/// `global_positions` names each id placed in the order with the position
/// `read_global` carries, and leaves unknown ids out.
pub async fn global_positions_name_stored_ids_and_leave_unknown_ones_out(
    backend: &dyn BackendFactory,
) {
    let s = backend.stores().await;
    let ids = interleaved(&s).await;
    let unknown = EventId::new();
    let mut asked = ids.clone();
    asked.push(unknown);
    settle(&s, &ids).await;
    let found = positions(&s, &asked).await;
    assert_eq!(
        found.len(),
        ids.len(),
        "one position per stored id, none for unknown ids"
    );
    assert!(found.iter().all(|(id, _)| *id != unknown));
    let at = positions_of(&s, &ids).await;
    let read = read_global(&s, at[0] - 1, 1).await;
    assert_eq!(
        read.first().map(|e| (e.event_id, e.position)),
        Some((ids[0], at[0])),
        "the event read after position p-1 is the one global_positions puts at p"
    );
}

/// A batch claims several keys; its commit writes every model and
/// checkpoint; a batch dropped without committing changes nothing.
pub async fn claim_many_commits_every_model_at_once_and_a_dropped_batch_changes_nothing(
    backend: &dyn BackendFactory,
) {
    const P: &str = "whizbang.conformance.keyed_claim_many";
    let s = backend.stores().await;
    let (a, b) = (StreamId::new(), StreamId::new());
    let mut batch = claim_many(&s, P, &[KEYED_CURSOR, a, b]).await;
    let claimed = batch.take_claimed();
    assert_eq!(
        claimed.iter().map(|c| c.key).collect::<Vec<_>>(),
        vec![KEYED_CURSOR, a, b],
        "a batch hands out its models in the order of the keys claimed"
    );
    assert!(claimed.iter().all(|c| c.model.is_none()));
    let writes = vec![
        ModelWrite::new(a, Some(model(&*s.perspectives, &tally(1))), at(3)),
        ModelWrite::new(b, Some(model(&*s.perspectives, &tally(2))), at(5)),
        ModelWrite::new(KEYED_CURSOR, None, at(5)),
    ];
    ok("commit", bounded("commit", batch.commit(writes)).await);
    assert_eq!(load(&s, P, a).await, Some((tally(1), 3)));
    assert_eq!(load(&s, P, b).await, Some((tally(2), 5)));
    assert_eq!(checkpoint(&s, P, KEYED_CURSOR).await.version, 5);
    assert_eq!(
        load(&s, P, KEYED_CURSOR).await,
        None,
        "a write without a model stores none"
    );

    let mut dropped = claim_many(&s, P, &[KEYED_CURSOR, a]).await;
    let claimed = dropped.take_claimed();
    assert_eq!(claimed[0].checkpoint.version, 5);
    assert_eq!(claimed[1].model.as_ref().map(read_tally), Some(tally(1)));
    drop(dropped);
    assert_eq!(load(&s, P, a).await, Some((tally(1), 3)));
    assert_eq!(checkpoint(&s, P, KEYED_CURSOR).await.version, 5);
    // The dropped batch released its claims.
    let again = claim_many(&s, P, &[a, KEYED_CURSOR]).await;
    drop(again);
}

/// A batch waits while another batch holds one of its keys, and gets it
/// once that batch commits (what makes a keyed perspective's catch-ups
/// exclusive: every one claims the cursor).
pub async fn claim_many_waits_for_a_batch_holding_one_of_its_keys(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.keyed_claim_wait";
    let s = backend.stores().await;
    let a = StreamId::new();
    let first = claim_many(&s, P, &[KEYED_CURSOR]).await;
    let keys = [KEYED_CURSOR, a];
    let second = s.perspectives.claim_many(P, &keys);
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(GRACE, &mut second).await.is_err(),
        "a batch claiming a key another batch holds must wait"
    );
    ok(
        "commit",
        bounded(
            "commit",
            first.commit(vec![ModelWrite::new(KEYED_CURSOR, None, at(7))]),
        )
        .await,
    );
    let mut second = ok("claim_many", bounded("claim_many", second).await)
        .expect("claim_many answered once, answers again");
    let claimed = second.take_claimed();
    assert_eq!(
        claimed[0].checkpoint.version, 7,
        "the waiting batch reads what the first committed"
    );
}

/// A keyed inquiry: an event is applied when the perspective's cursor has
/// reached its global position, pending before, failed at and after the
/// cursor's failure; unknown ids are not arrived, unhandled types not
/// applicable.
pub async fn sync_backend_answers_keyed_inquiries_from_the_cursor_and_the_global_position(
    backend: &dyn BackendFactory,
) {
    const P: &str = "whizbang.conformance.keyed_sync";
    let s = backend.stores().await;
    let mut ids = interleaved(&s).await;
    let stream = StreamId::new();
    let other = ok(
        "append",
        append(
            &s,
            vec![to(
                stream,
                ExpectedVersion::NoStream,
                vec![event(stream, "conformance.opened", 1)],
            )],
        )
        .await,
    );
    let at_ = positions_of(&s, &ids).await;
    ids.push(other[0]);
    ids.push(EventId::new());
    let ask = |s: &Stores, ids: Vec<EventId>| {
        let sync = Arc::clone(&s.sync);
        async move {
            let inquiry = [SyncInquiry {
                perspective: P,
                handled: &["conformance.ticked"],
                event_ids: ids,
                keyed: true,
            }];
            let mut answers = ok("inquire", bounded("inquire", sync.inquire(&inquiry)).await);
            answers.remove(0).statuses
        }
    };
    // The cursor at the fourth event's position.
    let batch = claim_many(&s, P, &[KEYED_CURSOR]).await;
    ok(
        "commit",
        bounded(
            "commit",
            batch.commit(vec![ModelWrite::new(KEYED_CURSOR, None, at(at_[3]))]),
        )
        .await,
    );
    let statuses = ask(&s, ids.clone()).await;
    for (i, (_, status)) in statuses.iter().enumerate().take(9) {
        if i <= 3 {
            assert_eq!(
                *status,
                EventSyncStatus::Applied,
                "an event at or before the keyed cursor's position is applied"
            );
        } else {
            assert!(
                matches!(status, EventSyncStatus::Pending { .. }),
                "an event after the keyed cursor's position is pending, got {status:?}"
            );
        }
    }
    assert_eq!(statuses[9].1, EventSyncStatus::NotApplicable);
    assert_eq!(statuses[10].1, EventSyncStatus::NotArrived);

    // Failed at the sixth event (a unit records the failure: a batch never
    // does): it and the ones after it are failed.
    let mut failed = at(at_[4]);
    failed.failure = Some(CheckpointFailure {
        version: at_[5],
        message: "apply failed".into(),
    });
    commit(&s, P, KEYED_CURSOR, None, failed).await;
    let statuses = ask(&s, ids[..9].to_vec()).await;
    for (i, (_, status)) in statuses.iter().enumerate() {
        match i {
            0..=4 => assert_eq!(*status, EventSyncStatus::Applied),
            _ => assert!(
                matches!(status, EventSyncStatus::Failed { version, .. } if *version == at_[5]),
                "an event at or after the keyed cursor's failure is failed, got {status:?}"
            ),
        }
    }
}

async fn claim_many(
    s: &Stores,
    perspective: &'static str,
    keys: &[StreamId],
) -> Box<dyn PerspectiveBatch> {
    ok(
        "claim_many",
        bounded("claim_many", s.perspectives.claim_many(perspective, keys)).await,
    )
    .expect("a backend running keyed perspectives claims many models at once (not None)")
}

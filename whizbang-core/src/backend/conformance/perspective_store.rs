//! The perspective store's contracts.

use super::helpers::*;
use super::{BackendFactory, Stores};
use crate::backend::{Checkpoint, CheckpointFailure, ModelValue, PerspectiveUnit, SkippedEvent};
use crate::error::Result;
use crate::message::{EventId, StreamId};
use std::sync::Arc;

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

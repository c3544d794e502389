//! The tombstone contracts: a deleted model is gone for readers while its
//! cursor stays, on a unit and in a batch.

use super::helpers::*;
use super::BackendFactory;
use crate::backend::ModelWrite;
use crate::message::StreamId;

/// [`PerspectiveUnit::commit_delete`](crate::backend::PerspectiveUnit::commit_delete)
/// removes the model (load returns `None`, lists leave it out) and commits
/// the cursor; a later commit with a model creates it afresh.
pub async fn commit_delete_removes_the_model_and_keeps_the_cursor(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.tombstone";
    let s = backend.stores().await;
    let (gone, kept) = (StreamId::new(), StreamId::new());
    commit(&s, P, gone, Some(&tally(1)), at(1)).await;
    commit(&s, P, kept, Some(&tally(7)), at(1)).await;
    let unit = claim(&s, P, gone).await;
    ok(
        "commit_delete",
        bounded("commit_delete", unit.commit_delete(at(2))).await,
    );
    assert!(
        load(&s, P, gone).await.is_none(),
        "a deleted model must not load (the row is gone)"
    );
    assert_eq!(
        checkpoint(&s, P, gone).await,
        at(2),
        "the cursor of a deleted model must stay, at the version committed with the deletion"
    );
    let listed = ok(
        "list_models",
        bounded("list_models", s.perspectives.list_models(P)).await,
    );
    assert!(
        listed.iter().all(|row| row.id != gone),
        "list_models must leave out a deleted model"
    );
    assert!(listed.iter().any(|row| row.id == kept), "other models stay");
    // A delete where no model is stored is not an error.
    let unit = claim(&s, P, gone).await;
    ok(
        "commit_delete again",
        bounded("commit_delete again", unit.commit_delete(at(3))).await,
    );
    assert_eq!(checkpoint(&s, P, gone).await, at(3));
    commit(&s, P, gone, Some(&tally(9)), at(4)).await;
    assert_eq!(load(&s, P, gone).await, Some((tally(9), 4)));
}

/// A [`ModelWrite::deleting`] in a batch
/// ([`PerspectiveStore::claim_many`](crate::backend::PerspectiveStore::claim_many))
/// removes its model and keeps its cursor, with the batch's other writes.
/// Vacuous for a store that claims one key at a time.
pub async fn a_batch_write_that_deletes_removes_the_model_and_keeps_the_cursor(
    backend: &dyn BackendFactory,
) {
    const P: &str = "whizbang.conformance.tombstone_batch";
    let s = backend.stores().await;
    let (gone, kept) = (StreamId::new(), StreamId::new());
    commit(&s, P, gone, Some(&tally(1)), at(1)).await;
    commit(&s, P, kept, Some(&tally(1)), at(1)).await;
    let mut keys = [gone, kept];
    keys.sort();
    let batch = ok(
        "claim_many",
        bounded("claim_many", s.perspectives.claim_many(P, &keys)).await,
    );
    let Some(mut batch) = batch else {
        return;
    };
    assert_eq!(batch.take_claimed().len(), 2, "both keys are claimed");
    let writes = vec![
        ModelWrite::deleting(gone, at(2)),
        ModelWrite::new(kept, Some(model(&*s.perspectives, &tally(2))), at(2)),
    ];
    ok(
        "batch commit",
        bounded("batch commit", batch.commit(writes)).await,
    );
    assert!(
        load(&s, P, gone).await.is_none(),
        "the deleted model is gone"
    );
    assert_eq!(checkpoint(&s, P, gone).await, at(2), "its cursor stays");
    assert_eq!(load(&s, P, kept).await, Some((tally(2), 2)));
}

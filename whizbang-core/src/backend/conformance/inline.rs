//! The contract of [`EventStore::append_inline`](crate::backend::EventStore::append_inline):
//! a store either applies a target in the append (handing the fold the
//! cursor, the model and the events after the cursor, and committing what
//! it returns with the events) or leaves it to the runtime (the default),
//! and never half of either.

use super::helpers::*;
use super::BackendFactory;
use crate::backend::{
    Checkpoint, CheckpointFailure, ClaimedModel, InlineApply, InlineTarget, ModelValue, ModelWrite,
};
use crate::message::{ExpectedVersion, StreamId};
use crate::util::lock;
use std::sync::Mutex;

/// What the store handed the fold: checkpoint version, the model's tally,
/// the versions of the events.
type Handed = (u64, Option<Tally>, Vec<u64>);

/// A fold that counts events into a [`Tally`] (JSON, which every store
/// keeps), or marks the cursor failed at the first event when `fail` is set.
struct CountingFold {
    targets: Vec<InlineTarget>,
    fail: bool,
    handed: Mutex<Vec<Handed>>,
}

impl CountingFold {
    fn new(perspective: &'static str, key: StreamId, fail: bool) -> Self {
        CountingFold {
            targets: vec![InlineTarget { perspective, key }],
            fail,
            handed: Mutex::new(Vec::new()),
        }
    }

    fn handed(&self) -> Vec<Handed> {
        lock(&self.handed).clone()
    }
}

impl InlineApply for CountingFold {
    fn targets(&self) -> &[InlineTarget] {
        &self.targets
    }

    fn apply(&self, index: usize, claimed: ClaimedModel) -> Option<ModelWrite> {
        assert_eq!(
            index, 0,
            "append_inline applied a target that does not exist"
        );
        let before = claimed.model.as_ref().map(read_tally);
        let events = claimed
            .events
            .expect("append_inline must hand the fold the events after the cursor");
        let versions: Vec<u64> = events.iter().map(|e| e.stream_version).collect();
        lock(&self.handed).push((claimed.checkpoint.version, before.clone(), versions.clone()));
        let first = *versions.first()?;
        if self.fail {
            let failure = CheckpointFailure {
                version: first,
                message: "conformance: this fold fails".to_owned(),
            };
            return Some(ModelWrite::new(
                claimed.key,
                None,
                Checkpoint {
                    version: claimed.checkpoint.version,
                    failure: Some(failure),
                    skipped: Vec::new(),
                },
            ));
        }
        let count = before.map_or(0, |t| t.count) + versions.len() as u64;
        let last = versions.last().copied().unwrap_or(first);
        let json = serde_json::value::to_raw_value(&tally(count)).ok()?;
        Some(ModelWrite::new(
            claimed.key,
            Some(ModelValue::Json(json)),
            at(last),
        ))
    }
}

/// Either the store applies the target in the append (handed the cursor,
/// the stored model and exactly the events after the cursor; what the fold
/// returns is committed with the events), or it applies nothing and the
/// fold is never called. A conflicting append applies nothing.
pub async fn append_inline_applies_a_target_with_the_events_or_not_at_all(
    backend: &dyn BackendFactory,
) {
    const P: &str = "whizbang.conformance.inline";
    let s = backend.stores().await;
    let key = StreamId::new();

    let fold = CountingFold::new(P, key, false);
    let first = ok(
        "append_inline of two events",
        bounded(
            "append_inline",
            s.events.append_inline(
                vec![to(key, ExpectedVersion::NoStream, events(key, 2))],
                &fold,
            ),
        )
        .await,
    );
    assert_eq!(first.events.len(), 2, "append_inline stored the events");
    assert_eq!(version(&s, key).await, 2);
    if first.applied.is_empty() {
        // The default: nothing applied, the fold never called.
        assert!(
            fold.handed().is_empty(),
            "append_inline applied nothing but called the fold"
        );
        assert_eq!(checkpoint(&s, P, key).await, Checkpoint::default());
        assert!(load(&s, P, key).await.is_none());
        return;
    }
    assert_eq!(first.applied, vec![0]);
    assert_eq!(fold.handed(), vec![(0, None, vec![1, 2])]);
    assert_eq!(checkpoint(&s, P, key).await, at(2));
    assert_eq!(load(&s, P, key).await, Some((tally(2), 2)));

    // The next append hands the stored model and only the new event.
    let fold = CountingFold::new(P, key, false);
    let next = ok(
        "a second append_inline",
        bounded(
            "append_inline",
            s.events.append_inline(
                vec![to(key, ExpectedVersion::Exact(2), events(key, 1))],
                &fold,
            ),
        )
        .await,
    );
    assert_eq!(next.applied, vec![0]);
    assert_eq!(fold.handed(), vec![(2, Some(tally(2)), vec![3])]);
    assert_eq!(load(&s, P, key).await, Some((tally(3), 3)));

    // A conflicting append stores and applies nothing.
    let fold = CountingFold::new(P, key, false);
    let refused = bounded(
        "a conflicting append_inline",
        s.events.append_inline(
            vec![to(key, ExpectedVersion::Exact(1), events(key, 1))],
            &fold,
        ),
    )
    .await
    .map(|out| out.events.iter().map(|e| e.event_id).collect());
    assert_concurrency(refused, key, ExpectedVersion::Exact(1), 3);
    assert_eq!(version(&s, key).await, 3);
    assert_eq!(checkpoint(&s, P, key).await, at(3));
    assert_eq!(load(&s, P, key).await, Some((tally(3), 3)));
}

/// A failed cursor the fold returns is committed with the events: the
/// events stay stored, the cursor records the failure, the model is kept.
pub async fn append_inline_commits_a_failed_cursor_with_the_events(backend: &dyn BackendFactory) {
    const P: &str = "whizbang.conformance.inline_failure";
    let s = backend.stores().await;
    let key = StreamId::new();
    let fold = CountingFold::new(P, key, true);
    let out = ok(
        "append_inline with a failing fold",
        bounded(
            "append_inline",
            s.events.append_inline(
                vec![to(key, ExpectedVersion::NoStream, events(key, 2))],
                &fold,
            ),
        )
        .await,
    );
    assert_eq!(version(&s, key).await, 2, "a failing fold undid the append");
    if out.applied.is_empty() {
        assert_eq!(checkpoint(&s, P, key).await, Checkpoint::default());
        return;
    }
    let cursor = checkpoint(&s, P, key).await;
    assert_eq!(cursor.version, 0);
    assert_eq!(
        cursor.failure,
        Some(CheckpointFailure {
            version: 1,
            message: "conformance: this fold fails".to_owned(),
        })
    );
    assert!(load(&s, P, key).await.is_none());
}

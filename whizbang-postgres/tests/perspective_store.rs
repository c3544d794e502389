//! `PgPerspectiveStore` and `PgSyncBackend` beyond the conformance suite:
//! claims across two pools (two processes), a claim whose session the server
//! ended, hostile names, the applied NOTIFY, open-ended sync queries.

mod support;
use support::{bounded, event};

use serde_json::json;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use std::time::Duration;
use whizbang_core::backend::{
    Checkpoint, CheckpointFailure, EventStore, ModelValue, ModelWrite, PerspectiveStore,
    SkippedEvent, StreamAppend, SyncBackend, UnappliedQuery,
};
use whizbang_core::{EventId, ExpectedVersion, StreamId};
use whizbang_postgres::{PgEventStore, PgPerspectiveStore, PgSyncBackend};

const P: &str = "tests.counts";

fn json(v: serde_json::Value) -> ModelValue {
    ModelValue::Json(serde_json::value::to_raw_value(&v).unwrap())
}

fn at(version: u64) -> Checkpoint {
    Checkpoint {
        version,
        ..Checkpoint::default()
    }
}

async fn model(
    store: &PgPerspectiveStore,
    p: &str,
    key: StreamId,
) -> Option<(serde_json::Value, u64)> {
    bounded(store.load_model(p, key))
        .await
        .unwrap()
        .map(|row| match row.model {
            ModelValue::Json(j) => (serde_json::from_str(j.get()).unwrap(), row.version),
            ModelValue::Typed(_) => panic!("a JSON store returned a typed model"),
        })
}

/// A second pool on the same database: another process, as far as
/// PostgreSQL can tell.
async fn other_process(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap()
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_claim_in_another_process_waits_until_the_first_commits_and_sees_its_commit(
    pool: PgPool,
) {
    let one = PgPerspectiveStore::new(pool.clone());
    let two = PgPerspectiveStore::new(other_process(&pool).await);
    let key = StreamId::new();
    // Round 1 starts with no cursor row; round 2 with a cursor and a model,
    // so the waiting claim must read the model committed while it waited.
    for round in 1..=2u64 {
        let (mine, theirs) = (2 * round - 1, 2 * round);
        let first = bounded(one.claim(P, key)).await.unwrap();
        let other = two.clone();
        let second = tokio::spawn(async move {
            let mut unit = other.claim(P, key).await.unwrap();
            let model = unit.take_model().map(|m| {
                serde_json::from_str::<serde_json::Value>(m.to_json().unwrap().get()).unwrap()
            });
            (unit.checkpoint().clone(), model, unit)
        });
        let waited = tokio::time::timeout(Duration::from_millis(300), async {
            while !second.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            waited.is_err(),
            "the second claim must wait while the first is held"
        );
        // Reads never wait.
        assert_eq!(bounded(one.checkpoint(P, key)).await.unwrap(), at(mine - 1));
        bounded(first.commit(Some(json(json!({ "n": mine }))), at(mine)))
            .await
            .unwrap();
        let (checkpoint, seen, unit) = bounded(second).await.unwrap();
        assert_eq!(
            checkpoint,
            at(mine),
            "the second claim sees the first commit"
        );
        assert_eq!(
            seen,
            Some(json!({ "n": mine })),
            "and its model, round {round}"
        );
        bounded(unit.commit(Some(json(json!({ "n": theirs }))), at(theirs)))
            .await
            .unwrap();
        assert_eq!(
            model(&one, P, key).await,
            Some((json!({ "n": theirs }), theirs))
        );
    }
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_dropped_unit_changes_nothing_and_releases_the_claim(pool: PgPool) {
    let store = PgPerspectiveStore::new(pool.clone());
    let key = StreamId::new();
    let unit = bounded(store.claim(P, key)).await.unwrap();
    bounded(unit.commit(Some(json(serde_json::json!({ "n": 1 }))), at(1)))
        .await
        .unwrap();
    let mut unit = bounded(store.claim(P, key)).await.unwrap();
    let _ = unit.take_model();
    drop(unit);
    // A first claim on a new key that is dropped leaves no cursor row.
    let fresh = StreamId::new();
    drop(bounded(store.claim(P, fresh)).await.unwrap());
    let rows: i64 =
        sqlx::query_scalar("select count(*) from wh_perspective_cursors where model_key = $1")
            .bind(fresh.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 0);
    // Released: another process claims at once and sees the old commit.
    let two = PgPerspectiveStore::new(other_process(&pool).await);
    let unit = bounded(two.claim(P, key)).await.unwrap();
    assert_eq!(unit.checkpoint(), &at(1));
    drop(unit);
    assert_eq!(
        model(&store, P, key).await,
        Some((serde_json::json!({ "n": 1 }), 1))
    );
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_claim_whose_session_the_server_ended_cannot_commit_after_another_moved_on(pool: PgPool) {
    // "Process one" froze while holding a claim: the server's idle-in-
    // transaction timeout ends its session and releases the row lock.
    let frozen_opts = (*pool.connect_options())
        .clone()
        .options([("idle_in_transaction_session_timeout", "200")]);
    let frozen = PgPerspectiveStore::new(
        PgPoolOptions::new()
            .max_connections(2)
            .connect_with(frozen_opts)
            .await
            .unwrap(),
    );
    let live = PgPerspectiveStore::new(other_process(&pool).await);
    let key = StreamId::new();
    let stale = bounded(frozen.claim(P, key)).await.unwrap();
    // Process two's claim waits for the lock, which the server frees.
    let unit = bounded(live.claim(P, key)).await.unwrap();
    bounded(unit.commit(Some(json(serde_json::json!({ "by": "live" }))), at(1)))
        .await
        .unwrap();
    let err = bounded(stale.commit(Some(json(serde_json::json!({ "by": "stale" }))), at(1)))
        .await
        .expect_err("the stale unit's commit must fail");
    assert!(
        matches!(err, whizbang_core::Error::Backend { .. }),
        "{err:?}"
    );
    assert_eq!(
        model(&live, P, key).await,
        Some((serde_json::json!({ "by": "live" }), 1)),
        "the stale commit changed nothing"
    );
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn hostile_perspective_names_and_records_round_trip_as_data(pool: PgPool) {
    const HOSTILE: &str = "p'); delete from wh_perspective_rows; -- \" \\ é";
    let store = PgPerspectiveStore::new(pool.clone());
    let key = StreamId::new();
    let checkpoint = Checkpoint {
        version: 3,
        failure: Some(CheckpointFailure {
            version: 4,
            message: HOSTILE.to_owned(),
        }),
        skipped: vec![SkippedEvent {
            version: 2,
            event_id: EventId::new(),
            reason: HOSTILE.to_owned(),
            failure: HOSTILE.to_owned(),
        }],
    };
    let unit = bounded(store.claim(HOSTILE, key)).await.unwrap();
    bounded(unit.commit(
        Some(json(serde_json::json!({ HOSTILE: HOSTILE }))),
        checkpoint.clone(),
    ))
    .await
    .unwrap();
    assert_eq!(
        bounded(store.checkpoint(HOSTILE, key)).await.unwrap(),
        checkpoint
    );
    assert_eq!(
        model(&store, HOSTILE, key).await,
        Some((serde_json::json!({ HOSTILE: HOSTILE }), 3))
    );
    let listed = bounded(store.list_models(HOSTILE)).await.unwrap();
    assert_eq!(listed.len(), 1);
    let attempts: i32 =
        sqlx::query_scalar("select attempts from wh_perspective_cursors where perspective = $1")
            .bind(HOSTILE)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(attempts, 1, "a committed failure counts an attempt");
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_commit_notifies_the_applied_channel_once(pool: PgPool) {
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("whizbang_applied").await.unwrap();
    let store = PgPerspectiveStore::new(pool.clone());
    let key = StreamId::new();
    let unit = bounded(store.claim(P, key)).await.unwrap();
    bounded(unit.commit(None, at(5))).await.unwrap();
    let note = bounded(listener.recv()).await.unwrap();
    assert_eq!(note.payload(), format!("5 {key} {P}"));
    // A dropped unit notifies nothing.
    drop(bounded(store.claim(P, key)).await.unwrap());
    let next = tokio::time::timeout(Duration::from_millis(200), listener.recv()).await;
    assert!(next.is_err(), "{next:?}");
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn unapplied_lists_stored_events_of_handled_types_past_the_cursor(pool: PgPool) {
    let events = PgEventStore::new(pool.clone());
    let models = PgPerspectiveStore::new(pool.clone());
    let sync = PgSyncBackend::new(pool.clone());
    let (a, b) = (StreamId::new(), StreamId::new());
    let stored = bounded(events.append(vec![
        StreamAppend {
            stream_id: a,
            expected: ExpectedVersion::NoStream,
            events: vec![
                event(a, "t.opened", json!({})),
                event(a, "t.other", json!({})),
                event(a, "t.ticked", json!({})),
            ],
        },
        StreamAppend {
            stream_id: b,
            expected: ExpectedVersion::NoStream,
            events: vec![event(b, "t.opened", json!({}))],
        },
    ]))
    .await
    .unwrap();
    // The perspective applied stream a up to version 1.
    let unit = bounded(models.claim(P, a)).await.unwrap();
    bounded(unit.commit(None, at(1))).await.unwrap();
    let query = UnappliedQuery::new(P, &["t.opened", "t.ticked"]);
    let mut got: Vec<EventId> = bounded(sync.unapplied(&query))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.event_id)
        .collect();
    got.sort_unstable();
    let mut want = vec![stored[2].event_id, stored[3].event_id];
    want.sort_unstable();
    assert_eq!(
        got, want,
        "a@3 (handled, past the cursor) and b@1; not a@1 nor the other type"
    );
    let none = UnappliedQuery::new(P, &[]);
    assert!(bounded(sync.unapplied(&none)).await.unwrap().is_empty());
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_commit_dropped_at_any_await_point_is_all_or_nothing_and_releases_the_claim(
    pool: PgPool,
) {
    let store = PgPerspectiveStore::new(pool.clone());
    let key = StreamId::new();
    let mut cut_short = 0;
    for i in 0..40u64 {
        let unit = bounded(store.claim(P, key)).await.unwrap();
        let next = unit.checkpoint().version + 1;
        let cut = Duration::from_micros(i * 200);
        let commit = unit.commit(Some(json(json!({ "n": next }))), at(next));
        if tokio::time::timeout(cut, commit).await.is_err() {
            cut_short += 1;
        }
        // The claim is free again, and model and cursor moved together.
        let unit = bounded(store.claim(P, key)).await.unwrap();
        let version = unit.checkpoint().version;
        assert!(
            version == next || version == next - 1,
            "{version} vs {next}"
        );
        drop(unit);
        match model(&store, P, key).await {
            Some((m, v)) => {
                assert_eq!(v, version);
                assert_eq!(
                    m,
                    json!({ "n": version }),
                    "model and cursor commit together"
                );
            }
            None => assert_eq!(version, 0),
        }
    }
    assert!(cut_short > 0, "some commits were cut");
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn claim_many_commits_every_model_at_once_and_a_dropped_batch_changes_nothing(pool: PgPool) {
    let events = PgEventStore::new(pool.clone());
    let store = PgPerspectiveStore::new(pool.clone());
    let (a, b) = (StreamId::new(), StreamId::new());
    for s in [a, b] {
        bounded(events.append(vec![StreamAppend {
            stream_id: s,
            expected: ExpectedVersion::NoStream,
            events: vec![
                event(s, "t.opened", json!({})),
                event(s, "t.ticked", json!({})),
            ],
        }]))
        .await
        .unwrap();
    }
    // A batch hands over each model's checkpoint and the events after it.
    let mut batch = bounded(store.claim_many(P, &[b, a]))
        .await
        .unwrap()
        .expect("PostgreSQL claims many models at once");
    let claimed = batch.take_claimed();
    assert_eq!(
        claimed.iter().map(|c| c.key).collect::<Vec<_>>(),
        vec![b, a]
    );
    for c in &claimed {
        assert_eq!(c.checkpoint.version, 0);
        assert!(c.model.is_none());
        let versions: Vec<u64> = c
            .events
            .as_ref()
            .expect("events read with the claim")
            .iter()
            .map(|e| e.stream_version)
            .collect();
        assert_eq!(versions, vec![1, 2]);
    }
    // While it holds the models, a single claim on one of them waits.
    let waiting = tokio::time::timeout(Duration::from_millis(300), store.claim(P, a)).await;
    assert!(waiting.is_err(), "a claimed model cannot be claimed again");
    // Dropped: nothing changes.
    drop(batch);
    assert_eq!(bounded(store.checkpoint(P, a)).await.unwrap().version, 0);

    // Committed: both models and cursors, in one transaction.
    let mut batch = bounded(store.claim_many(P, &[a, b]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.take_claimed().len(), 2);
    bounded(batch.commit(vec![
        ModelWrite::new(a, Some(json(json!({ "n": 2 }))), at(2)),
        ModelWrite::new(b, Some(json(json!({ "n": 20 }))), at(2)),
    ]))
    .await
    .unwrap();
    assert_eq!(model(&store, P, a).await, Some((json!({ "n": 2 }), 2)));
    assert_eq!(model(&store, P, b).await, Some((json!({ "n": 20 }), 2)));
    assert_eq!(bounded(store.checkpoint(P, b)).await.unwrap().version, 2);

    // A write for a model the batch did not claim is refused whole.
    let mut batch = bounded(store.claim_many(P, &[a])).await.unwrap().unwrap();
    let claimed = batch.take_claimed();
    assert!(claimed[0].events.as_ref().is_some_and(Vec::is_empty));
    assert_eq!(claimed[0].checkpoint.version, 2);
    let refused = bounded(batch.commit(vec![
        ModelWrite::new(a, None, at(3)),
        ModelWrite::new(b, None, at(3)),
    ]))
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(bounded(store.checkpoint(P, a)).await.unwrap().version, 2);
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn claim_many_payloads_hands_over_the_events_in_order_without_their_metadata(pool: PgPool) {
    let events = PgEventStore::new(pool.clone());
    let store = PgPerspectiveStore::new(pool.clone());
    let (a, b) = (StreamId::new(), StreamId::new());
    let mut correlation = Vec::new();
    for s in [a, b] {
        let appended = bounded(events.append(vec![StreamAppend {
            stream_id: s,
            expected: ExpectedVersion::NoStream,
            events: (1..=5)
                .map(|n| event(s, "t.ticked", json!({ "n": n })))
                .collect(),
        }]))
        .await
        .unwrap();
        correlation.push(
            appended
                .iter()
                .map(|e| e.metadata.correlation_id)
                .collect::<Vec<_>>(),
        );
    }
    // Without metadata: every event after the cursor, in version order,
    // payload intact, metadata empty.
    let mut batch = bounded(store.claim_many_payloads(P, &[b, a]))
        .await
        .unwrap()
        .expect("PostgreSQL claims many models at once");
    for c in batch.take_claimed() {
        let got = c.events.expect("events read with the claim");
        let versions: Vec<u64> = got.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, vec![1, 2, 3, 4, 5]);
        for e in &got {
            let data: serde_json::Value = serde_json::from_str(e.data.get()).unwrap();
            assert_eq!(data, json!({ "n": e.stream_version }));
            assert_eq!(e.metadata.correlation_id.as_uuid(), uuid::Uuid::nil());
            assert_eq!(e.stream_id, c.key);
        }
    }
    drop(batch);
    // The ordinary claim reads the metadata as stored.
    let mut batch = bounded(store.claim_many(P, &[a])).await.unwrap().unwrap();
    let claimed = batch.take_claimed();
    let got = claimed[0].events.as_ref().unwrap();
    let read: Vec<_> = got.iter().map(|e| e.metadata.correlation_id).collect();
    assert_eq!(read, correlation[0]);
}

/// Many keys per batch, more commits than PostgreSQL plans one by one
/// before it caches a generic plan, on a table without statistics: every
/// commit lands whole, models written, kept and deleted as asked.
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn batch_commits_of_many_models_land_whole_once_the_plan_is_cached(pool: PgPool) {
    let store = PgPerspectiveStore::new(pool.clone());
    let keys: Vec<StreamId> = (0..2_000).map(|_| StreamId::new()).collect();
    for (round, chunk) in keys.chunks(250).enumerate() {
        for version in 1..=2u64 {
            let mut batch = bounded(store.claim_many(P, chunk)).await.unwrap().unwrap();
            assert_eq!(batch.take_claimed().len(), chunk.len());
            let writes = chunk
                .iter()
                .enumerate()
                .map(|(i, k)| match (version, i % 3) {
                    // Second round: one in three keeps its stored model,
                    // one in three is deleted.
                    (2, 1) => ModelWrite::new(*k, None, at(version)),
                    (2, 2) => ModelWrite::deleting(*k, at(version)),
                    _ => ModelWrite::new(
                        *k,
                        Some(json(json!({ "r": round, "v": version }))),
                        at(version),
                    ),
                })
                .collect();
            bounded(batch.commit(writes)).await.unwrap();
        }
    }
    for (round, chunk) in keys.chunks(250).enumerate() {
        for (i, k) in chunk.iter().enumerate().step_by(37) {
            assert_eq!(bounded(store.checkpoint(P, *k)).await.unwrap().version, 2);
            let expected = match i % 3 {
                0 => Some((json!({ "r": round, "v": 2 }), 2)),
                1 => Some((json!({ "r": round, "v": 1 }), 2)),
                _ => None,
            };
            assert_eq!(
                model(&store, P, *k).await,
                expected,
                "key {i} of round {round}"
            );
        }
    }
}

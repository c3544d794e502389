//! `PgEventStore` beyond the conformance suite: concurrent appends from many
//! connections, duplicate ids, immutability, hostile values, the NOTIFY.

mod support;
use support::{bounded, event};

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::time::Duration;
use whizbang_core::backend::{EventStore, NewEvent, StreamAppend};
use whizbang_core::{Error, ExpectedVersion, StreamId};
use whizbang_postgres::PgEventStore;

fn append(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Vec<StreamAppend> {
    vec![StreamAppend {
        stream_id: stream,
        expected,
        events,
    }]
}

async fn count(pool: &PgPool, stream: StreamId) -> i64 {
    sqlx::query_scalar("select count(*) from wh_events where stream_id = $1")
        .bind(stream.as_uuid())
        .fetch_one(pool)
        .await
        .unwrap()
}

/// How many events `stream` holds, after checking their versions run 1..n.
async fn gap_free_versions(pool: &PgPool, stream: StreamId) -> u64 {
    let versions: Vec<i64> = sqlx::query_scalar(
        "select stream_version from wh_events where stream_id = $1 order by stream_version",
    )
    .bind(stream.as_uuid())
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    versions.len() as u64
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn two_appends_at_the_same_expected_version_one_wins_one_conflicts_nothing_partial(
    pool: PgPool,
) {
    let store = PgEventStore::new(pool.clone());
    let stream = StreamId::new();
    bounded(store.append(append(
        stream,
        ExpectedVersion::NoStream,
        vec![event(stream, "t.opened", serde_json::json!({}))],
    )))
    .await
    .unwrap();
    for round in 0..10u64 {
        let at = ExpectedVersion::Exact(1 + round * 2);
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let store = store.clone();
                let events = vec![
                    event(stream, "t.ticked", serde_json::json!({ "round": round })),
                    event(stream, "t.ticked", serde_json::json!({ "round": round })),
                ];
                tokio::spawn(async move { store.append(append(stream, at, events)).await })
            })
            .collect();
        let mut won = 0;
        let mut conflicted = 0;
        for racer in racers {
            match bounded(racer).await.unwrap() {
                Ok(stored) => {
                    assert_eq!(stored.len(), 2);
                    won += 1;
                }
                Err(Error::Concurrency {
                    stream: s,
                    expected,
                    actual,
                }) => {
                    assert_eq!((s, expected, actual), (stream, at, 3 + round * 2));
                    conflicted += 1;
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!((won, conflicted), (1, 1), "round {round}");
        assert_eq!(
            count(&pool, stream).await,
            3 + 2 * round as i64,
            "nothing partial"
        );
    }
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn concurrent_any_appends_from_eight_tasks_get_gap_free_versions(pool: PgPool) {
    let store = PgEventStore::new(pool.clone());
    let stream = StreamId::new();
    let per_task = 10;
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    // Some appends carry two events, so batches interleave too.
                    let n = 1 + (i % 2);
                    let events = (0..n)
                        .map(|_| event(stream, "t.ticked", serde_json::json!({ "task": task })))
                        .collect();
                    store
                        .append(append(stream, ExpectedVersion::Any, events))
                        .await
                        .expect("an Any append never conflicts");
                }
            })
        })
        .collect();
    for task in tasks {
        bounded(task).await.unwrap();
    }
    let total = 8 * (per_task / 2) * 3;
    assert_eq!(gap_free_versions(&pool, stream).await, total as u64);
    assert_eq!(
        bounded(store.stream_version(stream)).await.unwrap(),
        total as u64
    );
    let read = bounded(store.read_stream(stream, 0)).await.unwrap();
    assert_eq!(read.len(), total);
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_duplicate_id_stores_nothing_of_the_append_and_leaves_the_head_alone(pool: PgPool) {
    let store = PgEventStore::new(pool.clone());
    let (a, b) = (StreamId::new(), StreamId::new());
    let first = event(a, "t.opened", serde_json::json!({}));
    let id = first.event_id;
    bounded(store.append(append(a, ExpectedVersion::NoStream, vec![first])))
        .await
        .unwrap();
    let mut again = event(b, "t.opened", serde_json::json!({}));
    again.event_id = id;
    let err = bounded(store.append(vec![StreamAppend {
        stream_id: b,
        expected: ExpectedVersion::NoStream,
        events: vec![event(b, "t.opened", serde_json::json!({})), again],
    }]))
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::DuplicateEventId { event_id } if event_id == id),
        "{err:?}"
    );
    assert_eq!(count(&pool, b).await, 0, "nothing of the append is stored");
    assert_eq!(bounded(store.stream_version(b)).await.unwrap(), 0);
    // The stream can still start at version 1.
    bounded(store.append(append(
        b,
        ExpectedVersion::NoStream,
        vec![event(b, "t.opened", serde_json::json!({}))],
    )))
    .await
    .unwrap();
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn events_cannot_be_updated_or_deleted(pool: PgPool) {
    let store = PgEventStore::new(pool.clone());
    let stream = StreamId::new();
    bounded(store.append(append(
        stream,
        ExpectedVersion::NoStream,
        vec![event(stream, "t.opened", serde_json::json!({ "n": 1 }))],
    )))
    .await
    .unwrap();
    for sql in [
        "update wh_events set data = '{\"n\": 2}'",
        "delete from wh_events",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        let db = err.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("23001"), "{sql}"); // restrict_violation
        assert!(db.message().contains("append-only"), "{}", db.message());
    }
    assert_eq!(count(&pool, stream).await, 1);
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn hostile_event_types_data_and_metadata_round_trip_as_data(pool: PgPool) {
    const HOSTILE: &str = "x'); drop table wh_events; -- \"; select 1 \\ $1 é";
    let store = PgEventStore::new(pool.clone());
    let stream = StreamId::new();
    let mut e = event(stream, HOSTILE, serde_json::json!({ HOSTILE: HOSTILE }));
    e.metadata.extra.insert(HOSTILE, HOSTILE);
    let id = e.event_id;
    bounded(store.append(append(stream, ExpectedVersion::NoStream, vec![e])))
        .await
        .unwrap();
    let read = bounded(store.read_stream(stream, 0)).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].event_type, HOSTILE);
    let data: serde_json::Value = serde_json::from_str(read[0].data.get()).unwrap();
    assert_eq!(data, serde_json::json!({ HOSTILE: HOSTILE }));
    assert_eq!(
        read[0].metadata.extra.get(HOSTILE),
        Some(&serde_json::json!(HOSTILE))
    );
    let located = bounded(store.locate(&[id])).await.unwrap();
    assert_eq!(located[0].event_type, HOSTILE);
    let tables: i64 =
        sqlx::query_scalar("select count(*) from pg_tables where tablename = 'wh_events'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(tables, 1);
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn an_append_notifies_its_partitions_once_and_a_failed_one_does_not(pool: PgPool) {
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("whizbang_events").await.unwrap();
    let store = PgEventStore::new(pool.clone());
    let (a, b) = (StreamId::new(), StreamId::new());
    bounded(store.append(vec![
        StreamAppend {
            stream_id: a,
            expected: ExpectedVersion::NoStream,
            events: vec![
                event(a, "t.opened", serde_json::json!({})),
                event(a, "t.ticked", serde_json::json!({})),
            ],
        },
        StreamAppend {
            stream_id: b,
            expected: ExpectedVersion::NoStream,
            events: vec![event(b, "t.opened", serde_json::json!({}))],
        },
    ]))
    .await
    .unwrap();
    // A conflicting append notifies nothing (its transaction rolled back).
    let err = bounded(store.append(append(
        a,
        ExpectedVersion::NoStream,
        vec![event(a, "t.opened", serde_json::json!({}))],
    )))
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Concurrency { .. }), "{err:?}");
    let stored: Vec<i16> =
        sqlx::query_scalar("select distinct partition from wh_events order by partition")
            .fetch_all(&pool)
            .await
            .unwrap();
    let expected = stored
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let note = bounded(listener.recv()).await.unwrap();
    assert_eq!(note.payload(), expected);
    let next = tokio::time::timeout(Duration::from_millis(200), listener.recv()).await;
    assert!(next.is_err(), "one notification per append: {next:?}");
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn an_append_dropped_at_any_await_point_is_all_or_nothing(pool: PgPool) {
    let store = PgEventStore::new(pool.clone());
    let stream = StreamId::new();
    let mut outcomes = (0, 0);
    for i in 0..40u64 {
        let events = (0..3)
            .map(|_| event(stream, "t.ticked", serde_json::json!({ "i": i })))
            .collect();
        // Drop the append after a growing delay: at BEGIN, the heads upsert,
        // the insert, the COMMIT, or after it finished.
        let cut = Duration::from_micros(i * 250);
        match tokio::time::timeout(
            cut,
            store.append(append(stream, ExpectedVersion::Any, events)),
        )
        .await
        {
            Ok(done) => {
                done.expect("an append that finished succeeded");
                outcomes.0 += 1;
            }
            Err(_) => outcomes.1 += 1,
        }
        // Whatever was cut, the next append goes through (no lock is left
        // behind), and the stream is whole: its head equals its events, and
        // versions run 1..n in steps of whole appends.
        bounded(store.append(append(
            stream,
            ExpectedVersion::Any,
            vec![event(stream, "t.marker", serde_json::json!({}))],
        )))
        .await
        .expect("the stream is not left locked");
        let stored = gap_free_versions(&pool, stream).await;
        let head = bounded(store.stream_version(stream)).await.unwrap();
        assert_eq!(head, stored, "the head matches the events");
        let ticked: i64 = sqlx::query_scalar(
            "select count(*) from wh_events where stream_id = $1 and event_type = 't.ticked'",
        )
        .bind(stream.as_uuid())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(ticked % 3, 0, "an append is stored whole or not at all");
    }
    assert!(outcomes.1 > 0, "some appends were cut: {outcomes:?}");
}

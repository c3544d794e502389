//! An append whose COMMIT reached the server but whose answer was lost with
//! the connection: the store must say the write may have been stored
//! (`Stored::Unknown`), and a caller that retries at the same expected
//! version gets a concurrency conflict whose stored event is its own, so the
//! event is stored exactly once. The pool then works again by itself.
//!
//! The event store's connections go through a relay that cuts the
//! connection right after the server answered a COMMIT; the perspective
//! store and the sync backend connect directly.

use sqlx::postgres::{PgPoolOptions, PgSslMode};
use std::net::ToSocketAddrs as _;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::error::Stored;
use whizbang_core::{Error, ExpectedVersion, Runtime, StreamId};
use whizbang_postgres::{PgEventStore, PgPerspectiveStore, PgSyncBackend};
use whizbang_tests::pg::db::FreshDb;
use whizbang_tests::pg::ledger::{self, Tally};
use whizbang_tests::pg::proxy::CommitCutter;

whizbang_tests::pg_totals!();

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(30);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

fn added(stream: Uuid, seq: u64) -> Added {
    Added {
        account: stream,
        seq,
        amount: amount(stream, seq),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_commit_answer_is_lost_is_reported_unknown_and_a_retry_finds_it_stored() {
    let db = bounded(FreshDb::create()).await;
    let direct = db.pool.connect_options();
    let server = (direct.get_host(), direct.get_port())
        .to_socket_addrs()
        .expect("the test server's address resolves")
        .next()
        .expect("an address");
    let cutter = CommitCutter::start(server).expect("start the relay");
    let relayed = (*direct)
        .clone()
        .host("127.0.0.1")
        .port(cutter.addr().port())
        // The relay reads the protocol: no TLS on this leg.
        .ssl_mode(PgSslMode::Disable);
    let relayed = bounded(
        PgPoolOptions::new()
            .max_connections(4)
            .connect_with(relayed),
    )
    .await
    .expect("connect through the relay");

    let rt = Runtime::builder()
        .event_store(PgEventStore::new(relayed))
        .perspective_store(PgPerspectiveStore::new(db.pool.clone()))
        .sync_backend(PgSyncBackend::new(db.pool.clone()))
        .runner_concurrency(2)
        .build()
        .unwrap();
    let stream = Uuid::now_v7();
    let scope = rt.scope();
    bounded(scope.publish_expecting(added(stream, 1), ExpectedVersion::NoStream))
        .await
        .expect("a plain append through the relay");

    cutter.cut_next_commit();
    let lost = bounded(scope.publish_expecting(added(stream, 2), ExpectedVersion::Exact(1))).await;
    assert_eq!(cutter.cut(), 1, "the relay cut the COMMIT's answer");
    match &lost {
        Err(Error::Backend { stored, .. }) => assert_eq!(
            *stored,
            Stored::Unknown,
            "a commit whose answer was lost may have been stored: {lost:?}"
        ),
        other => panic!("expected a backend error saying the write may be stored, got {other:?}"),
    }
    let message = lost.unwrap_err().to_string();
    assert!(
        message.contains("may or may not have been stored"),
        "{message}"
    );

    // The server did commit it.
    let version: i64 = sqlx::query_scalar("select version from wh_streams where stream_id = $1")
        .bind(stream)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(version, 2, "the cut COMMIT was committed by the server");

    // The caller retries at the same expected version: a conflict at 2, and
    // the event stored at 2 is the one it sent. The pool replaced the cut
    // connection by itself.
    let retry = bounded(scope.publish_expecting(added(stream, 2), ExpectedVersion::Exact(1))).await;
    match retry {
        Err(Error::Concurrency { actual: 2, .. }) => {}
        other => panic!("expected a concurrency conflict at version 2, got {other:?}"),
    }
    let stored = bounded(rt.event_store().read_stream(StreamId::from(stream), 1))
        .await
        .unwrap();
    let second: Added = serde_json::from_str(stored[0].data.get()).unwrap();
    assert_eq!((stored.len(), second.seq), (1, 2));

    bounded(scope.publish_expecting(added(stream, 3), ExpectedVersion::Exact(2)))
        .await
        .expect("the relayed pool works again");
    bounded(scope.complete()).await.unwrap();

    let expected = (1..=3).map(|seq| format!("{stream}:{seq}"));
    let seen = bounded(ledger::event_keys(&db.pool, "seq")).await.unwrap();
    Tally::of(expected, seen).assert_exact();
    bounded(rt.catch_up(TOTALS, StreamId::from(stream)))
        .await
        .unwrap();
    let check = bounded(ledger::fresh_fold(&db.pool, TOTALS, stream, fold_totals))
        .await
        .unwrap();
    assert!(check.matches(), "{check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_perspective_commit_whose_answer_is_lost_is_not_applied_twice() {
    let db = bounded(FreshDb::create()).await;
    let direct = db.pool.connect_options();
    let server = (direct.get_host(), direct.get_port())
        .to_socket_addrs()
        .expect("the test server's address resolves")
        .next()
        .expect("an address");
    let cutter = CommitCutter::start(server).expect("start the relay");
    let relayed = (*direct)
        .clone()
        .host("127.0.0.1")
        .port(cutter.addr().port())
        .ssl_mode(PgSslMode::Disable);
    let relayed = bounded(
        PgPoolOptions::new()
            .max_connections(4)
            .connect_with(relayed),
    )
    .await
    .expect("connect through the relay");

    let rt = Runtime::builder()
        .event_store(PgEventStore::new(db.pool.clone()))
        .perspective_store(PgPerspectiveStore::new(relayed))
        .sync_backend(PgSyncBackend::new(db.pool.clone()))
        .runner_concurrency(2)
        .build()
        .unwrap();
    // Only the test applies: the runner stays paused.
    rt.runner().pause();
    let stream = Uuid::now_v7();
    let scope = rt.scope();
    for seq in 1..=3 {
        let expected = if seq == 1 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(seq - 1)
        };
        bounded(scope.publish_expecting(added(stream, seq), expected))
            .await
            .unwrap();
    }
    bounded(scope.complete()).await.unwrap();

    cutter.cut_next_commit();
    let cut = bounded(rt.catch_up(TOTALS, StreamId::from(stream))).await;
    assert_eq!(cutter.cut(), 1, "the relay cut a COMMIT's answer");
    match &cut {
        Err(Error::Backend { stored, .. }) => assert_eq!(*stored, Stored::Unknown, "{cut:?}"),
        other => panic!("expected a backend error saying the commit may be stored: {other:?}"),
    }
    let cursor: i64 = sqlx::query_scalar(
        "select version from wh_perspective_cursors where perspective = $1 and model_key = $2",
    )
    .bind(TOTALS)
    .bind(stream)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
    .unwrap_or(0);
    assert_eq!(cursor, 3, "the cut COMMIT (model, cursor) was committed");

    // Catching up again applies nothing: the cursor is past every event.
    let again = bounded(rt.catch_up(TOTALS, StreamId::from(stream)))
        .await
        .expect("the relayed pool works again");
    assert!(again.is_none(), "nothing applied twice: {again:?}");
    let check = bounded(ledger::fresh_fold(&db.pool, TOTALS, stream, fold_totals))
        .await
        .unwrap();
    assert!(check.matches(), "{check}");
}

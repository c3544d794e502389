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
    bounded_within(BOUND, f).await
}

/// `f`, which must finish within `bound`.
pub(crate) async fn bounded_within<F: std::future::Future>(bound: Duration, f: F) -> F::Output {
    tokio::time::timeout(bound, f)
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
        outbound: false,
    }
}

/// Options for tests: a small pool, a 2 s lease and fast heartbeats and
/// rescans, so take-overs and rebalances happen within a test's bound.
pub(crate) fn fast_options() -> whizbang_postgres::PostgresOptions {
    whizbang_postgres::PostgresOptions::default()
        .pool_size(6)
        .lease_duration(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(100))
        .rescan_interval(Duration::from_millis(100))
}

/// The backend on the database of `pool` (a `#[sqlx::test]` database).
pub(crate) async fn backend(
    pool: &sqlx::PgPool,
    options: whizbang_postgres::PostgresOptions,
) -> whizbang_postgres::Postgres {
    bounded(whizbang_postgres::Postgres::connect_with_options(
        (*pool.connect_options()).clone(),
        options,
    ))
    .await
    .expect("connects to the test database (is PostgreSQL running at DATABASE_URL?)")
}

/// Polls `check` every 20 ms until it returns `Some`, within [`BOUND`].
pub(crate) async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(BOUND, what, check).await
}

/// Polls `check` every 20 ms until it returns `Some`, within `bound`.
pub(crate) async fn eventually_within<T, F, Fut>(bound: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {bound:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ends a test's runtime and its backend cleanly: the in-process runner is
/// resumed (paused work holds the runtime), the runtime dropped, and the
/// backend closed once its runner released its leases, so the test database
/// has no session left when the harness drops it.
pub(crate) async fn shut_down(runtime: whizbang_core::Runtime, pg: whizbang_postgres::Postgres) {
    runtime.runner().resume();
    bounded(runtime.wait_idle()).await;
    drop(runtime);
    bounded(pg.close()).await;
}

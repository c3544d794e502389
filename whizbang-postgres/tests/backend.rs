//! The backend in one call: connecting (and its errors), migrating from
//! several processes at once, and a runtime on `Postgres` end to end.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use support::{backend, bounded, fast_options};
use uuid::Uuid;
use whizbang_core::{
    perspective, receptor, Command, Context, Event, Receptor, Registry, Result, Runtime,
    SyncFilter, SyncOutcome,
};
use whizbang_postgres::{Error, Postgres, PostgresOptions};

#[tokio::test]
async fn an_invalid_url_is_a_connect_error_that_names_it() {
    let err = Postgres::connect("mysql://nope")
        .await
        .expect_err("not a PostgreSQL URL");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("mysql://nope"), "{message}");
    assert!(
        message.contains("check that the server is running"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreachable_server_fails_at_once_with_the_url_redacted() {
    let err = bounded(Postgres::connect("postgres://app:hunter2@127.0.0.1:1/app"))
        .await
        .expect_err("nothing listens on port 1");
    let message = err.to_string();
    assert!(
        message.contains("could not connect to PostgreSQL at postgres://app:***@127.0.0.1:1/app"),
        "{message}"
    );
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    let source = std::error::Error::source(&err).expect("the socket error is the source");
    assert!(
        matches!(
            source.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Io(_))
        ),
        "{source:?}"
    );
}

#[test]
fn runner_concurrency_stays_below_the_pool() {
    let default = PostgresOptions::default();
    assert_eq!(default.pool_size, 10);
    assert_eq!(default.effective_runner_concurrency(), 4);
    // 16 catch-ups on a pool of 10 would each hold a claim connection and
    // wait for a read connection: clamped to (10 - 1) / 2.
    let asked = PostgresOptions::default().runner_concurrency(16);
    assert_eq!(asked.effective_runner_concurrency(), 4);
    let big = PostgresOptions::default()
        .pool_size(40)
        .runner_concurrency(16);
    assert_eq!(big.effective_runner_concurrency(), 16);
    let tiny = PostgresOptions::default().pool_size(0);
    assert_eq!(tiny.pool_size, 2);
    assert_eq!(tiny.effective_runner_concurrency(), 1);
    let lease = PostgresOptions::default().lease_duration(Duration::from_secs(9));
    assert_eq!(lease.heartbeat_interval, Duration::from_secs(3));
    let slow = lease.heartbeat_interval(Duration::from_secs(60));
    assert!(slow.heartbeat_interval < slow.lease_duration);
}

#[sqlx::test(migrations = false)]
async fn several_processes_migrating_at_once_all_succeed(pool: PgPool) {
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(backend(&pool, PostgresOptions::default().pool_size(2)).await);
    }
    let mut running = tokio::task::JoinSet::new();
    for pg in backends {
        running.spawn(async move {
            let migrated = pg.migrate().await;
            (pg, migrated)
        });
    }
    while let Some(done) = bounded(running.join_next()).await {
        let (pg, migrated) = done.expect("joined");
        migrated.expect("every concurrent migrate succeeds");
        pg.close().await;
    }
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("select version, success from _sqlx_migrations order by version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let embedded: Vec<(i64, bool)> = whizbang_postgres::MIGRATOR
        .iter()
        .map(|m| (m.version, true))
        .collect();
    assert_eq!(applied, embedded, "every embedded migration applied once");
}

// ---- end to end -----------------------------------------------------------------------

#[derive(Command, Serialize, Deserialize)]
#[command(output = Uuid)]
struct PlaceOrder {
    total: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_backend.order_placed")]
struct OrderPlaced {
    #[stream_key]
    id: Uuid,
    total: u64,
}

#[derive(Default)]
struct Orders;

#[receptor]
impl Receptor<PlaceOrder> for Orders {
    async fn handle(&self, cmd: PlaceOrder, cx: &mut Context) -> Result<Uuid> {
        let id = Uuid::now_v7();
        cx.emit(OrderPlaced {
            id,
            total: cmd.total,
        })?;
        Ok(id)
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct OrderView {
    total: u64,
}

struct OrderViews;

#[perspective(model = OrderView, name = "pg_backend.orders")]
impl OrderViews {
    fn placed(m: &mut OrderView, e: &OrderPlaced) {
        m.total = e.total;
    }
}

fn registry() -> Arc<Registry> {
    Arc::new(
        Registry::builder()
            .receptors_of::<Orders>()
            .perspective::<OrderViews>()
            .build()
            .unwrap(),
    )
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn one_call_plugs_in_postgres_and_the_runner_applies_what_is_sent(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let instance = pg.instance_id();
    let rt = Runtime::builder()
        .registry(registry())
        .backend(pg.clone())
        .build()
        .unwrap();
    // The in-process runner applies nothing: what applies is the
    // partitioned runner, which finds the events in the database.
    rt.runner().pause();
    let scope = rt.scope();
    let sent = bounded(scope.send_and_sync_with(
        PlaceOrder { total: 42 },
        SyncFilter::current_scope().with_timeout(Duration::from_secs(8)),
    ))
    .await
    .unwrap();
    assert!(sent.is_synced(), "{:?}", sent.results);
    let id = sent.into_output();
    let (view, version) = bounded(rt.lens::<OrderViews>().get_versioned(id.into()))
        .await
        .unwrap()
        .expect("the runner stored the model");
    assert_eq!((view.total, version), (42, 1));

    // A plain send, then an open-ended wait from a fresh awaiter: it waits
    // for everything appended before it began, which the runner applies.
    let second = bounded(scope.send(PlaceOrder { total: 7 })).await.unwrap();
    let all = bounded(
        rt.sync_awaiter()
            .wait::<OrderViews>(SyncFilter::all().with_timeout(Duration::from_secs(5))),
    )
    .await
    .unwrap();
    assert_eq!(all.outcome, SyncOutcome::Synced, "{all:?}");
    let (view, _) = bounded(rt.lens::<OrderViews>().get_versioned(second.into()))
        .await
        .unwrap()
        .expect("applied before the wait ended");
    assert_eq!(view.total, 7);
    bounded(scope.complete()).await.unwrap();
    drop(scope);

    // A frozen process's open claim transaction is ended by the server
    // after one lease: the pool's sessions carry the timeout.
    let timeout: String =
        sqlx::query_scalar("select current_setting('idle_in_transaction_session_timeout')")
            .fetch_one(pg.pool())
            .await
            .unwrap();
    assert_eq!(timeout, "2s");

    // The instance heartbeats and holds every partition of the perspective.
    let held: i64 = sqlx::query_scalar(
        "select count(*) from wh_partition_leases where owner = $1 and perspective = 'pg_backend.orders'",
    )
    .bind(instance)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(held, 16);

    // Dropping the runtime stops the runner, which releases its leases.
    // (Resumed first: a paused in-process runner's queued work holds the
    // runtime's engine until it runs.)
    rt.runner().resume();
    bounded(rt.wait_idle()).await;
    drop(rt);
    support::eventually("the dropped runtime's runner released its leases", || {
        let pool = pool.clone();
        async move {
            let held: i64 =
                sqlx::query_scalar("select count(*) from wh_partition_leases where owner = $1")
                    .bind(instance)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (held == 0).then_some(())
        }
    })
    .await;
    bounded(pg.close()).await;
}

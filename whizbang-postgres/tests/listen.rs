//! Wake-ups across processes: a waiter in one runtime is woken by the
//! NOTIFY of a commit made by another runtime's runner, and after its LISTEN
//! connection is killed every waiter re-asks once it is back.
//!
//! The waits here re-ask on their own only after 60 s, far beyond their
//! timeout: only a wake-up can end them `Synced` in time.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use support::{backend, bounded, eventually, fast_options, shut_down};
use uuid::Uuid;
use whizbang_core::sync::PerspectiveSyncOptions;
use whizbang_core::{
    perspective, receptor, Command, Context, Event, Receptor, Registry, Result, Runtime,
    SyncFilter, SyncOutcome,
};
use whizbang_postgres::Postgres;

#[derive(Command, Serialize, Deserialize)]
#[command(output = ())]
struct Credit {
    account: Uuid,
    cents: i64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_listen.credited")]
struct Credited {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

#[derive(Default)]
struct Cashier;

#[receptor]
impl Receptor<Credit> for Cashier {
    async fn handle(&self, cmd: Credit, cx: &mut Context) -> Result<()> {
        cx.emit(Credited {
            account: cmd.account,
            cents: cmd.cents,
        })?;
        Ok(())
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Total {
    cents: i64,
}

struct Totals;

#[perspective(model = Total, name = "pg_listen.totals")]
impl Totals {
    fn credited(t: &mut Total, e: &Credited) {
        t.cents += e.cents;
    }
}

fn registry() -> Arc<Registry> {
    Arc::new(
        Registry::builder()
            .receptors_of::<Cashier>()
            .perspective::<Totals>()
            .build()
            .unwrap(),
    )
}

/// A runtime on `pg` that applies nothing itself: its in-process runner is
/// paused (and `pg`'s runner is off when the options say so).
fn runtime(pg: &Postgres) -> Runtime {
    let rt = Runtime::builder()
        .registry(registry())
        .backend(pg.clone())
        .build()
        .unwrap();
    rt.runner().pause();
    rt
}

/// A wait on `account`'s stream that re-asks on its own only after 60 s.
fn wait_on(account: Uuid) -> PerspectiveSyncOptions {
    SyncFilter::for_stream(account)
        .with_timeout(Duration::from_secs(8))
        .reask_backoff(Duration::from_secs(60), Duration::from_secs(60))
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_waiter_is_woken_by_the_notify_of_another_runtimes_runner(pool: PgPool) {
    // A only appends and waits; B runs the runner.
    let a_pg = backend(&pool, fast_options().runner(false)).await;
    let a = runtime(&a_pg);
    let b_pg = backend(&pool, fast_options()).await;
    let b_instance = b_pg.instance_id();
    let b = runtime(&b_pg);

    let account = Uuid::now_v7();
    let scope = a.scope();
    let sent = bounded(
        scope.send_and_sync_with(
            Credit { account, cents: 3 },
            SyncFilter::current_scope()
                .with_timeout(Duration::from_secs(8))
                .reask_backoff(Duration::from_secs(60), Duration::from_secs(60)),
        ),
    )
    .await
    .unwrap();
    assert!(sent.is_synced(), "{:?}", sent.results);
    bounded(scope.complete()).await.unwrap();

    // The same through a plain awaiter on the stream.
    bounded(a.scope().send(Credit { account, cents: 4 }))
        .await
        .unwrap();
    let waited = bounded(a.sync_awaiter().wait::<Totals>(wait_on(account)))
        .await
        .unwrap();
    assert_eq!(waited.outcome, SyncOutcome::Synced, "{waited:?}");
    let (total, _) = bounded(a.lens::<Totals>().get_versioned(account.into()))
        .await
        .unwrap()
        .expect("B's runner stored the model");
    assert_eq!(total.cents, 7);
    // Nothing in A ran the runner: A holds no lease.
    let held: i64 =
        sqlx::query_scalar("select count(*) from wh_partition_leases where owner <> $1")
            .bind(b_instance)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(held, 0);
    drop(scope);
    shut_down(a, a_pg).await;
    shut_down(b, b_pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn after_the_listen_connection_is_killed_waiters_re_ask_and_end_synced(pool: PgPool) {
    let pg = backend(&pool, fast_options().runner(false)).await;
    let listen_name = format!("whizbang listen {}", pg.instance_id().simple());
    let a = runtime(&pg);
    let account = Uuid::now_v7();
    bounded(a.scope().send(Credit { account, cents: 5 }))
        .await
        .unwrap();

    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.sync_awaiter().wait::<Totals>(wait_on(account)).await })
    };
    // Let the wait ask once and find the event pending.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The cursor moves without a NOTIFY (as if the notification were lost).
    sqlx::query(
        "insert into wh_perspective_cursors (perspective, model_key, version)
         values ('pg_listen.totals', $1, 1)",
    )
    .bind(account)
    .execute(&pool)
    .await
    .unwrap();

    // Kill A's LISTEN connection: the backend reconnects and every waiter re-asks.
    let pid: i32 = sqlx::query_scalar(
        "select pid from pg_stat_activity where application_name = $1 and datname = current_database()",
    )
    .bind(&listen_name)
    .fetch_one(&pool)
    .await
    .expect("A's LISTEN connection is open and named");
    let killed: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(killed);

    let waited = bounded(waiter).await.unwrap().unwrap();
    assert_eq!(waited.outcome, SyncOutcome::Synced, "{waited:?}");
    eventually("A listens again on a new connection", || {
        let (pool, listen_name) = (pool.clone(), listen_name.clone());
        async move {
            let pids: Vec<i32> =
                sqlx::query_scalar("select pid from pg_stat_activity where application_name = $1")
                    .bind(&listen_name)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            (pids.len() == 1 && pids[0] != pid).then_some(())
        }
    })
    .await;
    shut_down(a, pg).await;
}

//! Sync strategies on PostgreSQL: the partitioned runner holds a batch
//! perspective's work until n events are pending and applies them in one
//! run; a scheduled perspective's wait waits for the run or triggers it
//! and says which; the status reports lag and last sync; the runner
//! records each perspective's strategy for the operator tool.
//!
//! Each test builds its runtime on a registry of its own perspective.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use support::{backend, bounded, fast_options, shut_down};
use uuid::Uuid;
use whizbang_core::{
    perspective, receptor, Command, Context, Event, PerspectiveSyncOptions, Receptor, Registry,
    Result, Runtime, StrategyRun, SyncFilter, SyncOutcome,
};
use whizbang_postgres::Postgres;

#[derive(Command, Serialize, Deserialize)]
#[command(output = ())]
struct Deposit {
    account: Uuid,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_strategies.deposited")]
struct Deposited {
    #[stream_key]
    account: Uuid,
}

#[derive(Default)]
struct Teller;

#[receptor]
impl Receptor<Deposit> for Teller {
    async fn handle(&self, cmd: Deposit, cx: &mut Context) -> Result<()> {
        cx.emit(Deposited {
            account: cmd.account,
        })?;
        Ok(())
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Tally {
    n: u64,
}

/// Runs at 5 pending; the hour bound never fires within a test.
struct Batched;
#[perspective(model = Tally, name = "pg_strategies.batched", strategy = batch(5, "1h"))]
impl Batched {
    fn deposited(t: &mut Tally, _: &Deposited) {
        t.n += 1;
    }
}

struct Hourly;
#[perspective(model = Tally, name = "pg_strategies.hourly", strategy = scheduled("1h"))]
impl Hourly {
    fn deposited(t: &mut Tally, _: &Deposited) {
        t.n += 1;
    }
}

fn runtime_of<P: whizbang_core::Perspective>(pg: &Postgres) -> Runtime {
    let registry = Registry::builder()
        .receptors_of::<Teller>()
        .perspective::<P>()
        .build()
        .unwrap();
    Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .unwrap()
}

async fn deposit(rt: &Runtime, account: Uuid) {
    let scope = rt.scope();
    bounded(scope.send(Deposit { account })).await.unwrap();
    bounded(scope.complete()).await.unwrap();
}

fn short() -> PerspectiveSyncOptions {
    PerspectiveSyncOptions::new(SyncFilter::all()).timeout(Duration::from_millis(200))
}

async fn declared(pool: &PgPool, perspective: &str) -> Option<String> {
    sqlx::query_scalar("select strategy from wh_perspective_strategies where perspective = $1")
        .bind(perspective)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn the_partitioned_runner_holds_a_batch_until_n_then_applies_it(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<Batched>(&pg);
    // Only the partitioned runner applies.
    rt.runner().pause();
    let accounts: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for account in &accounts[..4] {
        deposit(&rt, *account).await;
    }
    let held = bounded(rt.sync_awaiter().wait::<Batched>(short()))
        .await
        .unwrap();
    assert_eq!(held.outcome, SyncOutcome::TimedOut);
    assert_eq!(held.run, StrategyRun::NextRun);
    let status = bounded(rt.perspective_status::<Batched>()).await.unwrap();
    assert_eq!(
        (status.strategy.as_str(), status.lag_events),
        ("batch(5, 1h)", 4)
    );
    assert!(status.lag > Duration::ZERO);
    let applied: i64 = sqlx::query_scalar(
        "select count(*) from wh_perspective_cursors where perspective = 'pg_strategies.batched'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(applied, 0, "nothing applied below the batch size");

    deposit(&rt, accounts[4]).await;
    let synced = bounded(
        rt.sync_awaiter()
            .wait::<Batched>(PerspectiveSyncOptions::new(SyncFilter::all())),
    )
    .await
    .unwrap();
    assert_eq!(synced.outcome, SyncOutcome::Synced);
    assert_eq!(synced.run, StrategyRun::NextRun);
    for account in &accounts {
        let (tally, _) = rt
            .lens::<Batched>()
            .get_versioned((*account).into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tally.n, 1);
    }
    let status = bounded(rt.perspective_status::<Batched>()).await.unwrap();
    assert_eq!((status.lag_events, status.failed_cursors), (0, 0));
    assert!(status.last_sync.is_some());
    assert_eq!(
        declared(&pool, "pg_strategies.batched").await.as_deref(),
        Some("batch(5, 1h)")
    );
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_wait_on_a_scheduled_perspective_waits_or_triggers_and_says_which(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<Hourly>(&pg);
    let account = Uuid::now_v7();
    deposit(&rt, account).await;
    let waited = bounded(rt.sync_awaiter().wait::<Hourly>(short()))
        .await
        .unwrap();
    assert_eq!(waited.outcome, SyncOutcome::TimedOut);
    assert_eq!(waited.run, StrategyRun::NextRun);
    assert!(rt
        .lens::<Hourly>()
        .get_versioned(account.into())
        .await
        .unwrap()
        .is_none());

    let triggered = bounded(rt.sync_awaiter().wait::<Hourly>(short().trigger(true)))
        .await
        .unwrap();
    assert_eq!(triggered.outcome, SyncOutcome::Synced);
    assert_eq!(triggered.run, StrategyRun::Triggered);
    let (tally, _) = rt
        .lens::<Hourly>()
        .get_versioned(account.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tally.n, 1);
    let status = bounded(rt.perspective_status::<Hourly>()).await.unwrap();
    assert_eq!(status.strategy, "scheduled(1h)");
    assert_eq!(status.lag_events, 0);
    assert!(status.last_sync.is_some());
    assert_eq!(
        declared(&pool, "pg_strategies.hourly").await.as_deref(),
        Some("scheduled(1h)")
    );
    shut_down(rt, pg).await;
}

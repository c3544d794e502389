//! The bulk apply hook on PostgreSQL: the partitioned runner hands a batch
//! perspective's hook the models of each batch it commits, and the hook
//! upserts them into a table of the user's own in one statement; a hook
//! that fails commits nothing, the cursor fails with its message and
//! waiters hear it, and a retry after the cause is fixed applies the model.
//!
//! Each test builds its runtime on a registry of its own perspective.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use support::{backend, bounded, fast_options, shut_down};
use uuid::Uuid;
use whizbang_core::perspective::BulkBatch;
use whizbang_core::{
    perspective, Event, Perspective, PerspectiveSyncOptions, Registry, Runtime, SyncFilter,
    SyncOutcome,
};
use whizbang_postgres::Postgres;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_bulk.deposited")]
struct Deposited {
    #[stream_key]
    account: Uuid,
    amount: i64,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Balance {
    total: i64,
}

/// The pool of the one test whose hook writes to its database.
static SINK: Mutex<Option<PgPool>> = Mutex::new(None);
/// Models per call of the upserting hook.
static UPSERTS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct SinkError(String);
impl std::fmt::Display for SinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs at 6 pending; the hour bound never fires in a test.
struct Balances;
#[perspective(
    model = Balance,
    name = "pg_bulk.balances",
    strategy = batch(6, "1h"),
    bulk = upsert
)]
impl Balances {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.total += e.amount;
    }

    /// One statement for the whole batch, into the user's own table.
    async fn upsert(batch: BulkBatch<'_, Balance>) -> Result<(), SinkError> {
        let pool = SINK.lock().unwrap().clone();
        let pool = pool.ok_or_else(|| SinkError("no sink".into()))?;
        let (ids, totals): (Vec<Uuid>, Vec<i64>) = batch
            .iter()
            .filter_map(|i| i.model().map(|m| (Uuid::from(i.key()), m.total)))
            .unzip();
        sqlx::query(
            "insert into balances (account, total) select * from unnest($1::uuid[], $2::int8[]) \
             on conflict (account) do update set total = excluded.total",
        )
        .bind(&ids)
        .bind(&totals)
        .execute(&pool)
        .await
        .map_err(|e| SinkError(e.to_string()))?;
        UPSERTS.lock().unwrap().push(batch.len());
        Ok(())
    }
}

/// Accounts whose presence in a batch makes the refusing hook fail.
static REFUSED: Mutex<Vec<Uuid>> = Mutex::new(Vec::new());
static SEEN: Mutex<Vec<(Uuid, i64)>> = Mutex::new(Vec::new());

struct Guarded;
#[perspective(model = Balance, name = "pg_bulk.guarded", bulk = refuse)]
impl Guarded {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.total += e.amount;
    }

    async fn refuse(batch: BulkBatch<'_, Balance>) -> Result<(), SinkError> {
        for item in &batch {
            let account = Uuid::from(item.key());
            if REFUSED.lock().unwrap().contains(&account) {
                return Err(SinkError(format!("the sink refused {account}")));
            }
        }
        let mut seen = SEEN.lock().unwrap();
        for item in &batch {
            seen.push((item.key().into(), item.model().map_or(-1, |m| m.total)));
        }
        Ok(())
    }
}

fn runtime_of<P: Perspective>(pg: &Postgres) -> Runtime {
    let registry = Registry::builder().perspective::<P>().build().unwrap();
    Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .unwrap()
}

async fn deposit(rt: &Runtime, account: Uuid, amount: i64) {
    let scope = rt.scope();
    bounded(scope.publish(Deposited { account, amount }))
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn the_runner_hands_each_batch_to_the_hook_which_upserts_it_in_one_statement(pool: PgPool) {
    sqlx::query("create table balances (account uuid primary key, total int8 not null)")
        .execute(&pool)
        .await
        .unwrap();
    *SINK.lock().unwrap() = Some(pool.clone());
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<Balances>(&pg);
    // Only the partitioned runner applies.
    rt.runner().pause();
    let accounts: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    deposit(&rt, accounts[0], 5).await;
    deposit(&rt, accounts[1], 7).await;
    deposit(&rt, accounts[0], 10).await;
    deposit(&rt, accounts[2], 1).await;
    deposit(&rt, accounts[3], 2).await;
    assert!(
        UPSERTS.lock().unwrap().is_empty(),
        "ran below the batch size"
    );
    deposit(&rt, accounts[3], 3).await;
    let synced = bounded(
        rt.sync_awaiter()
            .wait::<Balances>(PerspectiveSyncOptions::new(SyncFilter::all())),
    )
    .await
    .unwrap();
    assert_eq!(synced.outcome, SyncOutcome::Synced);

    // Every model the run committed is in the user's table, as committed.
    let rows: Vec<(Uuid, i64)> =
        sqlx::query_as("select account, total from balances order by account")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut expected = vec![
        (accounts[0], 15),
        (accounts[1], 7),
        (accounts[2], 1),
        (accounts[3], 5),
    ];
    expected.sort();
    assert_eq!(rows, expected);
    for (account, total) in &expected {
        let model = rt.lens::<Balances>().get_by_key(*account).await.unwrap();
        assert_eq!(model.map(|b| b.total), Some(*total));
    }
    // One batch of six events: the runner's chunks of it, four models in all.
    let upserts = UPSERTS.lock().unwrap().clone();
    assert_eq!(upserts.iter().sum::<usize>(), 4, "{upserts:?}");
    assert!(upserts.len() < 6, "one call per event: {upserts:?}");
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_failing_hook_fails_the_cursor_and_a_retry_after_the_fix_applies_it(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<Guarded>(&pg);
    let (bad, good) = (Uuid::now_v7(), Uuid::now_v7());
    REFUSED.lock().unwrap().push(bad);
    deposit(&rt, bad, 9).await;
    deposit(&rt, good, 4).await;
    let waited = bounded(
        rt.sync_awaiter()
            .wait::<Guarded>(PerspectiveSyncOptions::new(SyncFilter::for_stream(bad))),
    )
    .await
    .unwrap();
    let SyncOutcome::Failed {
        version, message, ..
    } = waited.outcome
    else {
        panic!("expected a failure, got {:?}", waited.outcome);
    };
    assert_eq!(version, 1);
    assert!(message.contains("the sink refused"), "{message}");
    // Nothing of the refused model was committed; the other one was.
    assert_eq!(rt.lens::<Guarded>().get_by_key(bad).await.unwrap(), None);
    let ok = bounded(
        rt.sync_awaiter()
            .wait::<Guarded>(PerspectiveSyncOptions::new(SyncFilter::for_stream(good))),
    )
    .await
    .unwrap();
    // Synced, or applied before the wait began.
    assert!(ok.is_synced(), "{:?}", ok.outcome);
    assert_eq!(
        rt.lens::<Guarded>()
            .get_by_key(good)
            .await
            .unwrap()
            .map(|b| b.total),
        Some(4)
    );
    let cursor_failed: bool = sqlx::query_scalar(
        "select failure_message is not null from wh_perspective_cursors \
         where perspective = 'pg_bulk.guarded' and model_key = $1",
    )
    .bind(bad)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(cursor_failed);

    // The cause fixed, a retry applies it, through the hook.
    REFUSED.lock().unwrap().retain(|a| *a != bad);
    let report = bounded(rt.retry_perspective::<Guarded>(bad)).await.unwrap();
    assert_eq!(report.version, 1);
    assert_eq!(
        rt.lens::<Guarded>()
            .get_by_key(bad)
            .await
            .unwrap()
            .map(|b| b.total),
        Some(9)
    );
    assert!(SEEN.lock().unwrap().contains(&(bad, 9)));
    shut_down(rt, pg).await;
}

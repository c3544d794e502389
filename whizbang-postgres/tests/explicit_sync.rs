//! Explicit sync on a real database: many named streams in one batch,
//! everything behind the head, full refolds, failures per stream, a run
//! dropped mid-way, tombstones on every write path (batch, single unit,
//! inline in the append), and the sync log with its retention.
//!
//! Events are appended to the event store directly (the partitioned runner
//! is off), so nothing but the explicit sync applies them, except for the
//! inline perspective, which the append applies.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::{Connection as _, PgConnection, PgPool};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use support::{backend, bounded, event, eventually, fast_options};
use uuid::Uuid;
use whizbang_core::backend::{StreamAppend, SyncRunOutcome};
use whizbang_core::{
    perspective, receptor, Command, Context, Error, Event, ExpectedVersion, LensQuery, Perspective,
    Receptor, Registry, Result, Runtime, StreamId, SyncItem, SyncMode, Tombstone,
};
use whizbang_postgres::{Postgres, PostgresOptions};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_xsync.added")]
struct Added {
    #[stream_key]
    id: Uuid,
    n: i64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_xsync.closed")]
struct Closed {
    #[stream_key]
    id: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Total {
    sum: i64,
    count: u64,
}

struct Totals;
#[perspective(model = Total, name = "pg_xsync.totals")]
impl Totals {
    fn added(t: &mut Total, e: &Added) {
        t.sum += e.n;
        t.count += 1;
    }
}

static FACTOR: AtomicI64 = AtomicI64::new(1);

struct Scaled;
#[perspective(model = Total, name = "pg_xsync.scaled")]
impl Scaled {
    fn added(t: &mut Total, e: &Added) {
        t.sum += e.n * FACTOR.load(Ordering::SeqCst);
        t.count += 1;
    }
}

static UNLUCKY: AtomicBool = AtomicBool::new(true);

struct Picky;
#[perspective(model = Total, name = "pg_xsync.picky")]
impl Picky {
    fn added(t: &mut Total, e: &Added) -> std::result::Result<(), String> {
        if e.n == 13 && UNLUCKY.load(Ordering::SeqCst) {
            return Err("13 is unlucky".into());
        }
        t.sum += e.n;
        t.count += 1;
        Ok(())
    }
}

struct Carts;
#[perspective(model = Total, name = "pg_xsync.carts")]
impl Carts {
    fn added(t: &mut Total, e: &Added) {
        t.sum += e.n;
        t.count += 1;
    }
    fn closed(_: &mut Total, _: &Closed) -> Tombstone {
        Tombstone
    }
}

// ---- an inline perspective with a tombstone, fed by a command --------------------------

#[derive(Command, Serialize, Deserialize)]
#[command(output = ())]
struct Shop {
    cart: Uuid,
    close: bool,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_xsync.shopped")]
struct Shopped {
    #[stream_key]
    cart: Uuid,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_xsync.checked_out")]
struct CheckedOut {
    #[stream_key]
    cart: Uuid,
}

#[derive(Default)]
struct Shopper;

#[receptor]
impl Receptor<Shop> for Shopper {
    async fn handle(&self, cmd: Shop, cx: &mut Context) -> Result<()> {
        if cmd.close {
            cx.emit(CheckedOut { cart: cmd.cart })?;
        } else {
            cx.emit(Shopped { cart: cmd.cart })?;
        }
        Ok(())
    }
}

struct InlineCarts;
#[perspective(model = Total, name = "pg_xsync.inline_carts", mode = inline)]
impl InlineCarts {
    fn shopped(t: &mut Total, _: &Shopped) {
        t.count += 1;
    }
    fn checked_out(_: &mut Total, _: &CheckedOut) -> Tombstone {
        Tombstone
    }
}

// ---- helpers --------------------------------------------------------------------------

fn registry_with<P: Perspective>() -> Registry {
    Registry::builder().perspective::<P>().build().unwrap()
}

/// A runtime on `pg` (built with the partitioned runner off).
fn runtime(pg: &Postgres, registry: Registry) -> Runtime {
    Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .unwrap()
}

async fn setup<P: Perspective>(pool: &PgPool) -> (Postgres, Runtime) {
    setup_with::<P>(pool, fast_options().runner(false)).await
}

async fn setup_with<P: Perspective>(
    pool: &PgPool,
    options: PostgresOptions,
) -> (Postgres, Runtime) {
    let pg = backend(pool, options).await;
    let rt = runtime(&pg, registry_with::<P>());
    (pg, rt)
}

async fn add(rt: &Runtime, stream: StreamId, amounts: &[i64]) {
    let events = amounts
        .iter()
        .map(|n| {
            event(
                stream,
                "pg_xsync.added",
                serde_json::json!({ "id": stream, "n": n }),
            )
        })
        .collect();
    append(rt, stream, events).await;
}

async fn close(rt: &Runtime, stream: StreamId) {
    let closed = event(
        stream,
        "pg_xsync.closed",
        serde_json::json!({ "id": stream }),
    );
    append(rt, stream, vec![closed]).await;
}

async fn append(rt: &Runtime, stream: StreamId, events: Vec<whizbang_core::backend::NewEvent>) {
    bounded(rt.event_store().append(vec![StreamAppend {
        stream_id: stream,
        expected: ExpectedVersion::Any,
        events,
    }]))
    .await
    .unwrap();
}

async fn model<P: Perspective<Model = Total>>(rt: &Runtime, stream: StreamId) -> Option<Total> {
    bounded(rt.lens::<P>().get(stream)).await.unwrap()
}

/// The stored cursor version and whether a model row exists, read in SQL.
async fn stored(pool: &PgPool, perspective: &str, stream: StreamId) -> (Option<i64>, bool) {
    let cursor: Option<i64> = sqlx::query_scalar(
        "select version from wh_perspective_cursors where perspective = $1 and model_key = $2",
    )
    .bind(perspective)
    .bind(stream.as_uuid())
    .fetch_optional(pool)
    .await
    .unwrap();
    let row: bool = sqlx::query_scalar(
        "select exists (select 1 from wh_perspective_rows
                         where perspective = $1 and model_key = $2)",
    )
    .bind(perspective)
    .bind(stream.as_uuid())
    .fetch_one(pool)
    .await
    .unwrap();
    (cursor, row)
}

fn applied(item: Option<&SyncItem>) -> (u64, u64, bool) {
    match item {
        Some(SyncItem::Applied {
            from, to, deleted, ..
        }) => (*from, *to, *deleted),
        other => panic!("expected an applied item, got {other:?}"),
    }
}

fn sorted(n: usize) -> Vec<StreamId> {
    let mut ids: Vec<StreamId> = (0..n).map(|_| StreamId::new()).collect();
    ids.sort();
    ids
}

// ---- tests ----------------------------------------------------------------------------

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn many_named_streams_are_one_batch_with_per_stream_results(pool: PgPool) {
    let (pg, rt) = setup::<Totals>(&pool).await;
    let streams = sorted(40);
    for (i, s) in streams.iter().enumerate() {
        add(&rt, *s, &[i as i64, 1]).await;
    }
    let idle = StreamId::new();
    let mut named = streams.clone();
    named.push(idle);

    let report = bounded(rt.sync::<Totals>().streams(named).chunk_size(16).run())
        .await
        .unwrap();
    assert_eq!(report.mode, SyncMode::Streams);
    let t = report.totals();
    assert_eq!((t.applied, t.skipped, t.failed), (40, 1, 0), "{report:?}");
    for (i, s) in streams.iter().enumerate() {
        assert_eq!(applied(report.item(*s)), (0, 2, false));
        assert_eq!(
            model::<Totals>(&rt, *s).await,
            Some(Total {
                sum: i as i64 + 1,
                count: 2
            })
        );
    }
    // Exactly once: a second run applies nothing.
    let again = bounded(rt.sync::<Totals>().streams(streams.clone()).run())
        .await
        .unwrap();
    assert_eq!(again.totals().skipped, 40);
    assert_eq!(model::<Totals>(&rt, streams[3]).await.unwrap().count, 2);
    bounded(pg.close()).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn all_visits_only_the_streams_behind_the_head(pool: PgPool) {
    let (pg, rt) = setup::<Totals>(&pool).await;
    let [a, b, c] = <[StreamId; 3]>::try_from(sorted(3)).unwrap();
    add(&rt, a, &[1]).await;
    add(&rt, b, &[2]).await;
    let noted = event(c, "pg_xsync.unhandled", serde_json::json!({}));
    append(&rt, c, vec![noted]).await;

    let first = bounded(rt.sync::<Totals>().all().run()).await.unwrap();
    assert_eq!(first.mode, SyncMode::All);
    assert_eq!(first.totals().applied, 2);
    assert!(first.item(c).is_none(), "no handled event on c");

    add(&rt, b, &[3]).await;
    let second = bounded(rt.sync::<Totals>().all().run()).await.unwrap();
    assert_eq!(second.items.len(), 1, "only b is behind: {second:?}");
    assert_eq!(applied(second.item(b)), (1, 2, false));
    assert_eq!(model::<Totals>(&rt, b).await.unwrap().sum, 5);
    bounded(pg.close()).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_failing_stream_is_reported_and_the_rest_of_the_batch_commits(pool: PgPool) {
    let (pg, rt) = setup::<Picky>(&pool).await;
    let [good, bad, later] = <[StreamId; 3]>::try_from(sorted(3)).unwrap();
    add(&rt, good, &[1]).await;
    add(&rt, bad, &[2, 13, 4]).await;
    add(&rt, later, &[5]).await;

    let report = bounded(rt.sync::<Picky>().all().run()).await.unwrap();
    assert_eq!(applied(report.item(good)), (0, 1, false));
    assert_eq!(applied(report.item(later)), (0, 1, false));
    match report.item(bad) {
        Some(SyncItem::Failed { error, .. }) => {
            assert!(
                matches!(**error, Error::PerspectiveFailed { version: 2, .. }),
                "{error}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(model::<Picky>(&rt, bad).await.unwrap().sum, 2);

    // Reported failed again, not retried, until asked.
    UNLUCKY.store(false, Ordering::SeqCst);
    let again = bounded(rt.sync::<Picky>().all().run()).await.unwrap();
    assert!(matches!(again.item(bad), Some(SyncItem::Failed { .. })));
    let retried = bounded(rt.sync::<Picky>().all().retry_failed().run())
        .await
        .unwrap();
    assert_eq!(applied(retried.item(bad)), (1, 3, false));
    assert_eq!(model::<Picky>(&rt, bad).await.unwrap().sum, 19);
    bounded(pg.close()).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn full_replaces_every_model_with_a_fresh_fold(pool: PgPool) {
    let (pg, rt) = setup::<Scaled>(&pool).await;
    let streams = sorted(5);
    for s in &streams {
        add(&rt, *s, &[1, 2]).await;
    }
    bounded(rt.sync::<Scaled>().all().run()).await.unwrap();
    FACTOR.store(100, Ordering::SeqCst);
    let full = bounded(rt.sync::<Scaled>().all().full().chunk_size(2).run())
        .await
        .unwrap();
    assert_eq!(full.mode, SyncMode::FullAll, "{full:?}");
    assert_eq!(
        full.totals().applied,
        5,
        "every stream, caught up or not: {full:?}"
    );
    assert_eq!(model::<Scaled>(&rt, streams[0]).await.unwrap().sum, 300);
    FACTOR.store(1000, Ordering::SeqCst);
    let named = bounded(rt.sync::<Scaled>().streams(streams.clone()).full().run())
        .await
        .unwrap();
    assert_eq!(named.mode, SyncMode::FullStreams);
    assert_eq!(named.totals().applied, 5, "{named:?}");
    for s in &streams {
        assert_eq!(applied(named.item(*s)), (2, 2, false));
        assert_eq!(
            model::<Scaled>(&rt, *s).await,
            Some(Total {
                sum: 3000,
                count: 2
            })
        );
    }
    bounded(pg.close()).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_run_dropped_while_a_chunk_waits_leaves_models_old_or_new(pool: PgPool) {
    let (pg, rt) = setup::<Totals>(&pool).await;
    let [first, held, last] = <[StreamId; 3]>::try_from(sorted(3)).unwrap();
    for s in [first, held, last] {
        add(&rt, s, &[1, 1]).await;
    }
    // Create the cursors, then hold the middle one's row lock elsewhere.
    bounded(rt.sync::<Totals>().streams([held]).full().run())
        .await
        .unwrap();
    sqlx::query("update wh_perspective_cursors set version = 0 where model_key = $1")
        .bind(held.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("delete from wh_perspective_rows where model_key = $1")
        .bind(held.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    let mut locker = PgConnection::connect_with(&pool.connect_options())
        .await
        .unwrap();
    let mut tx = locker.begin().await.unwrap();
    sqlx::query("select 1 from wh_perspective_cursors where model_key = $1 for update")
        .bind(held.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    {
        let run = rt
            .sync::<Totals>()
            .streams([first, held, last])
            .chunk_size(1)
            .run();
        tokio::pin!(run);
        let rt2 = rt.clone();
        tokio::select! {
            _ = &mut run => panic!("the run cannot finish while a cursor is locked"),
            () = eventually("the first chunk committed", || {
                let rt = rt2.clone();
                async move { model::<Totals>(&rt, first).await.map(|_| ()) }
            }) => {}
        }
        // Dropped here, while the second chunk waits for its lock.
    }
    tx.rollback().await.unwrap();
    assert_eq!(
        stored(&pool, "pg_xsync.totals", first).await,
        (Some(2), true)
    );
    assert_eq!(
        stored(&pool, "pg_xsync.totals", held).await,
        (Some(0), false)
    );
    assert!(!stored(&pool, "pg_xsync.totals", last).await.1);
    let rest = bounded(rt.sync::<Totals>().streams([first, held, last]).run())
        .await
        .unwrap();
    assert_eq!(rest.totals().applied, 2, "{rest:?}");
    assert_eq!(model::<Totals>(&rt, last).await.unwrap().sum, 2);
    bounded(pg.close()).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_tombstone_deletes_the_row_and_keeps_the_cursor_on_every_write_path(pool: PgPool) {
    let (pg, rt) = setup::<Carts>(&pool).await;
    let streams = sorted(3);
    for s in &streams {
        add(&rt, *s, &[2]).await;
    }
    bounded(rt.sync::<Carts>().all().run()).await.unwrap();
    let (batched, alone, kept) = (streams[0], streams[1], streams[2]);
    close(&rt, batched).await;
    close(&rt, alone).await;

    // The batch path (claim_many): the cascade case of an explicit sync.
    let report = bounded(rt.sync::<Carts>().streams([batched, kept]).run())
        .await
        .unwrap();
    assert_eq!(applied(report.item(batched)), (1, 2, true));
    assert_eq!(
        stored(&pool, "pg_xsync.carts", batched).await,
        (Some(2), false)
    );
    assert_eq!(model::<Carts>(&rt, batched).await, None);

    // The single-unit path (the engine's catch-up).
    let caught = bounded(rt.catch_up("pg_xsync.carts", alone)).await.unwrap();
    assert_eq!(caught.unwrap().version, 2);
    assert_eq!(
        stored(&pool, "pg_xsync.carts", alone).await,
        (Some(2), false)
    );

    let listed = bounded(rt.lens::<Carts>().list(whizbang_core::ListQuery::all()))
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|m| m.id).collect::<Vec<_>>(), vec![kept]);

    // Nothing re-applied; a later event starts a fresh model.
    let again = bounded(rt.sync::<Carts>().streams([batched]).run())
        .await
        .unwrap();
    assert!(matches!(
        again.item(batched),
        Some(SyncItem::Skipped { .. })
    ));
    add(&rt, batched, &[7]).await;
    bounded(rt.sync::<Carts>().streams([batched]).run())
        .await
        .unwrap();
    assert_eq!(
        model::<Carts>(&rt, batched).await,
        Some(Total { sum: 7, count: 1 })
    );
    bounded(pg.close()).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn an_inline_tombstone_deletes_the_row_in_the_appends_transaction(pool: PgPool) {
    let pg = backend(&pool, fast_options().runner(false)).await;
    let registry = Registry::builder()
        .receptors_of::<Shopper>()
        .perspective::<InlineCarts>()
        .build()
        .unwrap();
    let rt = runtime(&pg, registry);
    let cart = Uuid::now_v7();
    for close in [false, false] {
        let scope = rt.scope();
        bounded(scope.send(Shop { cart, close })).await.unwrap();
        bounded(scope.complete()).await.unwrap();
    }
    assert_eq!(
        model::<InlineCarts>(&rt, cart.into()).await.unwrap().count,
        2
    );
    let scope = rt.scope();
    bounded(scope.send(Shop { cart, close: true }))
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
    assert_eq!(model::<InlineCarts>(&rt, cart.into()).await, None);
    assert_eq!(
        stored(&pool, "pg_xsync.inline_carts", cart.into()).await,
        (Some(3), false)
    );
    bounded(pg.close()).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn every_run_is_logged_and_the_log_is_pruned_to_its_retention(pool: PgPool) {
    let (pg, rt) = setup_with::<Totals>(&pool, fast_options().runner(false).sync_log_keep(2)).await;
    let [a, b] = <[StreamId; 2]>::try_from(sorted(2)).unwrap();
    add(&rt, a, &[1]).await;
    bounded(rt.sync::<Totals>().streams([a, b]).run())
        .await
        .unwrap();
    let log = bounded(rt.sync_log(10)).await.unwrap();
    assert_eq!(log.len(), 1);
    let run = &log[0];
    assert_eq!(run.perspective, "pg_xsync.totals");
    assert_eq!(run.mode, "streams");
    assert_eq!((run.applied, run.skipped, run.failed), (1, 1, 0));
    assert_eq!(run.outcome, SyncRunOutcome::Succeeded);
    assert!(run.target.starts_with("2 streams: "), "{}", run.target);

    bounded(rt.sync::<Totals>().all().run()).await.unwrap();
    bounded(rt.sync::<Totals>().streams([b]).full().run())
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("select count(*) from wh_sync_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 2, "pruned to the last 2 runs");
    let modes: Vec<String> = bounded(rt.sync_log(10))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.mode)
        .collect();
    assert_eq!(modes, ["full_streams", "all"]);
    bounded(pg.close()).await;
}

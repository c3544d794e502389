//! Keyed (multi-stream) perspectives on a real database: the keyed
//! contracts of the conformance suite, customer totals folded from many
//! order streams by concurrent appenders and two runtimes (each event
//! exactly once, equal to a fresh fold), a wait in one process ended by
//! another process's apply, a catch-up dropped mid-way, and numbering
//! that takes no lock on the events it numbers.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{
    backend, bounded, bounded_within, eventually, eventually_within, fast_options, shut_down,
};
use uuid::Uuid;
use whizbang_core::backend::conformance::Stores;
use whizbang_core::backend::{EventStore, PerspectiveStore, SyncBackend, UnappliedQuery};
use whizbang_core::perspective::KEYED_CURSOR;
use whizbang_core::{
    perspective, Event, IntoModelKey, Perspective, Registry, Runtime, SyncFilter, SyncOutcome,
};
use whizbang_postgres::{PgEventStore, PgPerspectiveStore, PgSyncBackend, Postgres};

// ---- messages and the keyed perspective ------------------------------------------------

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_keyed.order_placed")]
struct OrderPlaced {
    #[stream_key]
    order: Uuid,
    customer: Uuid,
    amount: i64,
    seq: u64,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Totals {
    amount: i64,
    seqs: Vec<u64>,
}

struct CustomerTotals;

#[perspective(model = Totals, key = customer, name = "pg_keyed.customer_totals")]
impl CustomerTotals {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.amount += e.amount;
        t.seqs.push(e.seq);
    }
}

/// While set, an order of 13 fails to apply in [`PickyTotals`].
static UNLUCKY: AtomicBool = AtomicBool::new(true);

struct PickyTotals;

#[perspective(model = Totals, key = customer, name = "pg_keyed.picky_totals")]
impl PickyTotals {
    fn placed(t: &mut Totals, e: &OrderPlaced) -> std::result::Result<(), String> {
        if e.amount == 13 && UNLUCKY.load(Ordering::SeqCst) {
            return Err("unlucky amount".into());
        }
        t.amount += e.amount;
        t.seqs.push(e.seq);
        Ok(())
    }
}

// ---- helpers ----------------------------------------------------------------------------

/// The bound of a step that waits for events to become safe to consume:
/// the snapshot horizon is the server's, so any transaction open on it (a
/// `CREATE DATABASE` of a parallel test) holds them back meanwhile.
const HORIZON: Duration = Duration::from_secs(60);

/// A wait's timeout, within [`HORIZON`].
const WAIT: Duration = Duration::from_secs(50);

fn registry() -> Arc<Registry> {
    Arc::new(
        Registry::builder()
            .perspective::<CustomerTotals>()
            .build()
            .unwrap(),
    )
}

fn runtime(pg: &Postgres) -> Runtime {
    Runtime::builder()
        .registry(registry())
        .backend(pg.clone())
        .build()
        .unwrap()
}

/// Publishes `n` orders of `customers` in turn, each on a new order stream.
async fn publish_orders(rt: &Runtime, customers: &[Uuid], n: u64, first_seq: u64) {
    for i in 0..n {
        let scope = rt.scope();
        let customer = customers[usize::try_from(i).unwrap() % customers.len()];
        bounded(scope.publish(OrderPlaced {
            order: Uuid::now_v7(),
            customer,
            amount: i64::try_from(i).unwrap() + 1,
            seq: first_seq + i,
        }))
        .await
        .unwrap();
        bounded(scope.complete()).await.unwrap();
    }
}

/// Every customer's totals folded afresh from the stored events, in the
/// feed's order.
async fn fresh_fold(pool: &PgPool) -> BTreeMap<Uuid, Totals> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select data::text from wh_events where event_type = 'pg_keyed.order_placed'
          order by tx_id, global_position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: BTreeMap<Uuid, Totals> = BTreeMap::new();
    for (data,) in rows {
        let e: OrderPlaced = serde_json::from_str(&data).unwrap();
        let t = out.entry(e.customer).or_default();
        t.amount += e.amount;
        t.seqs.push(e.seq);
    }
    out
}

async fn totals(rt: &Runtime, customer: Uuid) -> Option<Totals> {
    rt.lens::<CustomerTotals>()
        .get_by_key(customer)
        .await
        .unwrap()
}

fn stores(pool: &PgPool) -> Stores {
    Stores::new(
        PgEventStore::new(pool.clone()),
        PgPerspectiveStore::new(pool.clone()),
    )
    .with_sync_backend(PgSyncBackend::new(pool.clone()))
}

/// Waits until every customer's totals (as `rt` reads them) equal a
/// fresh fold of the stored events.
async fn totals_become_a_fresh_fold(pool: &PgPool, rt: &Runtime) {
    let want = fresh_fold(pool).await;
    eventually_within(HORIZON, "the totals equal a fresh fold", || {
        let want = &want;
        async move {
            for (c, t) in want {
                if totals(rt, *c).await.as_ref() != Some(t) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
}

// ---- tests ------------------------------------------------------------------------------

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn the_keyed_contracts_hold_on_postgres(pool: PgPool) {
    let s = stores(&pool);
    whizbang_core::backend::conformance::keyed::run_all(&move || {
        let s = s.clone();
        async move { s }
    })
    .await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn concurrent_appenders_and_two_runtimes_fold_each_event_once_into_the_customer_totals(
    pool: PgPool,
) {
    let (pg_a, pg_b) = (
        backend(&pool, fast_options()).await,
        backend(&pool, fast_options()).await,
    );
    let (a, b) = (runtime(&pg_a), runtime(&pg_b));
    let customers: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let mut appenders = Vec::new();
    for w in 0..4u64 {
        let rt = if w % 2 == 0 { a.clone() } else { b.clone() };
        let customers = customers.clone();
        appenders.push(tokio::spawn(async move {
            publish_orders(&rt, &customers, 15, w * 1000).await;
        }));
    }
    for t in appenders {
        bounded(t).await.unwrap();
    }
    let expected = fresh_fold(&pool).await;
    assert_eq!(expected.values().map(|t| t.seqs.len()).sum::<usize>(), 60);
    for customer in &customers {
        let want = expected[customer].clone();
        let got = eventually_within(
            HORIZON,
            "the customer's totals include every order",
            || async {
                totals(&a, *customer)
                    .await
                    .filter(|t| t.seqs.len() >= want.seqs.len())
            },
        )
        .await;
        let mut seqs = got.seqs.clone();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), got.seqs.len(), "an order was applied twice");
        assert_eq!(got, want, "the totals are a fresh fold, in global order");
    }
    // The cursor stands on the last numbered event; every event is numbered.
    let numbered: i64 = sqlx::query_scalar("select count(*) from wh_event_order")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(numbered, 60);
    let cursor = PgPerspectiveStore::new(pool.clone())
        .checkpoint(CustomerTotals::NAME, KEYED_CURSOR)
        .await
        .unwrap();
    assert_eq!(cursor.version, 60);
    assert!(cursor.failure.is_none());
    shut_down(a, pg_a).await;
    shut_down(b, pg_b).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_wait_on_a_keyed_perspective_ends_synced_when_another_process_applies_the_event(
    pool: PgPool,
) {
    // The writer applies nothing itself: its runners are off and paused.
    let writer_pg = backend(&pool, fast_options().runner(false)).await;
    let writer = runtime(&writer_pg);
    writer.runner().pause();
    let customer = Uuid::now_v7();
    let scope = writer.scope();
    bounded(scope.publish(OrderPlaced {
        order: Uuid::now_v7(),
        customer,
        amount: 42,
        seq: 1,
    }))
    .await
    .unwrap();
    let awaiter = scope.sync_awaiter();
    let waited = bounded(awaiter.wait::<CustomerTotals>(
        SyncFilter::current_scope().with_timeout(Duration::from_millis(300)),
    ))
    .await
    .unwrap();
    assert_eq!(
        waited.outcome,
        SyncOutcome::TimedOut,
        "nobody applies keyed perspectives yet"
    );
    assert_eq!(totals(&writer, customer).await, None);

    // Another process's runner applies it; the writer's wait ends Synced
    // and its read sees the totals.
    let applier_pg = backend(&pool, fast_options()).await;
    let applier = runtime(&applier_pg);
    let waited = bounded_within(
        HORIZON,
        awaiter.wait::<CustomerTotals>(SyncFilter::current_scope().with_timeout(WAIT)),
    )
    .await
    .unwrap();
    assert_eq!(waited.outcome, SyncOutcome::Synced);
    let got = totals(&writer, customer).await.unwrap();
    assert_eq!(got.amount, 42);
    bounded(scope.complete()).await.unwrap();
    shut_down(applier, applier_pg).await;
    shut_down(writer, writer_pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_keyed_catch_up_dropped_mid_way_commits_nothing(pool: PgPool) {
    let pg = backend(&pool, fast_options().runner(false)).await;
    let rt = runtime(&pg);
    rt.runner().pause();
    let customer = Uuid::now_v7();
    publish_orders(&rt, &[customer], 5, 0).await;

    // Every event numbered first (the horizon is the cluster's: another
    // test's open transaction may hold it back a while).
    let events = PgEventStore::new(pool.clone());
    eventually(
        "the orders take their place in the global order",
        || async {
            let page = events.read_global(0, 100).await.unwrap().unwrap();
            (page.len() == 5).then_some(())
        },
    )
    .await;
    // Hold the customer's model: the catch-up reads the events, then waits
    // on the model's lock inside its transaction.
    let store = PgPerspectiveStore::new(pool.clone());
    let held = bounded(store.claim(CustomerTotals::NAME, customer.to_model_key()))
        .await
        .unwrap();
    let dropped = tokio::time::timeout(
        Duration::from_millis(300),
        rt.catch_up(CustomerTotals::NAME, KEYED_CURSOR),
    )
    .await;
    assert!(dropped.is_err(), "the catch-up was waiting for the lock");
    drop(held);
    let cursor = store
        .checkpoint(CustomerTotals::NAME, KEYED_CURSOR)
        .await
        .unwrap();
    assert_eq!(cursor.version, 0, "the dropped catch-up committed nothing");
    assert_eq!(totals(&rt, customer).await, None);

    bounded(rt.catch_up(CustomerTotals::NAME, KEYED_CURSOR))
        .await
        .unwrap();
    assert_eq!(
        totals(&rt, customer).await,
        fresh_fold(&pool).await.remove(&customer)
    );
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_failed_keyed_cursor_is_reported_to_waits_and_a_retry_applies_the_rest(pool: PgPool) {
    // The partitioned runner on: it reads again events the cluster's
    // snapshot horizon held back (the in-process runner is a fast path).
    let pg = backend(&pool, fast_options()).await;
    let rt = Runtime::builder()
        .registry(Arc::new(
            Registry::builder()
                .perspective::<PickyTotals>()
                .build()
                .unwrap(),
        ))
        .backend(pg.clone())
        .build()
        .unwrap();
    let customer = Uuid::now_v7();
    let scope = rt.scope();
    for (seq, amount) in [(1, 1), (2, 13), (3, 3)] {
        bounded(scope.publish(OrderPlaced {
            order: Uuid::now_v7(),
            customer,
            amount,
            seq,
        }))
        .await
        .unwrap();
    }
    let waited = bounded_within(
        HORIZON,
        scope
            .sync_awaiter()
            .wait::<PickyTotals>(SyncFilter::current_scope().with_timeout(WAIT)),
    )
    .await
    .unwrap();
    let SyncOutcome::Failed { message, .. } = &waited.outcome else {
        panic!("expected Failed, got {:?}", waited.outcome);
    };
    assert!(message.contains("unlucky amount"), "{message}");
    bounded(scope.complete()).await.unwrap();
    bounded(rt.wait_idle()).await;
    let lens = rt.lens::<PickyTotals>();
    assert_eq!(
        lens.get_by_key(customer).await.unwrap().unwrap().seqs,
        vec![1],
        "what applied before the failing event is committed, nothing after it"
    );
    let store = PgPerspectiveStore::new(pool.clone());
    let cursor = store
        .checkpoint(PickyTotals::NAME, KEYED_CURSOR)
        .await
        .unwrap();
    assert!(cursor.failure.is_some(), "the keyed cursor is failed");

    // The cause fixed, a retry applies the failing event and the rest.
    UNLUCKY.store(false, Ordering::SeqCst);
    bounded(rt.retry_perspective::<PickyTotals>(KEYED_CURSOR))
        .await
        .unwrap();
    let got = lens.get_by_key(customer).await.unwrap().unwrap();
    assert_eq!((got.amount, got.seqs), (17, vec![1, 2, 3]));
    let cursor = store
        .checkpoint(PickyTotals::NAME, KEYED_CURSOR)
        .await
        .unwrap();
    assert!(cursor.failure.is_none());
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn an_open_ended_wait_on_a_keyed_perspective_lists_only_its_backlog(pool: PgPool) {
    let pg = backend(&pool, fast_options().runner(false)).await;
    let rt = runtime(&pg);
    rt.runner().pause();
    let customer = Uuid::now_v7();
    publish_orders(&rt, &[customer], 3, 0).await;
    let sync = PgSyncBackend::new(pool.clone());
    let query = UnappliedQuery::new(CustomerTotals::NAME, CustomerTotals::EVENT_TYPES).keyed();
    // Before anything is numbered or applied: all three.
    assert_eq!(bounded(sync.unapplied(&query)).await.unwrap().len(), 3);
    let status = bounded(rt.perspective_status::<CustomerTotals>())
        .await
        .unwrap();
    assert_eq!(
        (status.last_sync, status.lag_events),
        (None, 3),
        "{status:?}"
    );

    // An `all()` wait begun on that backlog ends Synced once another
    // process's runner applies it.
    let awaiter = rt.sync_awaiter();
    let wait = tokio::spawn(async move {
        awaiter
            .wait::<CustomerTotals>(SyncFilter::all().with_timeout(WAIT))
            .await
    });
    let tracker = Arc::clone(rt.sync_tracker());
    eventually("the wait is registered", || {
        let tracker = Arc::clone(&tracker);
        async move { (tracker.waiter_count() > 0).then_some(()) }
    })
    .await;
    let applier_pg = backend(&pool, fast_options()).await;
    let applier = runtime(&applier_pg);
    let waited = bounded_within(HORIZON, wait).await.unwrap().unwrap();
    assert_eq!(waited.outcome, SyncOutcome::Synced);
    assert_eq!(totals(&rt, customer).await.unwrap().seqs.len(), 3);
    assert!(bounded(sync.unapplied(&query)).await.unwrap().is_empty());
    // This process applied nothing; its status still says when the other
    // one last did.
    let status = bounded(rt.perspective_status::<CustomerTotals>())
        .await
        .unwrap();
    assert_eq!(status.lag_events, 0, "{status:?}");
    let last = status
        .last_sync
        .expect("the other process's commits are recorded");
    assert!(last.elapsed().unwrap_or_default() < HORIZON, "{status:?}");
    shut_down(applier, applier_pg).await;
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn numbering_events_takes_no_lock_on_them(pool: PgPool) {
    let pg = backend(&pool, fast_options().runner(false)).await;
    let rt = runtime(&pg);
    rt.runner().pause();
    let customer = Uuid::now_v7();
    publish_orders(&rt, &[customer], 3, 0).await;

    // Another transaction holds the stored events' rows FOR UPDATE. The
    // sequencer reads them and numbers them all the same: numbering writes
    // nothing to wh_events (a foreign key's check would take a KEY SHARE lock
    // on each, and wait for this transaction).
    let mut holder = pool.begin().await.unwrap();
    let held: Vec<Uuid> = sqlx::query_scalar(
        "select event_id from wh_events where event_type = 'pg_keyed.order_placed' for update",
    )
    .fetch_all(&mut *holder)
    .await
    .unwrap();
    assert_eq!(held.len(), 3);
    let events = PgEventStore::new(pool.clone());
    let page = bounded_within(
        HORIZON,
        eventually_within(HORIZON, "the held events are numbered", || async {
            let page = events.read_global(0, 100).await.unwrap().unwrap();
            (page.len() == 3).then_some(page)
        }),
    )
    .await;
    let mut numbered: Vec<Uuid> = page.iter().map(|e| e.event_id.as_uuid()).collect();
    numbered.sort_unstable();
    let mut held = held;
    held.sort_unstable();
    assert_eq!(numbered, held);
    holder.rollback().await.unwrap();
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn explicit_sync_and_status_of_a_keyed_perspective_follow_its_one_cursor(pool: PgPool) {
    let pg = backend(&pool, fast_options().runner(false)).await;
    let rt = runtime(&pg);
    rt.runner().pause();
    let customers: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    publish_orders(&rt, &customers, 6, 0).await;

    // Another process (its own runtime, nothing tracked) sees the backlog
    // in the status and catches it up with one explicit sync.
    let other_pg = backend(&pool, fast_options().runner(false)).await;
    let other = runtime(&other_pg);
    other.runner().pause();
    let status = bounded(other.perspective_status::<CustomerTotals>())
        .await
        .unwrap();
    assert_eq!(
        (status.lag_events, status.failed_cursors),
        (6, 0),
        "{status:?}"
    );
    assert!(status.lag > Duration::ZERO, "{status:?}");
    // The horizon is the server's: an explicit sync applies what is safe
    // to number now, so repeat until everything is applied.
    let want = fresh_fold(&pool).await;
    let deadline = tokio::time::Instant::now() + HORIZON;
    let mut applied = 0;
    loop {
        let report = bounded(other.sync::<CustomerTotals>().all().run())
            .await
            .unwrap();
        assert_eq!(report.totals().failed, 0, "{report:?}");
        applied += report.totals().applied;
        let mut got = BTreeMap::new();
        for c in want.keys() {
            if let Some(t) = totals(&other, *c).await {
                got.insert(*c, t);
            }
        }
        if got == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "explicit syncs did not apply every order within {HORIZON:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(applied, 6, "one item per order stream, each applied once");
    let (per_stream,): (i64,) = sqlx::query_as(
        "select count(*) from wh_perspective_rows r
          where r.perspective = $1
            and exists (select 1 from wh_events e where e.stream_id = r.model_key)",
    )
    .bind(CustomerTotals::NAME)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(per_stream, 0, "no model is keyed by an order stream");
    let status = bounded(other.perspective_status::<CustomerTotals>())
        .await
        .unwrap();
    assert_eq!(status.lag_events, 0, "{status:?}");
    let full = bounded(other.sync::<CustomerTotals>().all().full().run()).await;
    assert!(
        matches!(&full, Err(whizbang_core::Error::InvalidInput(m)) if m.contains("rebuild")),
        "{full:?}"
    );
    shut_down(other, other_pg).await;
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_keyed_perspective_rebuilt_while_orders_flow_equals_a_fresh_fold(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime(&pg);
    let customers: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    publish_orders(&rt, &customers, 40, 0).await;
    let writer = {
        let rt = rt.clone();
        let customers = customers.clone();
        tokio::spawn(async move { publish_orders(&rt, &customers, 40, 1_000).await })
    };
    let options = whizbang_core::perspective::rebuild::RebuildOptions::default().fence_below(5);
    let report = bounded_within(HORIZON, rt.rebuild_named(CustomerTotals::NAME, options))
        .await
        .unwrap();
    bounded_within(HORIZON, writer).await.unwrap();
    // How much the shadow folded depends on the server's horizon (another
    // test's open transaction holds numbering back); what it did not fold
    // the live runner applies after the swap, from the swapped cursor.
    eprintln!("{report:?}");
    // Once the runner caught up: every customer's totals equal a fresh
    // fold, and no model is keyed by an order stream.
    totals_become_a_fresh_fold(&pool, &rt).await;
    let (per_stream, shadow): (i64, i64) = sqlx::query_as(
        "select (select count(*) from wh_perspective_rows r
                  where r.perspective = $1
                    and exists (select 1 from wh_events e where e.stream_id = r.model_key)),
                (select count(*) from wh_perspective_cursors where perspective = $1 || '~rebuild')",
    )
    .bind(CustomerTotals::NAME)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((per_stream, shadow), (0, 0));
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_keyed_rebuild_swaps_on_a_pool_the_blocked_applies_fill(pool: PgPool) {
    // Two connections: the fence's, and the runner's apply that waits on
    // it. The last step reads inside the fence, so it needs no third.
    let pg = backend(&pool, fast_options().pool_size(2)).await;
    let rt = runtime(&pg);
    let writer_pg = backend(&pool, fast_options().runner(false)).await;
    let writer_rt = runtime(&writer_pg);
    writer_rt.runner().pause();
    let customers: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    publish_orders(&writer_rt, &customers, 30, 0).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (rt, customers, stop) = (writer_rt.clone(), customers.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut seq = 1_000;
            while !stop.load(Ordering::SeqCst) {
                publish_orders(&rt, &customers, 3, seq).await;
                seq += 3;
            }
        })
    };
    for _ in 0..3 {
        let options =
            whizbang_core::perspective::rebuild::RebuildOptions::default().fence_below(1_000);
        bounded_within(
            Duration::from_secs(20),
            rt.rebuild_named(CustomerTotals::NAME, options),
        )
        .await
        .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    bounded_within(HORIZON, writer).await.unwrap();
    totals_become_a_fresh_fold(&pool, &rt).await;
    shut_down(writer_rt, writer_pg).await;
    shut_down(rt, pg).await;
}

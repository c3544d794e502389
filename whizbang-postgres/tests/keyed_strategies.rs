//! Keyed (multi-stream) perspectives with sync strategies on a real
//! database: a batch perspective is held until n events are pending, by the
//! partitioned runner and by the in-process runner alike, then applied in
//! one run; a scheduled one applies on its interval; a wait on held events
//! times out without trigger and is synced with it, the model reflecting
//! the writes; an open-ended wait is not synced while anything it covers is
//! held, another process's events included; an explicit sync catches a
//! held keyed perspective up.
//!
//! Each test builds its runtime on a registry of its own perspective.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use support::{backend, bounded, bounded_within, fast_options, shut_down};
use uuid::Uuid;
use whizbang_core::{
    perspective, Event, Perspective, PerspectiveSyncOptions, Registry, Runtime, StrategyRun,
    SyncFilter, SyncItem, SyncOutcome,
};
use whizbang_postgres::Postgres;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_keyed_strategies.order_placed")]
struct OrderPlaced {
    #[stream_key]
    order: Uuid,
    customer: Uuid,
    amount: i64,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Totals {
    orders: u64,
    amount: i64,
}

/// Applies at 3 pending; the hour bound never fires within a test.
struct Batched;
#[perspective(model = Totals, key = customer, name = "pg_keyed_strategies.batched", strategy = batch(3, "1h"))]
impl Batched {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.orders += 1;
        t.amount += e.amount;
    }
}

/// Runs hourly: never by itself within a test.
struct Hourly;
#[perspective(model = Totals, key = customer, name = "pg_keyed_strategies.hourly", strategy = scheduled("1h"))]
impl Hourly {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.orders += 1;
        t.amount += e.amount;
    }
}

/// Runs every 200 ms.
struct Often;
#[perspective(model = Totals, key = customer, name = "pg_keyed_strategies.often", strategy = scheduled("200ms"))]
impl Often {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.orders += 1;
        t.amount += e.amount;
    }
}

/// Every amount folded into a customer's model, in order.
#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Amounts(Vec<i64>);

/// Applies at 4 pending or after 50 ms: runs often while orders flow.
struct Quick;
#[perspective(model = Amounts, key = customer, name = "pg_keyed_strategies.quick", strategy = batch(4, "50ms"))]
impl Quick {
    fn placed(t: &mut Amounts, e: &OrderPlaced) {
        t.0.push(e.amount);
    }
}

/// The bound of a step that waits for events to become safe to consume:
/// the snapshot horizon is the server's, so any transaction open on it (a
/// `CREATE DATABASE` of a parallel test) holds them back meanwhile.
const HORIZON: Duration = Duration::from_secs(60);

/// A wait's timeout, within [`HORIZON`].
const WAIT: Duration = Duration::from_secs(50);

fn runtime_of<P: Perspective>(pg: &Postgres) -> Runtime {
    let registry = Registry::builder().perspective::<P>().build().unwrap();
    Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .unwrap()
}

/// Places one order of `amount` for `customer` on a new order stream.
async fn place(rt: &Runtime, customer: Uuid, amount: i64) {
    let scope = rt.scope();
    bounded(scope.publish(OrderPlaced {
        order: Uuid::now_v7(),
        customer,
        amount,
    }))
    .await
    .unwrap();
    bounded(scope.complete()).await.unwrap();
}

async fn totals<P: Perspective<Model = Totals>>(rt: &Runtime, customer: Uuid) -> Option<Totals> {
    bounded(rt.lens::<P>().get_by_key(customer)).await.unwrap()
}

/// The keyed cursor's row, when the perspective ever committed.
async fn cursor(pool: &PgPool, perspective: &str) -> Option<i64> {
    sqlx::query_scalar(
        "select version from wh_perspective_cursors
          where perspective = $1 and model_key = '00000000-0000-0000-0000-000000000000'",
    )
    .bind(perspective)
    .fetch_optional(pool)
    .await
    .unwrap()
}

fn short(filter: SyncFilter) -> PerspectiveSyncOptions {
    PerspectiveSyncOptions::new(filter).timeout(Duration::from_millis(200))
}

fn long(filter: SyncFilter) -> PerspectiveSyncOptions {
    PerspectiveSyncOptions::new(filter).timeout(WAIT)
}

/// One test at a time. The in-process runner catches a keyed perspective
/// up on what is numbered in the global order when its run starts and,
/// without the partitioned runner's re-reads, picks up events the horizon
/// held back (behind another test's open transaction on this server) only
/// at its next signal; and one test holds the horizon on purpose.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds two orders, then applies three in one run once the third arrives:
/// the runtime given applies through one runner only.
async fn batch_holds_then_applies(rt: &Runtime, pool: &PgPool) {
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    place(rt, ada, 1).await;
    place(rt, bob, 2).await;
    let held = bounded(rt.sync_awaiter().wait::<Batched>(short(SyncFilter::all())))
        .await
        .unwrap();
    assert_eq!(held.outcome, SyncOutcome::TimedOut);
    assert_eq!(held.run, StrategyRun::NextRun);
    assert_eq!(held.events_awaited, 2);
    assert_eq!(totals::<Batched>(rt, ada).await, None);
    assert_eq!(cursor(pool, Batched::NAME).await, None, "nothing applied");
    let status = bounded(rt.perspective_status::<Batched>()).await.unwrap();
    assert_eq!(
        (status.strategy.as_str(), status.lag_events),
        ("batch(3, 1h)", 2)
    );

    place(rt, ada, 4).await;
    let synced = bounded_within(
        HORIZON,
        rt.sync_awaiter().wait::<Batched>(long(SyncFilter::all())),
    )
    .await
    .unwrap();
    assert_eq!(synced.outcome, SyncOutcome::Synced);
    assert_eq!(synced.run, StrategyRun::NextRun);
    assert_eq!(
        totals::<Batched>(rt, ada).await,
        Some(Totals {
            orders: 2,
            amount: 5
        })
    );
    assert_eq!(
        totals::<Batched>(rt, bob).await,
        Some(Totals {
            orders: 1,
            amount: 2
        })
    );
    assert_eq!(cursor(pool, Batched::NAME).await, Some(3), "one run of 3");
    let status = bounded(rt.perspective_status::<Batched>()).await.unwrap();
    assert_eq!((status.lag_events, status.failed_cursors), (0, 0));
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn the_partitioned_runner_holds_a_keyed_batch_until_n_then_applies_it(pool: PgPool) {
    let _serial = SERIAL.lock().await;
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<Batched>(&pg);
    // Only the partitioned runner applies.
    rt.runner().pause();
    batch_holds_then_applies(&rt, &pool).await;
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn the_in_process_runner_holds_a_keyed_batch_until_n_then_applies_it(pool: PgPool) {
    let _serial = SERIAL.lock().await;
    let pg = backend(&pool, fast_options().runner(false)).await;
    let rt = runtime_of::<Batched>(&pg);
    batch_holds_then_applies(&rt, &pool).await;
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_scheduled_keyed_perspective_applies_on_its_interval(pool: PgPool) {
    let _serial = SERIAL.lock().await;
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<Often>(&pg);
    let ada = Uuid::now_v7();
    place(&rt, ada, 3).await;
    place(&rt, ada, 4).await;
    // No trigger: only the schedule applies them.
    let synced = bounded_within(
        HORIZON,
        rt.sync_awaiter().wait::<Often>(long(SyncFilter::all())),
    )
    .await
    .unwrap();
    assert_eq!(
        (synced.outcome, synced.run),
        (SyncOutcome::Synced, StrategyRun::NextRun)
    );
    assert_eq!(
        totals::<Often>(&rt, ada).await,
        Some(Totals {
            orders: 2,
            amount: 7
        })
    );
    assert_eq!(cursor(&pool, Often::NAME).await, Some(2));
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_wait_on_held_keyed_events_times_out_without_trigger_and_is_synced_with_it(pool: PgPool) {
    let _serial = SERIAL.lock().await;
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<Hourly>(&pg);
    let ada = Uuid::now_v7();
    let scope = rt.scope();
    let order = Uuid::now_v7();
    bounded(scope.publish(OrderPlaced {
        order,
        customer: ada,
        amount: 7,
    }))
    .await
    .unwrap();
    bounded(scope.complete()).await.unwrap();
    for filter in [SyncFilter::for_stream(order), SyncFilter::all()] {
        let waited = bounded(rt.sync_awaiter().wait::<Hourly>(short(filter.clone())))
            .await
            .unwrap();
        assert_eq!(waited.outcome, SyncOutcome::TimedOut, "{filter:?}");
        assert_eq!(waited.run, StrategyRun::NextRun);
        assert_eq!(waited.events_awaited, 1);
    }
    assert_eq!(totals::<Hourly>(&rt, ada).await, None);

    let triggered = bounded_within(
        HORIZON,
        rt.sync_awaiter()
            .wait::<Hourly>(long(SyncFilter::for_stream(order)).trigger(true)),
    )
    .await
    .unwrap();
    assert_eq!(
        (triggered.outcome, triggered.run),
        (SyncOutcome::Synced, StrategyRun::Triggered)
    );
    assert_eq!(
        totals::<Hourly>(&rt, ada).await,
        Some(Totals {
            orders: 1,
            amount: 7
        })
    );
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn an_open_ended_wait_is_not_synced_while_anything_it_covers_is_held(pool: PgPool) {
    let _serial = SERIAL.lock().await;
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<Hourly>(&pg);
    // Another process: its own backend, its own runtime and tracker.
    let pg2 = backend(&pool, fast_options()).await;
    let other = runtime_of::<Hourly>(&pg2);
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    place(&rt, ada, 1).await;
    let report = bounded_within(HORIZON, async {
        loop {
            let report = rt.sync::<Hourly>().run().await.unwrap();
            if cursor(&pool, Hourly::NAME).await == Some(1) {
                return report;
            }
            // Not yet safe to consume (the server's horizon): again.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(report.totals().failed, 0);
    assert_eq!(totals::<Hourly>(&rt, ada).await.unwrap().amount, 1);

    // Held: one order placed here, one by the other process.
    place(&rt, ada, 2).await;
    place(&other, bob, 3).await;
    for filter in [
        SyncFilter::all(),
        SyncFilter::for_event_types::<OrderPlaced>(),
    ] {
        for _ in 0..3 {
            let waited = bounded(rt.sync_awaiter().wait::<Hourly>(short(filter.clone())))
                .await
                .unwrap();
            assert_eq!(waited.outcome, SyncOutcome::TimedOut, "{filter:?}");
            assert_eq!(waited.events_awaited, 2, "{filter:?}");
        }
    }
    assert_eq!(totals::<Hourly>(&rt, bob).await, None);
    assert_eq!(totals::<Hourly>(&rt, ada).await.unwrap().amount, 1);

    let synced = bounded_within(
        HORIZON,
        rt.sync_awaiter()
            .wait::<Hourly>(long(SyncFilter::all()).trigger(true)),
    )
    .await
    .unwrap();
    assert_eq!(
        (synced.outcome, synced.run, synced.events_awaited),
        (SyncOutcome::Synced, StrategyRun::Triggered, 2)
    );
    assert_eq!(totals::<Hourly>(&rt, ada).await.unwrap().amount, 3);
    assert_eq!(totals::<Hourly>(&rt, bob).await.unwrap().amount, 3);
    shut_down(other, pg2).await;
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn an_explicit_sync_catches_a_held_keyed_perspective_up(pool: PgPool) {
    let _serial = SERIAL.lock().await;
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<Hourly>(&pg);
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    place(&rt, ada, 1).await;
    place(&rt, bob, 2).await;
    assert_eq!(totals::<Hourly>(&rt, ada).await, None);
    // Until both are safe to consume (the server's horizon), a sync may
    // apply fewer: sync until the cursor passed both.
    let mut applied = Vec::new();
    bounded_within(HORIZON, async {
        while cursor(&pool, Hourly::NAME).await != Some(2) {
            let report = rt.sync::<Hourly>().run().await.unwrap();
            assert_eq!(report.totals().failed, 0);
            applied.extend(report.items);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(applied
        .iter()
        .any(|i| matches!(i, SyncItem::Applied { to: 2, .. })));
    assert_eq!(totals::<Hourly>(&rt, ada).await.unwrap().amount, 1);
    assert_eq!(totals::<Hourly>(&rt, bob).await.unwrap().amount, 2);
    let after = bounded(rt.sync_awaiter().wait::<Hourly>(short(SyncFilter::all())))
        .await
        .unwrap();
    assert_eq!(after.outcome, SyncOutcome::NoPendingEvents);
    let full = rt.sync::<Hourly>().full().run().await;
    assert!(
        matches!(&full, Err(whizbang_core::Error::InvalidInput(m)) if m.contains("keyed")),
        "{full:?}"
    );
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_triggering_wait_runs_again_once_its_events_have_a_place_in_the_global_order(
    pool: PgPool,
) {
    let _serial = SERIAL.lock().await;
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<Hourly>(&pg);
    let ada = Uuid::now_v7();
    // An open transaction with an id holds the horizon: the order placed
    // after it is stored but gets no place in the global order until it ends.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *holder)
        .await
        .unwrap();
    place(&rt, ada, 5).await;
    let awaiter = rt.sync_awaiter();
    let wait = tokio::spawn(async move {
        awaiter
            .wait::<Hourly>(long(SyncFilter::all()).trigger(true))
            .await
    });
    // Registered: its first run (before registering) found nothing to apply.
    let tracker = Arc::clone(rt.sync_tracker());
    support::eventually("the wait is registered", || {
        let tracker = Arc::clone(&tracker);
        async move { (tracker.waiter_count() > 0).then_some(()) }
    })
    .await;
    assert_eq!(cursor(&pool, Hourly::NAME).await, None);
    holder.rollback().await.unwrap();
    // The hourly schedule never runs in a test: only the wait's own runs can.
    let waited = bounded_within(HORIZON, wait).await.unwrap().unwrap();
    assert_eq!(
        (waited.outcome, waited.run),
        (SyncOutcome::Synced, StrategyRun::Triggered)
    );
    assert_eq!(totals::<Hourly>(&rt, ada).await.unwrap().amount, 5);
    shut_down(rt, pg).await;
}

/// Writers in two processes, each waiting for its own order and for
/// everything placed before its wait began, on a keyed batch perspective
/// (some waits triggering): a `Synced` wait always finds the model holding
/// what it awaited, and every order is applied exactly once.
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_synced_wait_on_a_keyed_batch_always_finds_what_it_awaited_in_the_model(pool: PgPool) {
    let _serial = SERIAL.lock().await;
    use std::sync::Mutex;
    let (pg, pg2) = (
        backend(&pool, fast_options()).await,
        backend(&pool, fast_options()).await,
    );
    let runtimes = [runtime_of::<Quick>(&pg), runtime_of::<Quick>(&pg2)];
    let customers: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    // Amounts placed (their scope completed), with their customer.
    let placed: Arc<Mutex<Vec<(Uuid, i64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let rt = runtimes[usize::try_from(w).unwrap() % 2].clone();
        let (customers, placed) = (customers.clone(), Arc::clone(&placed));
        writers.push(tokio::spawn(async move {
            let mut synced = 0;
            for i in 0..12i64 {
                let amount = w * 1000 + i;
                let customer = customers[usize::try_from(amount).unwrap() % customers.len()];
                let scope = rt.scope();
                scope
                    .publish(OrderPlaced {
                        order: Uuid::now_v7(),
                        customer,
                        amount,
                    })
                    .await
                    .unwrap();
                let own = scope
                    .sync_awaiter()
                    .wait::<Quick>(long(SyncFilter::current_scope()).trigger(i % 3 == 0))
                    .await
                    .unwrap();
                if own.outcome == SyncOutcome::Synced {
                    let model = rt.lens::<Quick>().get_by_key(customer).await.unwrap();
                    assert!(
                        model.is_some_and(|m| m.0.contains(&amount)),
                        "synced before the model held order {amount}"
                    );
                    synced += 1;
                }
                scope.complete().await.unwrap();
                placed.lock().unwrap().push((customer, amount));
                let before = placed.lock().unwrap().clone();
                let all = rt
                    .sync_awaiter()
                    .wait::<Quick>(long(SyncFilter::all()).trigger(i % 4 == 1))
                    .await
                    .unwrap();
                if all.outcome == SyncOutcome::Synced {
                    for (customer, amount) in before {
                        let model = rt.lens::<Quick>().get_by_key(customer).await.unwrap();
                        assert!(
                            model.is_some_and(|m| m.0.contains(&amount)),
                            "an all() wait synced before the model held order {amount}"
                        );
                    }
                }
            }
            synced
        }));
    }
    let mut synced = 0;
    for w in writers {
        synced += bounded_within(Duration::from_secs(120), w).await.unwrap();
    }
    assert!(synced > 0, "no wait ended synced");
    let [rt, rt2] = runtimes;
    // Every order applied exactly once.
    let everything = bounded_within(
        HORIZON,
        rt.sync_awaiter()
            .wait::<Quick>(long(SyncFilter::all()).trigger(true)),
    )
    .await
    .unwrap();
    assert!(matches!(
        everything.outcome,
        SyncOutcome::Synced | SyncOutcome::NoPendingEvents
    ));
    let mut all: Vec<i64> = Vec::new();
    for c in &customers {
        all.extend(rt.lens::<Quick>().get_by_key(*c).await.unwrap().unwrap().0);
    }
    all.sort_unstable();
    let mut expected: Vec<i64> = placed.lock().unwrap().iter().map(|(_, a)| *a).collect();
    expected.sort_unstable();
    assert_eq!(all, expected);
    shut_down(rt2, pg2).await;
    shut_down(rt, pg).await;
}

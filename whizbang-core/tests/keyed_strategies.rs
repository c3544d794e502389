//! Keyed (multi-stream) perspectives with sync strategies, in memory: a
//! batch perspective holds its events until n are pending then applies them
//! in one run, a scheduled one applies on its interval, a wait on held events
//! waits for the run (timing out) or triggers it and says which, an
//! open-ended wait is never synced while anything it covers is held, and an
//! explicit sync catches a held perspective up.

mod common;
use common::bounded;

use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::backend::{MemoryEventStore, MemoryPerspectiveStore, PerspectiveStore};
use whizbang_core::perspective::KEYED_CURSOR;
use whizbang_core::{
    perspective, Error, Event, Perspective, PerspectiveSyncOptions, Runtime, StrategyRun,
    SyncFilter, SyncItem, SyncOutcome,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "keyed_strategies.order_placed")]
struct OrderPlaced {
    #[stream_key]
    order: Uuid,
    customer: Uuid,
    amount: u64,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Totals {
    orders: u64,
    amount: u64,
}

/// Applies at 3 pending events; the wait bound is an hour, so only the
/// count makes it run within a test.
struct Batched;
#[perspective(model = Totals, key = customer, name = "keyed_strategies.batched", strategy = batch(3, "1h"))]
impl Batched {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.orders += 1;
        t.amount += e.amount;
    }
}

/// A customer joined: on the customer's own stream, so the stream's id is
/// also the key of the customer's model.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "keyed_strategies.joined")]
struct Joined {
    #[stream_key]
    customer: Uuid,
}

/// Runs hourly: never by itself within a test.
struct Hourly;
#[perspective(model = Totals, key = customer, name = "keyed_strategies.hourly", strategy = scheduled("1h"))]
impl Hourly {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.orders += 1;
        t.amount += e.amount;
    }
    fn joined(t: &mut Totals, _: &Joined) {
        t.amount += 100;
    }
}

/// Runs every 100 ms.
struct Often;
#[perspective(model = Totals, key = customer, name = "keyed_strategies.often", strategy = scheduled("100ms"))]
impl Often {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.orders += 1;
        t.amount += e.amount;
    }
}

/// Applies at 4 pending or after 20 ms: runs often while orders flow.
struct Quick;
#[perspective(model = Seqs, key = customer, name = "keyed_strategies.quick", strategy = batch(4, "20ms"))]
impl Quick {
    fn placed(t: &mut Seqs, e: &OrderPlaced) {
        t.0.push(e.amount);
    }
}

/// Every amount folded into a customer's model, in order.
#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Seqs(Vec<u64>);

/// Places one order of `amount` for `customer` on a new order stream.
async fn place(rt: &Runtime, customer: Uuid, amount: u64) -> Uuid {
    let order = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(OrderPlaced {
            order,
            customer,
            amount,
        })
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
    order
}

async fn totals<P: Perspective<Model = Totals>>(rt: &Runtime, customer: Uuid) -> Option<Totals> {
    rt.lens::<P>().get_by_key(customer).await.unwrap()
}

/// A runtime over in-memory stores, with its perspective store.
fn runtime() -> (Runtime, MemoryPerspectiveStore) {
    let models = MemoryPerspectiveStore::new();
    (over(&MemoryEventStore::new(), &models), models)
}

/// A runtime over these stores.
fn over(events: &MemoryEventStore, models: &MemoryPerspectiveStore) -> Runtime {
    Runtime::builder()
        .event_store(events.clone())
        .perspective_store(models.clone())
        .build()
        .unwrap()
}

async fn join(rt: &Runtime, customer: Uuid) {
    let scope = rt.scope();
    scope.publish(Joined { customer }).await.unwrap();
    bounded(scope.complete()).await.unwrap();
}

async fn cursor<P: Perspective>(models: &MemoryPerspectiveStore) -> u64 {
    models
        .checkpoint(P::NAME, KEYED_CURSOR)
        .await
        .unwrap()
        .version
}

fn short(filter: SyncFilter) -> PerspectiveSyncOptions {
    PerspectiveSyncOptions::new(filter).timeout(Duration::from_millis(50))
}

#[tokio::test]
async fn a_batch_holds_until_n_events_then_applies_them_in_one_run() {
    let (rt, models) = runtime();
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    place(&rt, ada, 1).await;
    place(&rt, bob, 2).await;
    // Two of three: held, whatever waits on them.
    let held = bounded(rt.sync_awaiter().wait::<Batched>(short(SyncFilter::all())))
        .await
        .unwrap();
    assert_eq!(held.outcome, SyncOutcome::TimedOut);
    assert_eq!(held.run, StrategyRun::NextRun);
    assert_eq!(totals::<Batched>(&rt, ada).await, None);
    assert_eq!(cursor::<Batched>(&models).await, 0);
    let status = rt.perspective_status::<Batched>().await.unwrap();
    assert_eq!((status.lag_events, status.failed_cursors), (2, 0));
    assert!(status.last_sync.is_none());

    // The third fills the batch: all three apply in that run.
    place(&rt, ada, 4).await;
    let synced = bounded(
        rt.sync_awaiter()
            .wait::<Batched>(PerspectiveSyncOptions::new(SyncFilter::all())),
    )
    .await
    .unwrap();
    assert_eq!(synced.outcome, SyncOutcome::Synced);
    assert_eq!(synced.run, StrategyRun::NextRun);
    assert_eq!(
        totals::<Batched>(&rt, ada).await,
        Some(Totals {
            orders: 2,
            amount: 5
        })
    );
    assert_eq!(
        totals::<Batched>(&rt, bob).await,
        Some(Totals {
            orders: 1,
            amount: 2
        })
    );
    assert_eq!(cursor::<Batched>(&models).await, 3);
    let status = rt.perspective_status::<Batched>().await.unwrap();
    assert_eq!(status.strategy, "batch(3, 1h)");
    assert_eq!(status.lag_events, 0);
}

#[tokio::test]
async fn an_open_ended_wait_is_not_synced_while_anything_it_covers_is_held() {
    let (rt, _) = runtime();
    let ada = Uuid::now_v7();
    place(&rt, ada, 1).await;
    place(&rt, ada, 2).await;
    for filter in [
        SyncFilter::all(),
        SyncFilter::for_event_types::<OrderPlaced>(),
    ] {
        for _ in 0..3 {
            let waited = bounded(rt.sync_awaiter().wait::<Batched>(short(filter.clone())))
                .await
                .unwrap();

            assert_eq!(waited.outcome, SyncOutcome::TimedOut, "{filter:?}");
            assert_eq!(totals::<Batched>(&rt, ada).await, None);
        }
    }
    let waited = bounded(rt.sync_awaiter().wait::<Hourly>(short(SyncFilter::all())))
        .await
        .unwrap();
    assert_eq!(waited.outcome, SyncOutcome::TimedOut);
    assert_eq!(totals::<Hourly>(&rt, ada).await, None);
}

#[tokio::test]
async fn a_wait_on_held_events_times_out_without_trigger_and_is_synced_with_it() {
    let (rt, _) = runtime();
    let ada = Uuid::now_v7();
    let order = place(&rt, ada, 7).await;
    let waited = bounded(
        rt.sync_awaiter()
            .wait::<Hourly>(short(SyncFilter::for_stream(order))),
    )
    .await
    .unwrap();
    assert_eq!(waited.outcome, SyncOutcome::TimedOut);
    assert_eq!(waited.run, StrategyRun::NextRun);
    assert_eq!(totals::<Hourly>(&rt, ada).await, None);

    let triggered = bounded(
        rt.sync_awaiter().wait::<Hourly>(
            PerspectiveSyncOptions::new(SyncFilter::for_stream(order))
                .timeout(Duration::from_secs(10))
                .trigger(true),
        ),
    )
    .await
    .unwrap();
    assert_eq!(triggered.outcome, SyncOutcome::Synced);
    assert_eq!(triggered.run, StrategyRun::Triggered);
    assert_eq!(
        totals::<Hourly>(&rt, ada).await,
        Some(Totals {
            orders: 1,
            amount: 7
        })
    );
}

#[tokio::test]
async fn an_open_ended_wait_with_trigger_runs_the_held_perspective() {
    let (rt, _) = runtime();
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    place(&rt, ada, 1).await;
    place(&rt, bob, 2).await;
    let triggered = bounded(
        rt.sync_awaiter().wait::<Hourly>(
            PerspectiveSyncOptions::new(SyncFilter::all())
                .timeout(Duration::from_secs(10))
                .trigger(true),
        ),
    )
    .await
    .unwrap();
    assert_eq!(triggered.outcome, SyncOutcome::Synced);
    assert_eq!(triggered.run, StrategyRun::Triggered);
    assert_eq!(totals::<Hourly>(&rt, ada).await.unwrap().amount, 1);
    assert_eq!(totals::<Hourly>(&rt, bob).await.unwrap().amount, 2);
}

#[tokio::test]
async fn a_scheduled_keyed_perspective_applies_on_its_interval() {
    let (rt, _) = runtime();
    let ada = Uuid::now_v7();
    place(&rt, ada, 3).await;
    place(&rt, ada, 4).await;
    // No trigger: only the schedule can apply them.
    let synced = bounded(rt.sync_awaiter().wait::<Often>(
        PerspectiveSyncOptions::new(SyncFilter::all()).timeout(Duration::from_secs(10)),
    ))
    .await
    .unwrap();
    assert_eq!(synced.outcome, SyncOutcome::Synced);
    assert_eq!(synced.run, StrategyRun::NextRun);
    assert_eq!(
        totals::<Often>(&rt, ada).await,
        Some(Totals {
            orders: 2,
            amount: 7
        })
    );
    let status = rt.perspective_status::<Often>().await.unwrap();
    assert_eq!(status.strategy, "scheduled(100ms)");
    assert!(status.last_sync.is_some());
}

#[tokio::test]
async fn an_explicit_sync_catches_a_held_keyed_perspective_up() {
    let (rt, models) = runtime();
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    place(&rt, ada, 1).await;
    place(&rt, bob, 2).await;
    assert_eq!(totals::<Hourly>(&rt, ada).await, None);
    let report = bounded(rt.sync::<Hourly>().run()).await.unwrap();
    let totals_ = report.totals();
    assert_eq!((totals_.applied, totals_.failed), (2, 0), "{report:?}");
    assert!(report
        .items
        .iter()
        .all(|i| matches!(i, SyncItem::Applied { from: 0, to: 2, .. })));
    assert_eq!(totals::<Hourly>(&rt, ada).await.unwrap().amount, 1);
    assert_eq!(totals::<Hourly>(&rt, bob).await.unwrap().amount, 2);
    assert_eq!(cursor::<Hourly>(&models).await, 2);
    // The customers' models only: none under an order stream's id.
    let mut keys: Vec<Uuid> = models
        .list_models(Hourly::NAME)
        .await
        .unwrap()
        .iter()
        .map(|row| row.id.as_uuid())
        .collect();
    keys.sort_unstable();
    let mut expected = vec![ada, bob];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    let again = bounded(rt.sync::<Hourly>().streams([ada]).run())
        .await
        .unwrap();
    assert!(
        matches!(again.items.as_slice(), [SyncItem::Skipped { .. }]),
        "{again:?}"
    );
    let full = rt.sync::<Hourly>().full().run().await;
    assert!(
        matches!(&full, Err(Error::InvalidInput(m)) if m.contains("keyed")),
        "{full:?}"
    );
    let after = bounded(rt.sync_awaiter().wait::<Hourly>(short(SyncFilter::all())))
        .await
        .unwrap();
    assert_eq!(after.outcome, SyncOutcome::NoPendingEvents);
}

#[tokio::test]
async fn a_stream_wait_on_a_stream_whose_id_is_also_a_model_key_reads_the_one_cursor() {
    let (events, models) = (MemoryEventStore::new(), MemoryPerspectiveStore::new());
    let (rt, other) = (over(&events, &models), over(&events, &models));
    let ada = Uuid::now_v7();
    join(&rt, ada).await;
    place(&rt, ada, 1).await;
    place(&rt, ada, 2).await;
    bounded(rt.sync::<Hourly>().run()).await.unwrap();
    // The model of ada (the key of stream ada) reflects global position 3.
    assert_eq!(totals::<Hourly>(&rt, ada).await.unwrap().amount, 103);
    assert_eq!(cursor::<Hourly>(&models).await, 3);

    // Another runtime appends version 2 of stream ada: this one does not
    // track it, and its model's checkpoint (3) is above that version.
    join(&other, ada).await;
    let waited = bounded(
        rt.sync_awaiter()
            .wait::<Hourly>(short(SyncFilter::for_stream(ada))),
    )
    .await
    .unwrap();
    assert_eq!(waited.outcome, SyncOutcome::TimedOut, "{waited:?}");
    assert_eq!(waited.events_awaited, 1);
    let synced = bounded(
        rt.sync_awaiter().wait::<Hourly>(
            PerspectiveSyncOptions::new(SyncFilter::for_stream(ada))
                .timeout(Duration::from_secs(10))
                .trigger(true),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        (synced.outcome, synced.run),
        (SyncOutcome::Synced, StrategyRun::Triggered)
    );
    assert_eq!(totals::<Hourly>(&rt, ada).await.unwrap().amount, 203);
}

#[tokio::test]
async fn an_open_ended_wait_covers_held_events_another_runtime_appended() {
    let (events, models) = (MemoryEventStore::new(), MemoryPerspectiveStore::new());
    let (rt, other) = (over(&events, &models), over(&events, &models));
    let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
    place(&rt, ada, 1).await;
    bounded(rt.sync::<Hourly>().run()).await.unwrap();
    // Held in the other runtime; this one never tracked it.
    place(&other, bob, 2).await;
    for filter in [
        SyncFilter::all(),
        SyncFilter::for_event_types::<OrderPlaced>(),
    ] {
        let waited = bounded(rt.sync_awaiter().wait::<Hourly>(short(filter.clone())))
            .await
            .unwrap();
        assert_eq!(waited.outcome, SyncOutcome::TimedOut, "{filter:?}");
        assert_eq!(waited.events_awaited, 1, "{filter:?}");
    }
    assert_eq!(totals::<Hourly>(&rt, bob).await, None);
    let status = rt.perspective_status::<Hourly>().await.unwrap();
    assert_eq!(status.lag_events, 1);
    let synced = bounded(
        rt.sync_awaiter().wait::<Hourly>(
            PerspectiveSyncOptions::new(SyncFilter::all())
                .timeout(Duration::from_secs(10))
                .trigger(true),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        (synced.outcome, synced.run, synced.events_awaited),
        (SyncOutcome::Synced, StrategyRun::Triggered, 1)
    );
    assert_eq!(totals::<Hourly>(&rt, bob).await.unwrap().amount, 2);
}

/// Many writers, each waiting for its own order and for everything placed
/// before its wait began, on a keyed batch perspective (some waits
/// triggering): a `Synced` wait always finds the model holding what it
/// awaited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_wait_on_a_keyed_batch_always_finds_what_it_awaited_in_the_model() {
    use std::sync::{Arc, Mutex};
    let (rt, _) = runtime();
    let customers: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    // Amounts placed (their scope completed), by customer.
    let placed: Arc<Mutex<Vec<(Uuid, u64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (rt, customers, placed) = (rt.clone(), customers.clone(), Arc::clone(&placed));
        writers.push(tokio::spawn(async move {
            let mut synced = 0;
            for i in 0..40u64 {
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
                    .wait::<Quick>(
                        PerspectiveSyncOptions::new(SyncFilter::current_scope())
                            .timeout(Duration::from_secs(10))
                            .trigger(i % 3 == 0),
                    )
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
                bounded(scope.complete()).await.unwrap();
                placed.lock().unwrap().push((customer, amount));
                let before = placed.lock().unwrap().clone();
                let all = rt
                    .sync_awaiter()
                    .wait::<Quick>(
                        PerspectiveSyncOptions::new(SyncFilter::all())
                            .timeout(Duration::from_secs(10))
                            .trigger(i % 4 == 1),
                    )
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
        synced += bounded(w).await.unwrap();
    }
    assert!(synced > 0, "no wait ended synced");
    // Every order applied exactly once.
    bounded(rt.sync::<Quick>().run()).await.unwrap();
    let mut all: Vec<u64> = Vec::new();
    for c in &customers {
        all.extend(rt.lens::<Quick>().get_by_key(*c).await.unwrap().unwrap().0);
    }
    all.sort_unstable();
    let mut expected: Vec<u64> = placed.lock().unwrap().iter().map(|(_, a)| *a).collect();
    expected.sort_unstable();
    assert_eq!(all, expected);
}

//! Keyed (multi-stream) perspectives on the in-memory backend: a customer's
//! totals folded from many order streams, in the store's global order, with
//! one cursor per perspective. Exactly once under concurrent appenders and
//! two runtimes, exact read-your-writes, failures and recovery, and
//! catch-ups dropped mid-way.

mod common;
use common::{bounded, ms};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;
use whizbang_core::backend::{
    EventSyncStatus, MemoryEventStore, MemoryPerspectiveStore, PerspectiveStore, StoreSyncBackend,
    SyncBackend, SyncInquiry,
};
use whizbang_core::perspective::KEYED_CURSOR;
use whizbang_core::store::{BoxFuture, EventLocation, EventStore, StoredEvent, StreamAppend};
use whizbang_core::{
    await_perspective_sync, perspective, receptor, Command, Context, Error, Event, EventId,
    IntoModelKey, Perspective, Receptor, Result, Runtime, StreamId, SyncFilter, SyncOutcome,
};

// ---------------------------------------------------------------- messages

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "keyed.order_placed")]
struct OrderPlaced {
    #[stream_key]
    order: Uuid,
    customer: Uuid,
    amount: u64,
    /// Unique per event: the model records each, so a double apply shows.
    seq: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "keyed.order_refunded")]
struct OrderRefunded {
    #[stream_key]
    order: Uuid,
    customer: StreamId,
    amount: u64,
    seq: u64,
}

/// Handled by no keyed perspective: the cursor moves past it.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "keyed.noise")]
struct Noise {
    #[stream_key]
    order: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Totals {
    placed: u64,
    refunded: u64,
    seqs: Vec<u64>,
}

/// A poison amount: the failing perspective refuses it.
const POISON: u64 = 666;

struct CustomerTotals;

#[perspective(model = Totals, key = customer, name = "keyed.customer_totals")]
impl CustomerTotals {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.placed += e.amount;
        t.seqs.push(e.seq);
    }
    fn refunded(t: &mut Totals, e: &OrderRefunded) {
        t.refunded += e.amount;
        t.seqs.push(e.seq);
    }
}

/// The same fold, refusing [`POISON`].
struct Picky;

#[perspective(model = Totals, key = customer, name = "keyed.picky")]
impl Picky {
    fn placed(t: &mut Totals, e: &OrderPlaced) -> std::result::Result<(), String> {
        if e.amount == POISON {
            return Err("poisoned amount".into());
        }
        t.placed += e.amount;
        t.seqs.push(e.seq);
        Ok(())
    }
}

// ------------------------------------------- a command and an awaiting receptor

#[derive(Command, Serialize, Deserialize)]
struct PlaceOrder {
    customer: Uuid,
    amount: u64,
    seq: u64,
}

#[derive(Default)]
struct Orders;

#[receptor]
impl Receptor<PlaceOrder> for Orders {
    async fn handle(&self, cmd: PlaceOrder, cx: &mut Context) -> Result<()> {
        cx.emit(OrderPlaced {
            order: Uuid::now_v7(),
            customer: cmd.customer,
            amount: cmd.amount,
            seq: cmd.seq,
        })?;
        Ok(())
    }
}

/// What the awaiting receptor saw in the customer's totals when it ran.
static SEEN: std::sync::Mutex<Vec<(StreamId, u64)>> = std::sync::Mutex::new(Vec::new());

#[derive(Default)]
struct AfterRefund;

#[await_perspective_sync(CustomerTotals, timeout_ms = 5000)]
#[receptor]
impl Receptor<OrderRefunded> for AfterRefund {
    async fn handle(&self, e: OrderRefunded, cx: &mut Context) -> Result<()> {
        let totals = cx.lens::<CustomerTotals>().get_by_key(e.customer).await?;
        SEEN.lock()
            .unwrap()
            .push((e.customer, totals.map_or(0, |t| t.refunded)));
        Ok(())
    }
}

// ----------------------------------------------------------------- helpers

fn placed(order: Uuid, customer: Uuid, amount: u64, seq: u64) -> OrderPlaced {
    OrderPlaced {
        order,
        customer,
        amount,
        seq,
    }
}

/// The totals of every customer, folded afresh from every stored event.
fn fresh_fold(store: &MemoryEventStore) -> BTreeMap<Uuid, Totals> {
    let mut out: BTreeMap<Uuid, Totals> = BTreeMap::new();
    for ev in store.all_events() {
        match &*ev.event_type {
            "keyed.order_placed" => {
                let e: OrderPlaced = serde_json::from_str(ev.data.get()).unwrap();
                let t = out.entry(e.customer).or_default();
                t.placed += e.amount;
                t.seqs.push(e.seq);
            }
            "keyed.order_refunded" => {
                let e: OrderRefunded = serde_json::from_str(ev.data.get()).unwrap();
                let t = out.entry(e.customer.as_uuid()).or_default();
                t.refunded += e.amount;
                t.seqs.push(e.seq);
            }
            _ => {}
        }
    }
    out
}

async fn totals(rt: &Runtime, customer: Uuid) -> Option<Totals> {
    rt.lens::<CustomerTotals>()
        .get_by_key(customer)
        .await
        .unwrap()
}

async fn cursor<P: Perspective>(store: &dyn PerspectiveStore) -> whizbang_core::store::Checkpoint {
    store.checkpoint(P::NAME, KEYED_CURSOR).await.unwrap()
}

fn stores() -> (MemoryEventStore, MemoryPerspectiveStore) {
    (MemoryEventStore::new(), MemoryPerspectiveStore::new())
}

fn runtime(events: &MemoryEventStore, models: &MemoryPerspectiveStore) -> Runtime {
    Runtime::builder()
        .event_store(events.clone())
        .perspective_store(models.clone())
        .build()
        .unwrap()
}

/// Publishes `n` orders spread over `customers`, each on its own order
/// stream (two events per order), with `seq` from `first`.
async fn publish_orders(rt: &Runtime, customers: &[Uuid], n: u64, first: u64) {
    let scope = rt.scope();
    for i in 0..n {
        let customer = customers[usize::try_from(i).unwrap() % customers.len()];
        let order = Uuid::now_v7();
        let seq = first + 2 * i;
        scope
            .publish(placed(order, customer, i + 1, seq))
            .await
            .unwrap();
        scope.publish(Noise { order }).await.unwrap();
        scope
            .publish(OrderRefunded {
                order,
                customer: customer.into(),
                amount: 1,
                seq: seq + 1,
            })
            .await
            .unwrap();
    }
    bounded(scope.complete()).await.unwrap();
}

// ------------------------------------------------------------------- tests

/// The keyed contracts of the conformance suite, in both model formats.
mod typed_conformance {
    use whizbang_core::backend::conformance::Stores;
    use whizbang_core::backend::{MemoryEventStore, MemoryPerspectiveStore};
    whizbang_core::keyed_conformance_tests!(|| async {
        Stores::new(MemoryEventStore::new(), MemoryPerspectiveStore::new())
    });
}

mod json_conformance {
    use whizbang_core::backend::conformance::Stores;
    use whizbang_core::backend::{MemoryEventStore, MemoryPerspectiveStore};
    whizbang_core::keyed_conformance_tests!(|| async {
        Stores::new(MemoryEventStore::json(), MemoryPerspectiveStore::json())
    });
}

#[tokio::test]
async fn customer_totals_across_many_order_streams_equal_a_fresh_fold() {
    for (events, models) in [
        stores(),
        (MemoryEventStore::json(), MemoryPerspectiveStore::json()),
    ] {
        let rt = runtime(&events, &models);
        let customers: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        publish_orders(&rt, &customers, 40, 0).await;
        bounded(rt.wait_idle()).await;

        let expected = fresh_fold(&events);
        assert_eq!(expected.len(), 3);
        for customer in &customers {
            let got = totals(&rt, *customer).await.expect("a model per customer");
            assert_eq!(&got, &expected[customer], "customer {customer}");
        }
        // One model per customer, none per order stream, and no cursor row.
        let listed = models.list_models(CustomerTotals::NAME).await.unwrap();
        assert_eq!(listed.len(), 3);
        // The cursor passed every event, the unhandled ones included.
        let last = events.all_events().last().unwrap().position;
        assert_eq!(cursor::<CustomerTotals>(&models).await.version, last);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_and_two_runtimes_apply_each_event_exactly_once() {
    let (events, models) = stores();
    let a = runtime(&events, &models);
    let b = runtime(&events, &models);
    let customers: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let mut tasks = Vec::new();
    for w in 0..6u64 {
        let rt = if w % 2 == 0 { a.clone() } else { b.clone() };
        let customers = customers.clone();
        tasks.push(tokio::spawn(async move {
            publish_orders(&rt, &customers, 25, w * 1000).await;
        }));
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
    // Both runtimes catch up on the same stores at the same time.
    let (ra, rb) = tokio::join!(
        a.catch_up(CustomerTotals::NAME, KEYED_CURSOR),
        b.catch_up(CustomerTotals::NAME, KEYED_CURSOR)
    );
    ra.unwrap();
    rb.unwrap();
    bounded(a.wait_idle()).await;
    bounded(b.wait_idle()).await;

    let expected = fresh_fold(&events);
    for customer in &customers {
        let mut got = totals(&a, *customer).await.unwrap();
        let mut seqs = got.seqs.clone();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), got.seqs.len(), "an event applied twice");
        let mut want = expected[customer].clone();
        got.seqs.sort_unstable();
        want.seqs.sort_unstable();
        assert_eq!(got, want, "customer {customer}: every event exactly once");
    }
    assert_eq!(
        cursor::<CustomerTotals>(&models).await.version,
        events.all_events().len() as u64
    );
}

#[tokio::test]
async fn events_of_one_customer_apply_in_global_order() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    let customer = Uuid::now_v7();
    let scope = rt.scope();
    for seq in 0..30 {
        // A new order stream for every event: only the global order orders them.
        scope
            .publish(placed(Uuid::now_v7(), customer, 1, seq))
            .await
            .unwrap();
    }
    bounded(scope.complete()).await.unwrap();
    bounded(rt.wait_idle()).await;
    let got = totals(&rt, customer).await.unwrap();
    assert_eq!(got.seqs, (0..30).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_wait_on_a_keyed_perspective_ends_synced_only_after_the_totals_include_the_event() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    let customer = Uuid::now_v7();
    publish_orders(&rt, &[customer], 2, 0).await;
    bounded(rt.wait_idle()).await;
    let before = totals(&rt, customer).await.unwrap();

    rt.runner().pause();
    let scope = rt.scope();
    scope
        .publish(placed(Uuid::now_v7(), customer, 100, 500))
        .await
        .unwrap();
    let id = scope.emitted()[0].event_id;
    let backend = StoreSyncBackend::new(Arc::new(events.clone()), Arc::new(models.clone()));
    let inquiry = [SyncInquiry {
        perspective: CustomerTotals::NAME,
        handled: CustomerTotals::EVENT_TYPES,
        event_ids: vec![id, EventId::new()],
        keyed: true,
    }];
    let answer = backend.inquire(&inquiry).await.unwrap();
    assert!(
        matches!(answer[0].statuses[0].1, EventSyncStatus::Pending { .. }),
        "{answer:?}"
    );
    assert_eq!(answer[0].statuses[1].1, EventSyncStatus::NotArrived);

    // Paused: the wait times out, and the totals do not include the event.
    let waited = bounded(
        scope
            .sync_awaiter()
            .wait::<CustomerTotals>(SyncFilter::current_scope().with_timeout(ms(200))),
    )
    .await
    .unwrap();
    assert_eq!(waited.outcome, SyncOutcome::TimedOut);
    assert_eq!(totals(&rt, customer).await.unwrap(), before);

    // Resumed: the wait ends Synced, and the totals include it.
    rt.runner().resume();
    let waited = bounded(
        scope
            .sync_awaiter()
            .wait::<CustomerTotals>(SyncFilter::current_scope().with_timeout(ms(5000))),
    )
    .await
    .unwrap();
    assert_eq!(waited.outcome, SyncOutcome::Synced);
    let after = totals(&rt, customer).await.unwrap();
    assert_eq!(after.placed, before.placed + 100);
    assert!(after.seqs.contains(&500));
    let answer = backend.inquire(&inquiry).await.unwrap();
    assert_eq!(answer[0].statuses[0].1, EventSyncStatus::Applied);
    bounded(scope.complete()).await.unwrap();
}

#[tokio::test]
async fn send_and_sync_and_await_perspective_sync_see_the_keyed_totals() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    let customer = Uuid::now_v7();
    let scope = rt.scope();
    let sent = bounded(scope.send_and_sync(PlaceOrder {
        customer,
        amount: 7,
        seq: 1,
    }))
    .await
    .unwrap();
    assert!(sent.is_synced(), "{:?}", sent.results);
    assert!(sent
        .results
        .iter()
        .any(|r| r.perspective == CustomerTotals::NAME));
    assert_eq!(totals(&rt, customer).await.unwrap().placed, 7);
    bounded(scope.complete()).await.unwrap();

    // The awaiting receptor runs after the keyed totals include the refund.
    let scope = rt.scope();
    scope
        .publish(OrderRefunded {
            order: Uuid::now_v7(),
            customer: customer.into(),
            amount: 3,
            seq: 2,
        })
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
    bounded(rt.wait_idle()).await;
    let seen: Vec<u64> = SEEN
        .lock()
        .unwrap()
        .iter()
        .filter(|(c, _)| c.as_uuid() == customer)
        .map(|(_, refunded)| *refunded)
        .collect();
    assert_eq!(seen, vec![3]);
}

#[tokio::test]
async fn a_failed_event_stops_the_cursor_and_waits_report_it_until_skipped() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    let customer = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(placed(Uuid::now_v7(), customer, 1, 1))
        .await
        .unwrap();
    scope
        .publish(placed(Uuid::now_v7(), customer, POISON, 2))
        .await
        .unwrap();
    scope
        .publish(placed(Uuid::now_v7(), customer, 3, 3))
        .await
        .unwrap();
    let waited = bounded(
        scope
            .sync_awaiter()
            .wait::<Picky>(SyncFilter::current_scope().with_timeout(ms(5000))),
    )
    .await
    .unwrap();
    let SyncOutcome::Failed { message, .. } = &waited.outcome else {
        panic!("expected Failed, got {:?}", waited.outcome);
    };
    assert!(message.contains("poisoned amount"), "{message}");
    bounded(scope.complete()).await.unwrap();
    bounded(rt.wait_idle()).await;
    let picky = rt.lens::<Picky>();
    // What applied before the failing event is committed; nothing after.
    assert_eq!(
        picky.get_by_key(customer).await.unwrap().unwrap().seqs,
        vec![1]
    );
    let cp = cursor::<Picky>(&models).await;
    let failure = cp.failure.expect("the cursor is failed");
    assert_eq!(failure.version, events.all_events()[1].position);

    // A retry fails again (the cause is in the event), a skip moves past it.
    let retried = rt.retry_perspective::<Picky>(KEYED_CURSOR).await;
    assert!(
        matches!(retried, Err(Error::PerspectiveFailed { .. })),
        "{retried:?}"
    );
    rt.skip_failed_event::<Picky>(KEYED_CURSOR, "bad amount")
        .await
        .unwrap();
    let got = picky.get_by_key(customer).await.unwrap().unwrap();
    assert_eq!(got.seqs, vec![1, 3]);
    let cp = cursor::<Picky>(&models).await;
    assert!(cp.failure.is_none());
    assert_eq!(cp.skipped.len(), 1);
    assert_eq!(cp.version, events.all_events().len() as u64);
}

#[tokio::test(start_paused = true)]
async fn a_catch_up_dropped_mid_way_commits_nothing_and_the_next_one_applies_everything() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    rt.runner().pause();
    let customer = Uuid::now_v7();
    publish_orders(&rt, &[customer], 5, 0).await;

    // Hold the customer's model: the catch-up reads, then waits on its claim.
    let held = models
        .claim(CustomerTotals::NAME, customer.to_model_key())
        .await
        .unwrap();
    let dropped =
        tokio::time::timeout(ms(50), rt.catch_up(CustomerTotals::NAME, KEYED_CURSOR)).await;
    assert!(dropped.is_err(), "the catch-up was waiting for the claim");
    assert_eq!(cursor::<CustomerTotals>(&models).await.version, 0);
    assert_eq!(totals(&rt, customer).await, None);
    drop(held);

    bounded(rt.catch_up(CustomerTotals::NAME, KEYED_CURSOR))
        .await
        .unwrap();
    assert_eq!(
        totals(&rt, customer).await,
        fresh_fold(&events).remove(&customer)
    );
}

#[tokio::test]
async fn a_stream_fold_of_a_keyed_perspective_is_refused_with_a_typed_error() {
    let rt = Runtime::in_memory().unwrap();
    let err = rt
        .aggregate::<CustomerTotals>(Uuid::now_v7())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("get_by_key")),
        "{err:?}"
    );
}

// ------------------------------------- a backend without a global order

/// An event store that keeps the defaults of the global-order methods.
#[derive(Clone, Default)]
struct NoGlobalOrder(MemoryEventStore);

impl EventStore for NoGlobalOrder {
    fn append(&self, streams: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>> {
        self.0.append(streams)
    }
    fn read_stream(
        &self,
        stream: StreamId,
        after_version: u64,
    ) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>> {
        self.0.read_stream(stream, after_version)
    }
    fn stream_version(&self, stream: StreamId) -> BoxFuture<'_, Result<u64>> {
        self.0.stream_version(stream)
    }
    fn locate<'a>(&'a self, ids: &'a [EventId]) -> BoxFuture<'a, Result<Vec<EventLocation>>> {
        self.0.locate(ids)
    }
}

#[tokio::test]
async fn a_store_without_a_global_order_refuses_keyed_perspectives_with_a_typed_error() {
    let rt = Runtime::builder()
        .event_store(NoGlobalOrder::default())
        .build()
        .unwrap();
    rt.runner().pause();
    let scope = rt.scope();
    scope
        .publish(placed(Uuid::now_v7(), Uuid::now_v7(), 1, 1))
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
    let err = rt
        .catch_up(CustomerTotals::NAME, KEYED_CURSOR)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::KeyedUnsupported {
                perspective: "keyed.customer_totals",
                ..
            }
        ),
        "{err:?}"
    );
}

/// The cursor positions of the commits a runtime reported for
/// [`CustomerTotals`] (every report of one commit carries its position).
#[derive(Clone, Default)]
struct Commits(Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>>);

impl whizbang_core::backend::ApplyListener for Commits {
    fn on_apply(&self, report: &whizbang_core::backend::ApplyReport) {
        if report.perspective == CustomerTotals::NAME {
            self.0.lock().unwrap().insert(report.version);
        }
    }
}

#[tokio::test]
async fn a_keyed_catch_up_commits_up_to_4096_events_per_transaction() {
    let (events, models) = stores();
    let commits = Commits::default();
    let rt = Runtime::builder()
        .event_store(events.clone())
        .perspective_store(models.clone())
        .apply_listener(commits.clone())
        .build()
        .unwrap();
    rt.runner().pause();
    let customers: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    // 2,000 orders of three events each: 6,000 in the global order.
    publish_orders(&rt, &customers, 2000, 0).await;
    bounded(rt.catch_up(CustomerTotals::NAME, KEYED_CURSOR))
        .await
        .unwrap();
    let positions: Vec<u64> = commits.0.lock().unwrap().iter().copied().collect();
    assert_eq!(
        positions,
        vec![4096, 6000],
        "two transactions: a full batch of 4,096 events, then the rest"
    );
    assert_eq!(cursor::<CustomerTotals>(&models).await.version, 6000);
    let expected = fresh_fold(&events);
    for customer in &customers {
        assert_eq!(
            totals(&rt, *customer).await.as_ref(),
            expected.get(customer)
        );
    }
}

// ------------------------------------------- explicit sync and status, keyed

/// Whether any stored model of `P` is keyed by one of the order streams
/// (a stream-by-stream fold would write such models).
async fn a_model_per_order_stream(rt: &Runtime, events: &MemoryEventStore) -> Vec<StreamId> {
    let mut found = Vec::new();
    for ev in events.all_events() {
        if ev.event_type.as_ref() == "keyed.order_placed"
            && rt
                .lens::<CustomerTotals>()
                .get_by_key(ev.stream_id.as_uuid())
                .await
                .unwrap()
                .is_some()
        {
            found.push(ev.stream_id);
        }
    }
    found
}

/// Every customer's totals equal a fresh fold of the stored events, and no
/// model is keyed by an order stream (`what` names the moment).
async fn totals_are_a_fresh_fold(
    rt: &Runtime,
    events: &MemoryEventStore,
    customers: &[Uuid],
    what: &str,
) {
    let fold = fresh_fold(events);
    for c in customers {
        assert_eq!(
            totals(rt, *c).await.as_ref(),
            fold.get(c),
            "{what}: customer {c}"
        );
    }
    assert_eq!(
        a_model_per_order_stream(rt, events).await,
        Vec::new(),
        "{what}"
    );
}

#[tokio::test]
async fn explicit_sync_of_a_keyed_perspective_catches_its_one_cursor_up() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    rt.runner().pause();
    let customers: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    publish_orders(&rt, &customers, 6, 1).await;
    assert_eq!(
        totals(&rt, customers[0]).await,
        None,
        "the runner is paused"
    );
    let order = events.all_events()[0].stream_id;
    let stranger = StreamId::new();

    // Named streams: the cursor catches up to the head (every key), the
    // named stream is applied, an unknown one skipped.
    let report = bounded(
        rt.sync::<CustomerTotals>()
            .streams([order, stranger, order])
            .run(),
    )
    .await
    .unwrap();
    let head = events.all_events().len() as u64;
    assert_eq!(report.totals().applied, 6, "{report:?}");
    assert_eq!(report.totals().skipped, 1, "{report:?}");
    assert_eq!(report.totals().failed, 0, "{report:?}");
    for item in &report.items {
        if let whizbang_core::SyncItem::Applied {
            from, to, deleted, ..
        } = item
        {
            assert_eq!((*from, *to, *deleted), (0, head, false), "{item:?}");
        }
    }
    assert!(report.items.iter().any(|i| i.stream() == order));
    totals_are_a_fresh_fold(&rt, &events, &customers, "after the sync").await;
    assert_eq!(cursor::<CustomerTotals>(&models).await.version, head);

    // Everything: what was appended since; then nothing to do.
    publish_orders(&rt, &customers, 2, 100).await;
    let report = bounded(rt.sync::<CustomerTotals>().all().run())
        .await
        .unwrap();
    assert_eq!(report.totals().applied, 2, "{report:?}");
    let report = bounded(rt.sync::<CustomerTotals>().all().run())
        .await
        .unwrap();
    assert!(report.items.is_empty(), "{report:?}");
    totals_are_a_fresh_fold(&rt, &events, &customers, "after the sync").await;
}

#[tokio::test]
async fn a_full_sync_of_a_keyed_perspective_is_refused_and_points_to_a_rebuild() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    rt.runner().pause();
    let customers = [Uuid::now_v7()];
    publish_orders(&rt, &customers, 2, 1).await;
    for sync in [
        rt.sync::<CustomerTotals>().all().full(),
        rt.sync::<CustomerTotals>()
            .streams([events.all_events()[0].stream_id])
            .full(),
    ] {
        let refused = bounded(sync.run()).await;
        let Err(Error::InvalidInput(message)) = &refused else {
            panic!("expected InvalidInput, got {refused:?}");
        };
        assert!(message.contains("rebuild"), "{message}");
    }
    assert_eq!(totals(&rt, customers[0]).await, None, "nothing was changed");
    assert_eq!(cursor::<CustomerTotals>(&models).await.version, 0);
}

#[tokio::test]
async fn explicit_sync_of_a_failing_keyed_perspective_reports_the_failure_and_keeps_what_applied() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    rt.runner().pause();
    let customer = Uuid::now_v7();
    let scope = rt.scope();
    let orders: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for (i, amount) in [1, POISON, 3].into_iter().enumerate() {
        scope
            .publish(placed(orders[i], customer, amount, i as u64 + 1))
            .await
            .unwrap();
    }
    bounded(scope.complete()).await.unwrap();
    let report = bounded(
        rt.sync::<Picky>()
            .streams(orders.iter().map(|&o| StreamId::from(o)))
            .run(),
    )
    .await
    .unwrap();
    assert_eq!(report.totals().applied, 1, "{report:?}");
    // The two streams at and after the failure, and the cursor itself.
    assert_eq!(report.totals().failed, 3, "{report:?}");
    let failed: Vec<StreamId> = report
        .items
        .iter()
        .filter(|i| matches!(i, whizbang_core::SyncItem::Failed { .. }))
        .map(|i| i.stream())
        .collect();
    assert!(failed.contains(&KEYED_CURSOR), "{failed:?}");
    assert!(failed.contains(&StreamId::from(orders[1])), "{failed:?}");
    let got = rt
        .lens::<Picky>()
        .get_by_key(customer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.seqs,
        vec![1],
        "what came before the failure is committed"
    );

    // The status counts the failed cursor and the two events behind it.
    let status = rt.perspective_status::<Picky>().await.unwrap();
    assert_eq!(
        (status.lag_events, status.failed_cursors),
        (2, 1),
        "{status:?}"
    );

    // Retrying fails again (the cause is in the event); after a skip an
    // explicit sync has nothing left.
    let retried = bounded(rt.sync::<Picky>().all().retry_failed().run())
        .await
        .unwrap();
    assert_eq!(retried.totals().failed, 1, "{retried:?}");
    rt.skip_failed_event::<Picky>(KEYED_CURSOR, "bad amount")
        .await
        .unwrap();
    let got = rt
        .lens::<Picky>()
        .get_by_key(customer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.seqs, vec![1, 3]);
    let status = rt.perspective_status::<Picky>().await.unwrap();
    assert_eq!(
        (status.lag_events, status.failed_cursors),
        (0, 0),
        "{status:?}"
    );
}

#[tokio::test]
async fn the_status_of_a_keyed_perspective_counts_only_what_its_cursor_has_not_passed() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    let customers: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    publish_orders(&rt, &customers, 4, 1).await;
    bounded(rt.wait_idle()).await;
    let status = rt.perspective_status::<CustomerTotals>().await.unwrap();
    assert_eq!(status.lag_events, 0, "{status:?}");
    assert_eq!(status.lag, std::time::Duration::ZERO, "{status:?}");

    // Two more events on an order stream whose first events are applied,
    // and one unhandled: the lag is the two, not the stream's history.
    rt.runner().pause();
    let first = events.all_events()[0].clone();
    let placed_first: OrderPlaced = serde_json::from_str(first.data.get()).unwrap();
    let scope = rt.scope();
    scope
        .publish(OrderRefunded {
            order: placed_first.order,
            customer: placed_first.customer.into(),
            amount: 1,
            seq: 1_000,
        })
        .await
        .unwrap();
    scope
        .publish(Noise {
            order: placed_first.order,
        })
        .await
        .unwrap();
    scope
        .publish(OrderRefunded {
            order: placed_first.order,
            customer: placed_first.customer.into(),
            amount: 1,
            seq: 1_001,
        })
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
    let status = rt.perspective_status::<CustomerTotals>().await.unwrap();
    assert_eq!(
        (status.lag_events, status.failed_cursors),
        (2, 0),
        "{status:?}"
    );
    rt.runner().resume();
    bounded(rt.wait_idle()).await;
    let status = rt.perspective_status::<CustomerTotals>().await.unwrap();
    assert_eq!(status.lag_events, 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_perspective_rebuilt_while_orders_flow_equals_a_fresh_fold() {
    for attempt in 0..3 {
        let (events, models) = stores();
        let rt = runtime(&events, &models);
        let customers: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        publish_orders(&rt, &customers, 40, 1).await;
        bounded(rt.wait_idle()).await;
        let writer = {
            let rt = rt.clone();
            let customers = customers.clone();
            tokio::spawn(async move {
                for round in 0..10 {
                    publish_orders(&rt, &customers, 5, 1_000 + round * 10).await;
                }
            })
        };
        let options =
            whizbang_core::perspective::rebuild::RebuildOptions::default().fence_below(10);
        let report = bounded(rt.rebuild_named(CustomerTotals::NAME, options))
            .await
            .unwrap();
        bounded(writer).await.unwrap();
        bounded(rt.wait_idle()).await;
        assert!(report.folded >= 120, "attempt {attempt}: {report:?}");
        assert_eq!(
            report.models,
            customers.len(),
            "attempt {attempt}: {report:?}"
        );
        totals_are_a_fresh_fold(&rt, &events, &customers, &format!("attempt {attempt}")).await;
        assert_eq!(
            cursor::<CustomerTotals>(&models).await.version,
            events.all_events().len() as u64,
            "attempt {attempt}"
        );
        // Nothing of the shadow is left.
        let shadow = whizbang_core::perspective::rebuild::shadow_name(CustomerTotals::NAME);
        assert!(models.list_models(shadow).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_keyed_rebuild_whose_code_fails_swaps_nothing() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    let customer = Uuid::now_v7();
    let scope = rt.scope();
    for (i, amount) in [1, POISON, 3].into_iter().enumerate() {
        scope
            .publish(placed(Uuid::now_v7(), customer, amount, i as u64 + 1))
            .await
            .unwrap();
    }
    bounded(scope.complete()).await.unwrap();
    bounded(rt.wait_idle()).await;
    let before = cursor::<Picky>(&models).await;
    assert!(
        before.failure.is_some(),
        "the live cursor failed on the poison"
    );
    let failed = bounded(rt.rebuild::<Picky>()).await;
    let Err(Error::PerspectiveFailed {
        perspective,
        message,
        ..
    }) = &failed
    else {
        panic!("expected PerspectiveFailed, got {failed:?}");
    };
    assert_eq!(*perspective, Picky::NAME);
    assert!(message.contains("poisoned amount"), "{message}");
    let got = rt
        .lens::<Picky>()
        .get_by_key(customer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.seqs, vec![1], "the live model is as it was");
    assert_eq!(cursor::<Picky>(&models).await, before);
}

#[tokio::test]
async fn a_keyed_rebuild_dropped_at_any_await_leaves_the_live_models_and_resumes() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    let customers: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    publish_orders(&rt, &customers, 30, 1).await;
    bounded(rt.wait_idle()).await;
    let fold = fresh_fold(&events);
    let mut completed = None;
    for polls in 1..40 {
        let mut rebuild = Box::pin(rt.rebuild::<CustomerTotals>());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..polls {
            if let std::task::Poll::Ready(done) =
                std::future::Future::poll(rebuild.as_mut(), &mut cx)
            {
                completed = Some((polls, done.unwrap()));
                break;
            }
        }
        drop(rebuild);
        // Whatever the rebuild got to, readers see whole models.
        for c in &customers {
            assert_eq!(
                totals(&rt, *c).await.as_ref(),
                fold.get(c),
                "{polls} polls: {c}"
            );
        }
        if completed.is_some() {
            break;
        }
    }
    let (polls, report) = completed.expect("a rebuild completed within 40 polls");
    assert!(polls > 1, "the rebuild yielded at least once: {report:?}");
    assert_eq!(a_model_per_order_stream(&rt, &events).await, Vec::new());
    assert_eq!(
        cursor::<CustomerTotals>(&models).await.version,
        events.all_events().len() as u64
    );
}

/// What the keyed bulk hook saw: per call, each key's placed total.
static KEYED_BULK: std::sync::Mutex<Vec<Vec<(Uuid, u64, usize)>>> =
    std::sync::Mutex::new(Vec::new());

struct BulkTotals;

#[perspective(model = Totals, key = customer, name = "keyed.bulk_totals", bulk = mirror)]
impl BulkTotals {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.placed += e.amount;
        t.seqs.push(e.seq);
    }
    async fn mirror(
        batch: whizbang_core::perspective::BulkBatch<'_, Totals>,
    ) -> std::result::Result<(), String> {
        let seen = batch
            .iter()
            .map(|i| {
                (
                    i.key().as_uuid(),
                    i.model().map_or(0, |m| m.placed),
                    i.events().len(),
                )
            })
            .collect();
        KEYED_BULK.lock().unwrap().push(seen);
        Ok(())
    }
}

#[tokio::test]
async fn a_keyed_perspectives_bulk_hook_sees_each_customer_once_per_batch_with_its_events() {
    let (events, models) = stores();
    let rt = Runtime::builder()
        .event_store(events.clone())
        .perspective_store(models.clone())
        .registry(std::sync::Arc::new(
            whizbang_core::Registry::builder()
                .receptors_of::<Orders>()
                .perspective::<BulkTotals>()
                .build()
                .unwrap(),
        ))
        .build()
        .unwrap();
    rt.runner().pause();
    let customers: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let scope = rt.scope();
    for i in 0..9u64 {
        scope
            .publish(placed(
                Uuid::now_v7(),
                customers[(i % 3) as usize],
                i + 1,
                i,
            ))
            .await
            .unwrap();
    }
    bounded(scope.complete()).await.unwrap();
    let report = bounded(rt.sync::<BulkTotals>().all().run()).await.unwrap();
    assert_eq!(report.totals().applied, 9, "{report:?}");
    // Other tests' runtimes register every perspective too: only the calls
    // about these customers are this test's.
    let calls: Vec<Vec<(Uuid, u64, usize)>> = KEYED_BULK
        .lock()
        .unwrap()
        .iter()
        .filter(|call| call.iter().any(|(key, _, _)| customers.contains(key)))
        .cloned()
        .collect();
    assert_eq!(calls.len(), 1, "one batch, one call: {calls:?}");
    let mut seen = calls[0].clone();
    seen.sort_unstable();
    let mut want: Vec<(Uuid, u64, usize)> = customers
        .iter()
        .enumerate()
        .map(|(c, id)| {
            let amounts: u64 = (0..9u64)
                .filter(|i| (i % 3) as usize == c)
                .map(|i| i + 1)
                .sum();
            (*id, amounts, 3)
        })
        .collect();
    want.sort_unstable();
    assert_eq!(seen, want);
    for (id, placed, _) in want {
        let got = rt
            .lens::<BulkTotals>()
            .get_by_key(id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.placed, placed);
    }
}

#[tokio::test]
async fn a_catch_up_to_the_head_of_a_keyed_perspective_moves_its_one_cursor() {
    let (events, models) = stores();
    let rt = runtime(&events, &models);
    rt.runner().pause();
    let customers: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    publish_orders(&rt, &customers, 5, 1).await;
    let (options, progress) =
        whizbang_core::perspective::rebuild::RebuildOptions::default().watch();
    let report = bounded(rt.catch_up_to_head(CustomerTotals::NAME, options))
        .await
        .unwrap();
    let stored = events.all_events().len() as u64;
    assert_eq!((report.streams, report.events), (5, stored), "{report:?}");
    let last = progress.borrow().clone();
    assert_eq!((last.done, last.total), (stored, stored), "{last:?}");
    totals_are_a_fresh_fold(&rt, &events, &customers, "after the sync").await;
    assert_eq!(cursor::<CustomerTotals>(&models).await.version, stored);
}

//! The given / when / then harness (`whizbang_core::testing`) and the registry
//! subset it runs on: only the receptors and perspectives a test adds run.

mod common;
use common::bounded;

use serde::{Deserialize, Serialize};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use uuid::Uuid;
use whizbang_core::testing::{ExpectedEvent, TestHarness};
use whizbang_core::{
    await_perspective_sync, fire_at, perspective, receptor, Command, Context, Error, Event,
    FromServices, Receptor, Registry, Result, Services,
};

#[derive(Command, Serialize, Deserialize)]
#[command(output = u32)]
struct Ship {
    order: Uuid,
}

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(name = "harness.placed")]
struct Placed {
    #[stream_key]
    order: Uuid,
    items: u32,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "harness.shipped")]
struct Shipped {
    #[stream_key]
    order: Uuid,
    items: u32,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "harness.labelled")]
struct Labelled {
    #[stream_key]
    order: Uuid,
}

#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    items: u32,
    shipped: bool,
    labelled: bool,
}

/// Async: the harness waits for the runner before `then`.
struct Orders;

#[perspective(model = Order)]
impl Orders {
    fn placed(o: &mut Order, e: &Placed) {
        o.items += e.items;
    }
    fn shipped(o: &mut Order, _: &Shipped) {
        o.shipped = true;
    }
    fn labelled(o: &mut Order, _: &Labelled) {
        o.labelled = true;
    }
}

static OUTSIDE_APPLIED: AtomicUsize = AtomicUsize::new(0);

/// Handles the same events, but no test adds it to its harness.
struct Outside;

#[perspective(model = Order, mode = inline)]
impl Outside {
    fn placed(_: &mut Order, _: &Placed) {
        OUTSIDE_APPLIED.fetch_add(1, Ordering::SeqCst);
    }
    fn shipped(_: &mut Order, _: &Shipped) {
        OUTSIDE_APPLIED.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Dock;

#[receptor]
impl Receptor<Ship> for Dock {
    async fn handle(&self, cmd: Ship, cx: &mut Context) -> Result<u32> {
        let order = cx.aggregate::<Orders>(cmd.order).await?;
        if order.items == 0 {
            return Err(Error::rejected("nothing to ship"));
        }
        cx.emit(Shipped {
            order: cmd.order,
            items: order.items,
        })?;
        Ok(order.items)
    }
}

/// An event receptor in the cascade of `Shipped` (added by some tests only).
#[derive(Default)]
struct Labeller;

#[receptor]
impl Receptor<Shipped> for Labeller {
    async fn handle(&self, e: Shipped, cx: &mut Context) -> Result<()> {
        cx.emit(Labelled { order: e.order })?;
        Ok(())
    }
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "harness.dispatched")]
struct Dispatched {
    #[stream_key]
    order: Uuid,
}

/// A detached receptor after the perspectives applied `Shipped`.
#[derive(Default)]
struct Courier;

#[fire_at(PostPerspectiveDetached)]
#[receptor]
impl Receptor<Shipped> for Courier {
    async fn handle(&self, e: Shipped, cx: &mut Context) -> Result<()> {
        cx.emit(Dispatched { order: e.order })?;
        Ok(())
    }
}

static PLACED_SEEN: AtomicUsize = AtomicUsize::new(0);

/// Reacts to `Placed`: must not run on given events.
#[derive(Default)]
struct PlacedWatcher;

#[receptor]
impl Receptor<Placed> for PlacedWatcher {
    async fn handle(&self, _: Placed, _: &mut Context) -> Result<()> {
        PLACED_SEEN.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Awaits `Orders`: a subset with it must hold `Orders`.
#[derive(Default)]
struct Notifier;

#[fire_at(PostPerspectiveDetached)]
#[await_perspective_sync(Orders, timeout_ms = 1000)]
#[receptor]
impl Receptor<Labelled> for Notifier {
    async fn handle(&self, _: Labelled, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

#[derive(Command, Serialize, Deserialize)]
struct Count;

struct Counter(Arc<AtomicUsize>);

impl FromServices for Counter {
    fn from_services(services: &Services) -> Result<Self> {
        Ok(Counter(services.require::<AtomicUsize>("Counter")?))
    }
}

#[receptor]
impl Receptor<Count> for Counter {
    async fn handle(&self, _: Count, _: &mut Context) -> Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A second receptor of `Count`: fine while no registry holds both.
#[derive(Default)]
struct OtherCounter;

#[receptor]
impl Receptor<Count> for OtherCounter {
    async fn handle(&self, _: Count, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn given_history_when_a_command_then_its_events_output_and_model() {
    let order = Uuid::now_v7();
    let then = bounded(
        TestHarness::new()
            .receptor::<Dock, Ship>()
            .perspective::<Orders>()
            .given(Placed { order, items: 2 })
            .given(Placed { order, items: 1 })
            .when(Ship { order }),
    )
    .await;
    then.expect_events([Shipped { order, items: 3 }.into()]);
    assert_eq!(
        then.events()[0].stream_version,
        3,
        "after the two given events"
    );
    bounded(then.expect_model::<Orders>(
        order,
        &Order {
            items: 3,
            shipped: true,
            labelled: false,
        },
    ))
    .await;
    assert_eq!(then.expect_output(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_command_is_the_then_error_and_stores_nothing() {
    let then = bounded(TestHarness::new().receptor::<Dock, Ship>().when(Ship {
        order: Uuid::now_v7(),
    }))
    .await;
    then.expect_error_message("nothing to ship");
    assert!(then.events().is_empty());
    assert!(matches!(then.expect_error(), Error::Handler(_)));
}

#[tokio::test(start_paused = true)]
async fn the_events_of_the_cascade_are_in_the_then_events_in_order() {
    let order = Uuid::now_v7();
    let then = bounded(
        TestHarness::new()
            .receptors_of::<Dock>()
            .receptor::<Labeller, Shipped>()
            .perspective::<Orders>()
            .given(Placed { order, items: 1 })
            .when(Ship { order }),
    )
    .await;
    let expected: [ExpectedEvent; 2] = [
        Shipped { order, items: 1 }.into(),
        Labelled { order }.into(),
    ];
    then.expect_events(expected);
    let model = then.model::<Orders>(order).await.unwrap().unwrap();
    assert!(model.shipped && model.labelled);
}

#[tokio::test(start_paused = true)]
async fn events_of_detached_stage_receptors_are_in_the_then_events() {
    let order = Uuid::now_v7();
    let then = bounded(
        TestHarness::new()
            .receptor::<Dock, Ship>()
            .receptor::<Courier, Shipped>()
            .perspective::<Orders>()
            .given(Placed { order, items: 1 })
            .when(Ship { order }),
    )
    .await;
    then.expect_events([
        Shipped { order, items: 1 }.into(),
        Dispatched { order }.into(),
    ]);
}

#[tokio::test(start_paused = true)]
async fn a_perspective_or_receptor_outside_the_subset_does_not_run() {
    let order = Uuid::now_v7();
    let then = bounded(
        TestHarness::new()
            .receptor::<Dock, Ship>()
            .perspective::<Orders>()
            .given(Placed { order, items: 1 })
            .when(Ship { order }),
    )
    .await;
    // `Labeller` reacts to `Shipped` in this binary, but is not in the subset.
    then.expect_events([Shipped { order, items: 1 }.into()]);
    assert_eq!(OUTSIDE_APPLIED.load(Ordering::SeqCst), 0);
    assert_eq!(then.model::<Outside>(order).await.unwrap(), None);
    assert_eq!(then.runtime().registry().perspectives().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn given_events_are_history_no_receptor_runs_on_them() {
    let order = Uuid::now_v7();
    let then = bounded(
        TestHarness::new()
            .receptor::<Dock, Ship>()
            .receptor::<PlacedWatcher, Placed>()
            .perspective::<Orders>()
            .given(Placed { order, items: 4 })
            .when(Ship { order }),
    )
    .await;
    then.expect_events([Shipped { order, items: 4 }.into()]);
    assert_eq!(PLACED_SEEN.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_mismatch_names_both_lists_by_wire_name_and_json() {
    let order = Uuid::now_v7();
    let then = bounded(
        TestHarness::new()
            .receptor::<Dock, Ship>()
            .given(Placed { order, items: 1 })
            .when(Ship { order }),
    )
    .await;
    let wrong = catch_unwind(AssertUnwindSafe(|| {
        then.expect_events([
            Shipped { order, items: 2 }.into(),
            Labelled { order }.into(),
        ]);
    }))
    .unwrap_err();
    let text = panic_text(&*wrong);
    assert!(text.contains("first difference at #1"), "{text}");
    assert!(text.contains("expected 2:"), "{text}");
    assert!(text.contains("actual 1:"), "{text}");
    assert!(text.contains(r#"harness.shipped {"items":2"#), "{text}");
    assert!(text.contains(r#"harness.shipped {"items":1"#), "{text}");
    assert!(text.contains("harness.labelled"), "{text}");

    let not_failed = catch_unwind(AssertUnwindSafe(|| {
        then.expect_error_message("nothing to ship");
    }))
    .unwrap_err();
    let text = panic_text(&*not_failed);
    assert!(text.contains("but it succeeded and stored"), "{text}");
    assert!(text.contains("harness.shipped"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn services_reach_the_subset_and_a_missing_one_is_a_setup_error() {
    let count = Arc::new(AtomicUsize::new(0));
    let then = bounded(
        TestHarness::new()
            .receptor::<Counter, Count>()
            .shared_service(Arc::clone(&count))
            .when(Count),
    )
    .await;
    then.expect_no_events();
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the receptor ran with the service"
    );
    let err = bounded(
        TestHarness::new()
            .receptor::<Counter, Count>()
            .try_when(Count),
    )
    .await
    .unwrap_err();
    assert_matches!(err, Error::MissingService { .. });
    let panicked = tokio::spawn(TestHarness::new().receptor::<Counter, Count>().when(Count));
    let text = panic_text(&*bounded(panicked).await.unwrap_err().into_panic());
    assert!(
        text.contains("the test harness could not run the command") && text.contains("AtomicUsize"),
        "{text}"
    );
}

#[test]
fn a_subset_runs_the_start_up_checks() {
    let err = Registry::builder()
        .receptor::<Counter, Count>()
        .receptor::<OtherCounter, Count>()
        .build()
        .unwrap_err();
    assert_matches!(err, Error::DuplicateReceptor { .. });

    let err = Registry::builder()
        .receptor::<Notifier, Labelled>()
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("add `.perspective::<Orders>()`"),
        "{err}"
    );

    let err = Registry::builder().build().unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    let err = Registry::builder()
        .receptors_of::<String>()
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("has no #[receptor] impl"), "{err}");

    let ok = Registry::builder()
        .receptor::<Notifier, Labelled>()
        .perspective::<Orders>()
        .perspective::<Orders>()
        .build()
        .unwrap();
    assert_eq!(ok.perspectives().len(), 1, "added twice, held once");
    let names: Vec<_> = ok.messages().iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        vec!["harness.labelled", "harness.placed", "harness.shipped"],
        "the messages its receptors handle and its perspectives apply"
    );
}

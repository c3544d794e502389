//! Dispatch: routing, outputs, emitted events, optimistic concurrency and the
//! bad-input cases of issue 2.

mod common;
use common::stream_len;

use serde::{Deserialize, Serialize, Serializer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use uuid::Uuid;
use whizbang_core::{
    receptor, Command, Context, Error, Event, ExpectedVersion, FromServices, Receptor, Result,
    Runtime, Services, StreamId,
};

#[derive(Command, Serialize, Deserialize)]
#[command(output = Uuid)]
struct OpenCart {
    owner: String,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "carts.opened")]
struct CartOpened {
    #[stream_key]
    cart: Uuid,
    owner: String,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct ItemAdded {
    #[stream_key]
    cart: Uuid,
    sku: String,
}

#[derive(Default)]
struct Carts;

#[receptor]
impl Receptor<OpenCart> for Carts {
    async fn handle(&self, cmd: OpenCart, cx: &mut Context) -> Result<Uuid> {
        let cart = Uuid::now_v7();
        cx.emit(CartOpened {
            cart,
            owner: cmd.owner,
        })?;
        Ok(cart)
    }
}

/// Adds an item, expecting the cart at an exact version.
#[derive(Command, Serialize, Deserialize)]
struct AddItem {
    cart: Uuid,
    sku: String,
    expected_version: u64,
}

#[receptor]
impl Receptor<AddItem> for Carts {
    async fn handle(&self, cmd: AddItem, cx: &mut Context) -> Result<()> {
        cx.emit_expecting(
            ItemAdded {
                cart: cmd.cart,
                sku: cmd.sku,
            },
            ExpectedVersion::Exact(cmd.expected_version),
        )?;
        Ok(())
    }
}

/// Emits an event, then fails: the event must not be appended.
#[derive(Command, Serialize, Deserialize)]
struct AddThenFail {
    cart: Uuid,
}

#[receptor]
impl Receptor<AddThenFail> for Carts {
    async fn handle(&self, cmd: AddThenFail, cx: &mut Context) -> Result<()> {
        cx.emit(ItemAdded {
            cart: cmd.cart,
            sku: "never".into(),
        })?;
        Err(Error::rejected("cart is locked"))
    }
}

/// A payload whose serialization fails.
#[derive(Debug, Clone, Deserialize)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this payload refuses to serialize",
        ))
    }
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
struct Poisoned {
    #[stream_key]
    cart: Uuid,
    payload: Unserializable,
}

#[derive(Command, Serialize, Deserialize)]
struct EmitPoison {
    cart: Uuid,
}

#[receptor]
impl Receptor<EmitPoison> for Carts {
    async fn handle(&self, cmd: EmitPoison, cx: &mut Context) -> Result<()> {
        cx.emit(Poisoned {
            cart: cmd.cart,
            payload: Unserializable,
        })?;
        Ok(())
    }
}

/// Counts how often `ItemAdded` reached an event receptor, and emits a follow-up.
#[derive(Default)]
struct Counter {
    seen: Arc<AtomicUsize>,
}

struct Tally(Arc<AtomicUsize>);

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
struct ItemCounted {
    #[stream_key]
    counter: StreamId,
    total: usize,
}

struct ItemCounter {
    tally: Arc<Tally>,
}

impl FromServices for ItemCounter {
    fn from_services(services: &Services) -> Result<Self> {
        Ok(ItemCounter {
            tally: services.require::<Tally>("ItemCounter")?,
        })
    }
}

#[receptor]
impl Receptor<ItemAdded> for ItemCounter {
    async fn handle(&self, e: ItemAdded, cx: &mut Context) -> Result<()> {
        let total = self.tally.0.fetch_add(1, Ordering::SeqCst) + 1;
        cx.emit(ItemCounted {
            counter: counter_stream(e.cart),
            total,
        })?;
        Ok(())
    }
}

/// The counter's own stream, derived from the cart's.
fn counter_stream(cart: Uuid) -> StreamId {
    StreamId::from(Uuid::from_u128(cart.as_u128() ^ 0xFFFF))
}

fn runtime() -> (Runtime, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let rt = Runtime::builder()
        .service(Tally(Arc::clone(&seen)))
        .build()
        .expect("runtime builds");
    let _ = Counter::default().seen; // the Default-based FromServices path compiles too
    (rt, seen)
}

#[tokio::test]
async fn send_returns_the_receptors_output_and_appends_its_events() {
    let (rt, _) = runtime();
    let scope = rt.scope();
    let cart = scope
        .send(OpenCart {
            owner: "ada".into(),
        })
        .await
        .unwrap();
    let events = rt.event_store().read_stream(cart.into(), 0).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].event_type, "carts.opened",
        "the wire name, not the Rust path"
    );
    assert_eq!(events[0].stream_version, 1);
    let decoded: CartOpened = serde_json::from_str(events[0].data.get()).unwrap();
    assert_eq!(
        decoded,
        CartOpened {
            cart,
            owner: "ada".into()
        }
    );
    assert_eq!(
        events[0].event_id.as_uuid().get_version_num(),
        7,
        "event ids are UUID v7"
    );
    assert_eq!(
        events[0].metadata.correlation_id,
        scope.id(),
        "the scope correlates its work"
    );
    assert_eq!(scope.emitted().len(), 1);
    scope.complete().await.unwrap();
}

// A command without receptor: `Runtime::build()` refuses it, and a command
// outside the runtime's registry is `Error::NoReceptor` at send; both in
// tests/registry.rs (a receptor-less command here would stop every runtime of
// this binary from building).

#[tokio::test]
async fn a_version_conflict_appends_nothing_and_reports_stream_expected_and_actual() {
    let (rt, seen) = runtime();
    let scope = rt.scope();
    let cart = scope.send(OpenCart { owner: "bo".into() }).await.unwrap();
    scope
        .send(AddItem {
            cart,
            sku: "a".into(),
            expected_version: 1,
        })
        .await
        .unwrap();
    let err = scope
        .send(AddItem {
            cart,
            sku: "b".into(),
            expected_version: 1,
        })
        .await
        .unwrap_err();
    match err {
        Error::Concurrency {
            stream,
            expected,
            actual,
        } => {
            assert_eq!(stream, StreamId::from(cart));
            assert_eq!(expected, ExpectedVersion::Exact(1));
            assert_eq!(actual, 2);
        }
        other => panic!("expected a concurrency error, got {other:?}"),
    }
    assert_eq!(
        stream_len(&rt, cart).await,
        2,
        "the conflicting event was not appended"
    );
    // Inline cascade receptors run before the one append of a send, on the
    // events as they will be stored: the receptor saw the rejected event too,
    // and whatever it emitted was discarded with it.
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the inline receptor ran before the append"
    );
    assert_eq!(
        scope.emitted().len(),
        3,
        "the rejected send recorded nothing"
    );
}

#[tokio::test]
async fn a_receptor_error_reaches_the_caller_and_its_events_are_not_appended() {
    let (rt, seen) = runtime();
    let scope = rt.scope();
    let cart = scope.send(OpenCart { owner: "cy".into() }).await.unwrap();
    let err = scope.send(AddThenFail { cart }).await.unwrap_err();
    assert_eq!(err.to_string(), "cart is locked");
    assert_eq!(stream_len(&rt, cart).await, 1);
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    assert_eq!(scope.emitted().len(), 1);
}

#[tokio::test]
async fn a_payload_that_fails_to_serialize_is_a_typed_error_and_the_scope_stays_usable() {
    let (rt, _) = runtime();
    let scope = rt.scope();
    let cart = Uuid::now_v7();
    let err = scope.send(EmitPoison { cart }).await.unwrap_err();
    match &err {
        Error::Serialization { type_name, source } => {
            assert_eq!(*type_name, "Poisoned");
            assert!(source.to_string().contains("refuses to serialize"));
        }
        other => panic!("expected a serialization error, got {other:?}"),
    }
    assert_eq!(stream_len(&rt, cart).await, 0);
    // The same scope goes on working.
    let other = scope.send(OpenCart { owner: "di".into() }).await.unwrap();
    assert_eq!(stream_len(&rt, other).await, 1);
    scope.complete().await.unwrap();
}

#[tokio::test]
async fn emitted_events_cascade_to_event_receptors_whose_events_are_appended_too() {
    let (rt, seen) = runtime();
    let scope = rt.scope();
    let cart = scope.send(OpenCart { owner: "ed".into() }).await.unwrap();
    scope
        .send(AddItem {
            cart,
            sku: "x".into(),
            expected_version: 1,
        })
        .await
        .unwrap();
    scope
        .send(AddItem {
            cart,
            sku: "y".into(),
            expected_version: 2,
        })
        .await
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    let cart_events = rt.event_store().read_stream(cart.into(), 0).await.unwrap();
    let counted = rt
        .event_store()
        .read_stream(counter_stream(cart), 0)
        .await
        .unwrap();
    assert_eq!(cart_events.len(), 3, "opened + 2 added");
    assert_eq!(counted.len(), 2, "one counted event per added item");
    let last: serde_json::Value = serde_json::from_str(counted[1].data.get()).unwrap();
    assert_eq!(last["total"], 2);
    // Causation: each counted event was caused by its ItemAdded event.
    assert_eq!(
        counted[0].metadata.causation_id,
        Some(cart_events[1].event_id.into())
    );
    assert_eq!(
        counted[1].metadata.causation_id,
        Some(cart_events[2].event_id.into())
    );
    assert_eq!(counted[0].metadata.correlation_id, scope.id());
}

#[tokio::test]
async fn sending_into_a_completed_scope_is_a_typed_error_and_appends_nothing() {
    let (rt, _) = runtime();
    let scope = rt.scope();
    scope.complete().await.unwrap();
    assert!(scope.is_completed());
    let err = scope
        .send(OpenCart { owner: "fi".into() })
        .await
        .unwrap_err();
    assert_matches!(err, Error::ScopeCompleted);
    let cart = Uuid::now_v7();
    let err = scope
        .publish(CartOpened {
            cart,
            owner: "x".into(),
        })
        .await
        .unwrap_err();
    assert_matches!(err, Error::ScopeCompleted);
    assert_eq!(stream_len(&rt, cart).await, 0);
}

#[tokio::test]
async fn a_receptor_needing_an_unregistered_service_fails_the_build_naming_both() {
    let err = Runtime::builder().build().unwrap_err();
    match &err {
        Error::MissingService {
            type_name,
            needed_by,
        } => {
            assert!(type_name.ends_with("Tally"), "{type_name}");
            assert_eq!(*needed_by, "ItemCounter");
        }
        other => panic!("expected MissingService, got {other:?}"),
    }
    assert!(err.to_string().contains("RuntimeBuilder::service"));
}

#[test]
fn building_outside_tokio_explains_itself() {
    let err = Runtime::builder()
        .service(Tally(Arc::default()))
        .build()
        .unwrap_err();
    assert_matches!(err, Error::NoTokioRuntime);
}

#[tokio::test]
async fn publish_expecting_no_stream_rejects_an_existing_stream() {
    let (rt, _) = runtime();
    let scope = rt.scope();
    let cart = Uuid::now_v7();
    scope
        .publish_expecting(
            CartOpened {
                cart,
                owner: "a".into(),
            },
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    let err = scope
        .publish_expecting(
            CartOpened {
                cart,
                owner: "b".into(),
            },
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap_err();
    assert_matches!(err, Error::Concurrency { actual: 1, .. });
    assert_eq!(stream_len(&rt, cart).await, 1);
}

#[tokio::test]
async fn the_registry_is_in_a_stable_order() {
    let (rt, _) = runtime();
    let names: Vec<_> = rt
        .registry()
        .receptors()
        .iter()
        .map(|r| (r.message_name, r.receptor))
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 5);
}

#[tokio::test]
async fn an_envelopes_ids_and_metadata_reach_the_events_its_command_emits() {
    let (rt, _) = runtime();
    let cause = whizbang_core::Envelope::new(OpenCart {
        owner: "upstream".into(),
    });
    let mut envelope = whizbang_core::Envelope::caused_by(OpenCart { owner: "gi".into() }, &cause);
    envelope.metadata.insert("tenant", "acme");
    let (message_id, correlation_id) = (envelope.message_id, envelope.correlation_id);
    let cart = rt.scope().send_envelope(envelope).await.unwrap();
    let events = rt.event_store().read_stream(cart.into(), 0).await.unwrap();
    let meta = &events[0].metadata;
    assert_eq!(meta.correlation_id, correlation_id);
    assert_eq!(
        meta.correlation_id, cause.correlation_id,
        "the conversation continues"
    );
    assert_eq!(meta.causation_id, Some(message_id), "caused by the command");
    assert_eq!(meta.extra.get("tenant"), Some(&serde_json::json!("acme")));
}

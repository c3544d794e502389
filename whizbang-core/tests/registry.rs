//! The registry's start-up checks, on explicit registrations (the global one is
//! exercised by every other test binary).

mod common;

use serde::{Deserialize, Serialize};
use whizbang_core::registry::{MessageRegistration, ReceptorRegistration};
use whizbang_core::{receptor, Command, Context, Error, Receptor, Registry, Result, Runtime};

#[derive(Command, Serialize, Deserialize)]
struct Ship;

#[derive(Default)]
struct Warehouse;
#[derive(Default)]
struct Courier;

#[receptor]
impl Receptor<Ship> for Warehouse {
    async fn handle(&self, _: Ship, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

// Registered by hand below (a second receptor for `Ship` in the global
// registry would fail every runtime of this binary): stands in for what
// `#[receptor]` generates.
impl whizbang_core::__private::Registered<Ship> for Courier {}

impl Receptor<Ship> for Courier {
    async fn handle(&self, _: Ship, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

static WAREHOUSE: ReceptorRegistration =
    ReceptorRegistration::of::<Warehouse, Ship>("Warehouse", "shop::warehouse");
static COURIER: ReceptorRegistration =
    ReceptorRegistration::of::<Courier, Ship>("Courier", "shop::courier");

#[test]
fn two_receptors_for_one_command_is_a_start_up_error_naming_both() {
    let err = Registry::from_parts([&COURIER, &WAREHOUSE], [], []).unwrap_err();
    match &err {
        Error::DuplicateReceptor {
            message_type,
            first,
            second,
        } => {
            assert_eq!(*message_type, "Ship");
            // Stable order: by module path, whatever order they were collected in.
            assert_eq!(first, "shop::courier::Courier");
            assert_eq!(second, "shop::warehouse::Warehouse");
        }
        other => panic!("expected DuplicateReceptor, got {other:?}"),
    }
    let again = Registry::from_parts([&WAREHOUSE, &COURIER], [], []).unwrap_err();
    assert_eq!(
        err.to_string(),
        again.to_string(),
        "collection order does not matter"
    );
}

#[test]
fn a_registry_with_no_routes_explains_how_to_link_the_handlers() {
    let err = Registry::from_parts([], [], []).unwrap_err();
    assert!(matches!(err, Error::NoRoutesRegistered));
    assert!(err.to_string().contains("use my_handlers as _;"), "{err}");
}

#[derive(Command, Serialize, Deserialize)]
#[command(name = "Ship")]
struct ShipToo;

static SHIP: MessageRegistration = MessageRegistration::of::<Ship>("Ship", "shop");
static SHIP_TOO: MessageRegistration = MessageRegistration::of::<ShipToo>("ShipToo", "shop");

#[test]
fn two_message_types_with_one_wire_name_are_rejected() {
    let err = Registry::from_parts([&WAREHOUSE], [], [&SHIP, &SHIP_TOO]).unwrap_err();
    assert_matches!(err, Error::DuplicateMessageName { name: "Ship", .. });
}

#[tokio::test]
async fn a_runtime_on_an_explicit_registry_routes_only_what_it_holds() {
    let registry = std::sync::Arc::new(Registry::from_parts([&WAREHOUSE], [], []).unwrap());
    let rt = Runtime::builder().registry(registry).build().unwrap();
    rt.scope().send(Ship).await.unwrap();
}

/// Commands nobody handles (registered by their derive, like every command).
#[derive(Command, Serialize, Deserialize)]
struct Orphan;

#[derive(Command, Serialize, Deserialize)]
#[command(name = "Bounce")]
struct BounceCheque;

static ORPHAN: MessageRegistration = MessageRegistration::of::<Orphan>("Orphan", "shop");
static BOUNCE: MessageRegistration =
    MessageRegistration::of::<BounceCheque>("BounceCheque", "shop");

#[tokio::test]
async fn build_refuses_every_command_without_receptor_in_one_error() {
    let registry = Registry::from_parts([&WAREHOUSE], [], [&ORPHAN, &SHIP, &BOUNCE]).unwrap();
    assert_eq!(
        registry
            .commands_without_receptor()
            .iter()
            .map(|m| m.name)
            .collect::<Vec<_>>(),
        ["Bounce", "Orphan"]
    );
    let err = Runtime::builder()
        .registry(std::sync::Arc::new(registry))
        .build()
        .unwrap_err();
    match &err {
        Error::CommandsWithoutReceptor { commands } => {
            assert_eq!(commands, &["Bounce", "Orphan"], "all of them, sorted");
        }
        other => panic!("expected CommandsWithoutReceptor, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.starts_with("commands `Bounce`, `Orphan` have no receptor"),
        "{message}"
    );
    assert!(
        message.contains("#[receptor]"),
        "says what to add: {message}"
    );
    assert!(
        message.contains("use your_handlers as _;"),
        "says how to link the crate: {message}"
    );
}

#[tokio::test]
async fn a_command_outside_the_runtimes_registry_is_a_typed_error_naming_it() {
    let registry = Registry::from_parts([&WAREHOUSE], [], [&SHIP]).unwrap();
    let rt = Runtime::builder()
        .registry(std::sync::Arc::new(registry))
        .build()
        .unwrap();
    let err = rt.scope().send(Orphan).await.unwrap_err();
    assert_matches!(
        err,
        Error::NoReceptor {
            message_type: "Orphan"
        }
    );
    assert!(
        err.to_string().contains("#[receptor]"),
        "the message says what to do: {err}"
    );
}

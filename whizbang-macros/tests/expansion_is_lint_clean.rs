//! The generated code compiles under the strictest lints users turn on: a
//! lint in expanded code would be a warning (or error) in their crate.
#![deny(
    clippy::pedantic,
    unused_qualifications,
    rust_2018_idioms,
    unreachable_pub,
    warnings
)]

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_core::{
    Context, LifecycleStage, Message, Perspective, PerspectiveMode, Receptor, Registry, Result,
    SyncFire,
};
use whizbang_macros::{await_perspective_sync, fire_at, perspective, receptor, Command, Event};

#[derive(Command, Serialize, Deserialize)]
#[command(output = Uuid)]
struct OpenAccount {
    owner: String,
}

#[derive(Command, Serialize, Deserialize)]
enum CloseAccount {
    Now(Uuid),
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "accounts.opened", publish)]
struct AccountOpened {
    #[stream_key]
    account: Uuid,
    owner: String,
}

#[derive(Event, Serialize, Deserialize)]
struct AccountClosed(#[stream_key] Uuid);

#[derive(Default)]
struct Accounts;

#[receptor]
impl Receptor<OpenAccount> for Accounts {
    async fn handle(&self, cmd: OpenAccount, cx: &mut Context) -> Result<Uuid> {
        let account = Uuid::now_v7();
        cx.emit(AccountOpened {
            account,
            owner: cmd.owner,
        })?;
        Ok(account)
    }
}

#[receptor]
impl Receptor<CloseAccount> for Accounts {
    async fn handle(&self, cmd: CloseAccount, cx: &mut Context) -> Result<()> {
        let CloseAccount::Now(account) = cmd;
        cx.emit(AccountClosed(account))?;
        Ok(())
    }
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct AccountView {
    owner: String,
    closed: bool,
}

struct AccountViews;

#[perspective(model = AccountView, mode = inline)]
impl AccountViews {
    fn opened(view: &mut AccountView, e: &AccountOpened) {
        view.owner.clone_from(&e.owner);
    }

    fn closed(view: &mut AccountView, _: &AccountClosed) -> std::result::Result<(), String> {
        if view.closed {
            return Err("closed twice".into());
        }
        view.closed = true;
        Ok(())
    }
}

/// A keyed perspective: its key function is generated code too.
struct OwnersByAccount;

#[perspective(model = AccountView, key = account)]
impl OwnersByAccount {
    fn opened(view: &mut AccountView, e: &AccountOpened) {
        view.owner.clone_from(&e.owner);
    }
}

#[derive(Default)]
struct Welcomer;

#[fire_at(PostPerspectiveDetached)]
#[await_perspective_sync(AccountViews, event_types = [AccountOpened], timeout_ms = 20_000)]
#[receptor]
#[await_perspective_sync(AccountViews, fire = always, trigger = true)]
impl Receptor<AccountOpened> for Welcomer {
    async fn handle(&self, _: AccountOpened, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

#[test]
fn generated_impls_name_and_route_every_message() {
    assert_eq!(AccountOpened::NAME, "accounts.opened");
    assert_eq!(OpenAccount::NAME, "OpenAccount");
    assert_eq!(AccountViews::MODE, PerspectiveMode::Inline);
    assert_eq!(
        AccountViews::EVENT_TYPES,
        ["accounts.opened", "AccountClosed"]
    );
    let registry = Registry::global().unwrap();
    assert_eq!(registry.receptors().len(), 3);
    let welcomer = registry
        .receptors()
        .iter()
        .find(|r| r.receptor == "Welcomer")
        .unwrap();
    assert_eq!(
        welcomer.stage,
        Some(LifecycleStage::PostPerspectiveDetached)
    );
    assert_eq!(welcomer.sync.len(), 2);
    assert_eq!(welcomer.sync[0].event_types, ["accounts.opened"]);
    assert_eq!(welcomer.sync[0].timeout_ms, 20_000);
    assert_eq!(welcomer.sync[1].fire, SyncFire::Always);
    assert!(!welcomer.sync[0].trigger);
    assert!(welcomer.sync[1].trigger);
    assert_eq!(registry.perspectives().len(), 2);
    const { assert!(OwnersByAccount::KEYED) };
    const { assert!(!AccountViews::KEYED) };
    assert_eq!(registry.messages().len(), 4);
}

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
use whizbang_core::{Context, Message, Perspective, PerspectiveMode, Receptor, Registry, Result};
use whizbang_macros::{perspective, receptor, Command, Event};

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
#[event(name = "accounts.opened")]
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
    assert_eq!(registry.receptors().len(), 2);
    assert_eq!(registry.perspectives().len(), 1);
    assert_eq!(registry.messages().len(), 4);
}

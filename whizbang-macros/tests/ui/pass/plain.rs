use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_core::{Context, Receptor, Registry, Result, StreamId};
use whizbang_macros::{perspective, receptor, Command, Event};

#[derive(Command, Serialize, Deserialize)]
#[command(output = Uuid)]
struct OpenAccount {
    owner: String,
}

#[derive(Command, Serialize, Deserialize)]
#[command(name = "accounts.close")]
enum CloseAccount {
    Now(Uuid),
    Later { account: Uuid, days: u32 },
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "accounts.opened")]
struct AccountOpened {
    #[stream_key]
    account: Uuid,
    owner: String,
}

#[derive(Event, Serialize, Deserialize)]
struct AccountClosed(#[stream_key] StreamId);

#[derive(Default)]
struct Accounts;

#[receptor]
impl Receptor<OpenAccount> for Accounts {
    async fn handle(&self, cmd: OpenAccount, cx: &mut Context) -> Result<Uuid> {
        let account = Uuid::now_v7();
        cx.emit(AccountOpened { account, owner: cmd.owner })?;
        Ok(account)
    }
}

#[receptor]
impl whizbang_core::Receptor<CloseAccount> for Accounts {
    async fn handle(&self, _: CloseAccount, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct Audit;

#[receptor]
impl Receptor<AccountOpened> for Audit {
    async fn handle(&self, _: AccountOpened, _: &mut Context) -> Result<()> {
        Ok(())
    }
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct AccountView {
    owner: String,
    closed: bool,
}

struct AccountViews;

#[perspective(model = AccountView, mode = inline, name = "account-views")]
impl AccountViews {
    fn opened(view: &mut AccountView, e: &AccountOpened) {
        view.owner = Self::normalise(&e.owner);
    }

    fn closed(view: &mut AccountView, _: &AccountClosed) -> std::result::Result<(), String> {
        if view.closed {
            return Err("closed twice".into());
        }
        view.closed = true;
        Ok(())
    }

    #[perspective(skip)]
    fn normalise(owner: &str) -> String {
        owner.trim().to_owned()
    }
}

struct Counts;

#[perspective(model = u64)]
impl Counts {
    fn opened(count: &mut u64, _: &AccountOpened) {
        *count += 1;
    }
}

fn main() {
    use whizbang_core::{Message, Perspective, PerspectiveMode};

    assert_eq!(AccountOpened::NAME, "accounts.opened");
    assert_eq!(CloseAccount::NAME, "accounts.close");
    assert_eq!(AccountViews::NAME, "account-views");
    assert_eq!(AccountViews::MODE, PerspectiveMode::Inline);
    assert_eq!(AccountViews::EVENT_TYPES, ["accounts.opened", "AccountClosed"]);
    assert_eq!(Counts::NAME, "Counts");
    assert_eq!(Counts::MODE, PerspectiveMode::Async);

    let registry = Registry::global().unwrap();
    assert_eq!(registry.receptors().len(), 3);
    assert_eq!(registry.perspectives().len(), 2);
    assert_eq!(registry.messages().len(), 4);
}

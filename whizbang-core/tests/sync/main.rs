//! Perspective sync (read-your-writes on async perspectives), by topic:
//! outcomes, wake-ups, failures, bounded memory, filter algebra, the
//! debugger-aware clock, concurrency, `send_and_sync` and the bad-input cases.
//! The messages and perspectives they share are declared here, once, so they
//! register into this test binary only.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod clock;
mod concurrency;
mod failures;
mod filters;
mod memory;
mod outcomes;
mod send_and_sync;
mod wakeups;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_core::{perspective, receptor, Command, Context, Event, Receptor, Result};

// ---------------------------------------------------------------- messages

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync.deposited")]
struct Deposited {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync.withdrawn")]
struct Withdrawn {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

/// Handled only by the inline `Labels` perspective, never by `Balances`.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync.renamed")]
struct Renamed {
    #[stream_key]
    account: Uuid,
    label: String,
}

/// Handled by `Charges`, which fails on negative amounts and panics on zero.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync.charged")]
struct Charged {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

/// Handled only by `Pings`: used where tracker counts must be exact.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "sync.pinged")]
struct Pinged {
    #[stream_key]
    stream: Uuid,
}

#[derive(Command, Serialize, Deserialize)]
#[command(output = i64)]
struct Deposit {
    account: Uuid,
    cents: i64,
}

#[derive(Default)]
struct Teller;

#[receptor]
impl Receptor<Deposit> for Teller {
    async fn handle(&self, cmd: Deposit, cx: &mut Context) -> Result<i64> {
        cx.emit(Deposited {
            account: cmd.account,
            cents: cmd.cents,
        })?;
        Ok(cmd.cents)
    }
}

// ------------------------------------------------------------ perspectives

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Balance {
    cents: i64,
    events: u64,
}

/// Async; handles deposits and withdrawals.
struct Balances;

#[perspective(model = Balance, name = "sync.balances")]
impl Balances {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.events += 1;
    }
    fn withdrawn(b: &mut Balance, e: &Withdrawn) {
        b.cents -= e.cents;
        b.events += 1;
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Label {
    label: String,
}

/// Inline; applies when the scope flushes.
struct Labels;

#[perspective(model = Label, name = "sync.labels", mode = inline)]
impl Labels {
    fn renamed(l: &mut Label, e: &Renamed) {
        l.label = e.label.clone();
    }
}

/// Async; fails on a negative charge, panics on a zero one.
struct Charges;

#[perspective(model = Balance, name = "sync.charges")]
impl Charges {
    fn charged(b: &mut Balance, e: &Charged) -> std::result::Result<(), String> {
        if e.cents < 0 {
            return Err(format!("negative charge of {} cents refused", e.cents));
        }
        if e.cents == 0 {
            panic!("zero charge blew up");
        }
        b.cents += e.cents;
        Ok(())
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct PingCount {
    n: u64,
}

/// Async; the only perspective of `Pinged`.
struct Pings;

#[perspective(model = PingCount, name = "sync.pings")]
impl Pings {
    fn pinged(c: &mut PingCount, _: &Pinged) {
        c.n += 1;
    }
}

/// A deposit of `cents` on `account`.
fn dep(account: Uuid, cents: i64) -> Deposited {
    Deposited { account, cents }
}

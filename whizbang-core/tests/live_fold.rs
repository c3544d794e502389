//! The live fold: `Context::aggregate` and `Runtime::aggregate` fold a
//! perspective's apply over a stream's events on demand, return the model
//! with the stream's version, and contain failures in user code.

mod common;
use common::bounded;

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::Barrier;
use uuid::Uuid;
use whizbang_core::{
    perspective, receptor, Command, Context, Error, Event, ExpectedVersion, FromServices,
    LensQuery, Receptor, Result, Runtime, Services,
};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "fold.deposited")]
struct Deposited {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

#[derive(Event, Serialize, Deserialize)]
#[event(name = "fold.withdrawn")]
struct Withdrawn {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

/// Handled by no perspective of this file: counted in the version, not applied.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "fold.noted")]
struct Noted {
    #[stream_key]
    account: Uuid,
}

/// Makes `Balances`' apply fail (an error) or panic.
#[derive(Event, Serialize, Deserialize)]
#[event(name = "fold.corrupted")]
struct Corrupted {
    #[stream_key]
    account: Uuid,
    panic: bool,
}

#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Balance {
    cents: i64,
}

/// Inline, so its stored model can be compared with the fold.
struct Balances;

#[perspective(model = Balance, mode = inline)]
impl Balances {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
    }
    fn withdrawn(b: &mut Balance, e: &Withdrawn) {
        b.cents -= e.cents;
    }
}

/// Used only to fold in these tests: it fails on `Corrupted` (error or panic).
struct Strict;

#[perspective(model = Balance)]
impl Strict {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
    }
    fn corrupted(_: &mut Balance, e: &Corrupted) -> std::result::Result<(), String> {
        assert!(!e.panic, "the ledger is corrupt");
        Err("the ledger is corrupt".into())
    }
}

#[derive(Command, Serialize, Deserialize)]
struct Withdraw {
    account: Uuid,
    cents: i64,
}

/// Folds, waits at the barrier (so two concurrent withdrawals both fold the
/// same version before either appends), then emits expecting that version.
struct Teller {
    barrier: Arc<Barrier>,
}

impl FromServices for Teller {
    fn from_services(services: &Services) -> Result<Self> {
        Ok(Teller {
            barrier: services.require::<Barrier>("Teller")?,
        })
    }
}

#[receptor]
impl Receptor<Withdraw> for Teller {
    async fn handle(&self, cmd: Withdraw, cx: &mut Context) -> Result<()> {
        let balance = cx.aggregate::<Balances>(cmd.account).await?;
        self.barrier.wait().await;
        if balance.cents < cmd.cents {
            return Err(Error::rejected("insufficient funds"));
        }
        cx.emit_expecting(
            Withdrawn {
                account: cmd.account,
                cents: cmd.cents,
            },
            ExpectedVersion::Exact(balance.version),
        )?;
        Ok(())
    }
}

fn runtime(parties: usize) -> Runtime {
    Runtime::builder()
        .service(Barrier::new(parties))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn runtime_aggregate_folds_every_event_and_returns_the_stream_version() {
    let rt = runtime(1);
    let account = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(Deposited { account, cents: 10 })
        .await
        .unwrap();
    scope.publish(Noted { account }).await.unwrap();
    scope
        .publish(Withdrawn { account, cents: 3 })
        .await
        .unwrap();
    let folded = bounded(rt.aggregate::<Balances>(account)).await.unwrap();
    assert_eq!(folded.model, Balance { cents: 7 });
    assert_eq!(folded.id, account.into());
    assert_eq!(
        folded.version, 3,
        "the version is the stream's, unhandled events included"
    );
    scope.complete().await.unwrap();
    let stored = rt
        .lens::<Balances>()
        .get_versioned(account.into())
        .await
        .unwrap();
    assert_eq!(
        stored,
        Some((Balance { cents: 7 }, 3)),
        "fold and stored model agree"
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_stream_folds_to_the_default_at_version_zero() {
    let rt = runtime(1);
    let folded = bounded(rt.aggregate::<Balances>(Uuid::now_v7()))
        .await
        .unwrap();
    assert_eq!((folded.model, folded.version), (Balance::default(), 0));
}

#[tokio::test(start_paused = true)]
async fn a_receptor_decides_from_the_fold_and_appends_at_its_version() {
    let rt = runtime(1);
    let account = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(Deposited { account, cents: 10 })
        .await
        .unwrap();
    bounded(scope.send(Withdraw { account, cents: 4 }))
        .await
        .unwrap();
    let refused = bounded(scope.send(Withdraw { account, cents: 7 })).await;
    assert_matches!(refused, Err(Error::Handler(e)) if e.to_string() == "insufficient funds");
    let folded = rt.aggregate::<Balances>(account).await.unwrap();
    assert_eq!((folded.cents, folded.version), (6, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_commands_that_folded_the_same_version_one_wins_and_one_conflicts() {
    let rt = runtime(2);
    let account = Uuid::now_v7();
    let seed = rt.scope();
    seed.publish(Deposited { account, cents: 10 })
        .await
        .unwrap();
    seed.complete().await.unwrap();
    let send = |cents| {
        let rt = rt.clone();
        tokio::spawn(async move { rt.scope().send(Withdraw { account, cents }).await })
    };
    // Both fold version 1, meet at the barrier, then both emit Exact(1).
    let (a, b) = (send(3), send(4));
    let (a, b) = (bounded(a).await.unwrap(), bounded(b).await.unwrap());
    let (won, lost) = match (a, b) {
        (Ok(()), Err(e)) => (7, e),
        (Err(e), Ok(())) => (6, e),
        other => panic!("expected one success and one conflict, got {other:?}"),
    };
    assert_matches!(
        lost,
        Error::Concurrency {
            expected: ExpectedVersion::Exact(1),
            actual: 2,
            ..
        }
    );
    let folded = rt.aggregate::<Balances>(account).await.unwrap();
    assert_eq!(
        (folded.cents, folded.version),
        (won, 2),
        "only the winner's event is stored"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_apply_is_a_fold_error_naming_perspective_stream_and_version() {
    let rt = runtime(1);
    let account = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(Deposited { account, cents: 1 })
        .await
        .unwrap();
    scope
        .publish(Corrupted {
            account,
            panic: false,
        })
        .await
        .unwrap();
    let err = bounded(rt.aggregate::<Strict>(account)).await.unwrap_err();
    match &err {
        Error::FoldFailed {
            perspective,
            stream,
            version,
            message,
        } => {
            assert_eq!(*perspective, "Strict");
            assert_eq!(*stream, account.into());
            assert_eq!(*version, 2);
            assert!(message.contains("the ledger is corrupt"), "{message}");
        }
        other => panic!("expected FoldFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("Nothing was stored"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_apply_is_contained_and_reported_as_a_fold_error() {
    let rt = runtime(1);
    let account = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(Corrupted {
            account,
            panic: true,
        })
        .await
        .unwrap();
    let err = bounded(rt.aggregate::<Strict>(account)).await.unwrap_err();
    assert_matches!(err, Error::FoldFailed { version: 1, message, .. } if message.contains("apply panicked: the ledger is corrupt"));
    // Nothing was marked failed: the stored perspective `Balances` is untouched
    // and the runtime goes on.
    scope.complete().await.unwrap();
    let listed = rt
        .lens::<Balances>()
        .list(whizbang_core::ListQuery::all())
        .await
        .unwrap();
    assert!(listed.is_empty());
}

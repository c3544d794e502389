//! The thin generated routing (issue 7, build cost): the erased receptor shim,
//! the shared output boxing, the non-generic emit helper and the generated
//! perspective `apply` behave as the fully generic adapters did.

mod common;
use common::bounded;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;
use uuid::Uuid;
use whizbang_core::store::{EventMetadata, StoredEvent};
use whizbang_core::{
    perspective, receptor, Command, Context, Event, EventId, Lens, Message, MessageId, Metadata,
    Perspective, Receptor, Result, Runtime, StreamId,
};

#[derive(Command, Serialize, Deserialize)]
#[command(output = u64)]
struct Deposit {
    account: Uuid,
    cents: u64,
}

#[derive(Command, Serialize, Deserialize)]
#[command(output = u64)]
struct Withdraw {
    account: Uuid,
    cents: u64,
}

#[derive(Command, Serialize, Deserialize)]
#[command(output = String)]
struct Describe {
    account: Uuid,
}

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
struct Deposited {
    #[stream_key]
    account: Uuid,
    cents: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
struct Withdrawn {
    #[stream_key]
    account: Uuid,
    cents: u64,
}

/// Emitted by the event receptor of `Deposited`, which decodes it from the store.
#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
struct Audited {
    #[stream_key]
    account: Uuid,
    cents: u64,
}

#[derive(Default)]
struct Accounts;

#[receptor]
impl Receptor<Deposit> for Accounts {
    async fn handle(&self, cmd: Deposit, cx: &mut Context) -> Result<u64> {
        cx.emit(Deposited {
            account: cmd.account,
            cents: cmd.cents,
        })?;
        Ok(cmd.cents * 10)
    }
}

#[receptor]
impl Receptor<Withdraw> for Accounts {
    async fn handle(&self, cmd: Withdraw, cx: &mut Context) -> Result<u64> {
        cx.emit(Withdrawn {
            account: cmd.account,
            cents: cmd.cents,
        })?;
        Ok(cmd.cents + 1)
    }
}

#[receptor]
impl Receptor<Describe> for Accounts {
    async fn handle(&self, cmd: Describe, _cx: &mut Context) -> Result<String> {
        Ok(format!("account {}", cmd.account))
    }
}

#[derive(Default)]
struct Auditor;

#[receptor]
impl Receptor<Deposited> for Auditor {
    async fn handle(&self, ev: Deposited, cx: &mut Context) -> Result<()> {
        cx.emit(Audited {
            account: ev.account,
            cents: ev.cents,
        })?;
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Balance {
    cents: i64,
    audited: u64,
}

struct Balances;

#[perspective(model = Balance, mode = inline)]
impl Balances {
    fn deposited(m: &mut Balance, e: &Deposited) {
        m.cents += i64::try_from(e.cents).unwrap_or(i64::MAX);
    }
    fn withdrawn(m: &mut Balance, e: &Withdrawn) -> std::result::Result<(), String> {
        if e.cents > 1_000_000 {
            return Err(format!("withdrawal of {} cents refused", e.cents));
        }
        m.cents -= i64::try_from(e.cents).unwrap_or(i64::MAX);
        Ok(())
    }
    fn audited(m: &mut Balance, _: &Audited) {
        m.audited += 1;
    }
}

fn stored(
    event_type: &'static str,
    json: &str,
    typed: Option<Arc<dyn std::any::Any + Send + Sync>>,
) -> StoredEvent {
    StoredEvent {
        position: 1,
        event_id: EventId::new(),
        stream_id: StreamId::from(Uuid::now_v7()),
        stream_version: 1,
        event_type: Cow::Borrowed(event_type),
        data: RawValue::from_string(json.to_owned()).unwrap(),
        metadata: EventMetadata {
            correlation_id: MessageId::new(),
            causation_id: None,
            timestamp: SystemTime::now(),
            extra: Metadata::default(),
        },
        typed,
    }
}

#[tokio::test]
async fn receptors_with_the_same_output_type_each_return_their_own_output() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let account = Uuid::now_v7();
    let a = bounded(scope.send(Deposit { account, cents: 7 }))
        .await
        .unwrap();
    let b = bounded(scope.send(Withdraw { account, cents: 7 }))
        .await
        .unwrap();
    let c = bounded(scope.send(Describe { account })).await.unwrap();
    assert_eq!((a, b), (70, 8));
    assert_eq!(c, format!("account {account}"));
    bounded(scope.complete()).await.unwrap();
}

#[tokio::test]
async fn events_emitted_decoded_and_applied_through_the_thin_adapters_reach_the_model() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let account = Uuid::now_v7();
    bounded(scope.send(Deposit { account, cents: 50 }))
        .await
        .unwrap();
    bounded(scope.send(Withdraw { account, cents: 20 }))
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
    let lens: Lens<Balances> = rt.lens();
    let model = bounded(lens.get_versioned(account.into()))
        .await
        .unwrap()
        .map(|(m, _)| m);
    // The event receptor of `Deposited` decoded the stored event and emitted
    // `Audited`; the perspective applied all three.
    assert_eq!(
        model,
        Some(Balance {
            cents: 30,
            audited: 1
        })
    );
}

#[test]
fn generated_apply_prefers_the_typed_payload_and_falls_back_to_the_json() {
    let account = Uuid::now_v7();
    let json = format!(r#"{{"account":"{account}","cents":5}}"#);
    // The typed value differs from the JSON: the typed one must be used.
    let typed: Arc<dyn std::any::Any + Send + Sync> = Arc::new(Deposited {
        account,
        cents: 100,
    });
    let mut model = Balance::default();
    let ev = stored(Deposited::NAME, &json, Some(typed));
    assert_eq!(Balances::apply(&mut model, &ev), Ok(true));
    assert_eq!(model.cents, 100);

    // No typed payload (a database store): decoded from the JSON.
    let ev = stored(Deposited::NAME, &json, None);
    assert_eq!(Balances::apply(&mut model, &ev), Ok(true));
    assert_eq!(model.cents, 105);

    // A typed payload of another type is ignored, not trusted.
    let wrong: Arc<dyn std::any::Any + Send + Sync> = Arc::new(7_u32);
    let ev = stored(Deposited::NAME, &json, Some(wrong));
    assert_eq!(Balances::apply(&mut model, &ev), Ok(true));
    assert_eq!(model.cents, 110);
}

#[test]
fn generated_apply_reports_undecodable_payloads_method_errors_and_unknown_types() {
    let mut model = Balance::default();
    let ev = stored(Deposited::NAME, r#"{"cents":"five"}"#, None);
    let err = Balances::apply(&mut model, &ev).unwrap_err();
    assert!(err.0.contains("`Deposited`"), "{err}");
    assert!(err.0.contains("does not decode"), "{err}");

    let account = Uuid::now_v7();
    let big = format!(r#"{{"account":"{account}","cents":2000000}}"#);
    let ev = stored(Withdrawn::NAME, &big, None);
    let err = Balances::apply(&mut model, &ev).unwrap_err();
    assert_eq!(err.0, "withdrawal of 2000000 cents refused");

    let ev = stored("SomethingElse", "{}", None);
    assert_eq!(Balances::apply(&mut model, &ev), Ok(false));
    assert_eq!(model, Balance::default());
}

//! Perspectives: inline and async application, dropped scopes, failures,
//! ordering and exactly-once under concurrency, and lens reads.

mod common;
use common::bounded;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_core::{
    perspective, Error, Event, LensQuery, ListQuery, Perspective, PerspectiveMode, Runtime,
    StreamId,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
struct Deposited {
    #[stream_key]
    account: Uuid,
    seq: u64,
    cents: i64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
struct Frozen {
    #[stream_key]
    account: Uuid,
    reason: String,
}

/// Not handled by any perspective.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
struct Audited {
    #[stream_key]
    account: Uuid,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Balance {
    cents: i64,
    seqs: Vec<u64>,
    frozen: bool,
}

struct InlineBalances;

#[perspective(model = Balance, mode = inline)]
impl InlineBalances {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.seqs.push(e.seq);
    }
    fn frozen(b: &mut Balance, e: &Frozen) -> Result<(), String> {
        if e.reason == "fail" {
            return Err(format!("cannot freeze: {}", e.reason));
        }
        if e.reason == "panic" {
            panic!("freeze handler blew up");
        }
        b.frozen = true;
        Ok(())
    }
}

struct AsyncBalances;

#[perspective(model = Balance, name = "balances.async")]
impl AsyncBalances {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.seqs.push(e.seq);
    }
}

fn dep(account: Uuid, seq: u64, cents: i64) -> Deposited {
    Deposited {
        account,
        seq,
        cents,
    }
}

#[test]
fn generated_metadata_lists_handled_event_types() {
    assert_eq!(InlineBalances::NAME, "InlineBalances");
    assert_eq!(InlineBalances::MODE, PerspectiveMode::Inline);
    assert_eq!(InlineBalances::EVENT_TYPES, &["Deposited", "Frozen"]);
    assert_eq!(AsyncBalances::NAME, "balances.async");
    assert_eq!(AsyncBalances::MODE, PerspectiveMode::Async);
    assert_eq!(
        AsyncBalances::event_type_ids(),
        vec![std::any::TypeId::of::<Deposited>()]
    );
}

#[tokio::test]
async fn inline_perspectives_apply_when_the_scope_completes() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope.publish(dep(a, 1, 100)).await.unwrap();
    scope.publish(Audited { account: a }).await.unwrap();
    scope.publish(dep(a, 2, 50)).await.unwrap();
    let lens = rt.lens::<InlineBalances>();
    assert_eq!(
        lens.get(a.into()).await.unwrap(),
        None,
        "nothing applies before complete"
    );
    scope.complete().await.unwrap();
    let (b, version) = lens.get_versioned(a.into()).await.unwrap().unwrap();
    assert_eq!(b.cents, 150);
    assert_eq!(b.seqs, vec![1, 2]);
    assert_eq!(
        version, 3,
        "the cursor moved past the unhandled Audited event too"
    );
}

#[tokio::test]
async fn async_perspectives_apply_in_the_background_runner() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    rt.runner().pause();
    let scope = rt.scope();
    scope.publish(dep(a, 1, 7)).await.unwrap();
    scope.complete().await.unwrap();
    let lens = rt.lens::<AsyncBalances>();
    assert_eq!(
        lens.get(a.into()).await.unwrap(),
        None,
        "paused: not applied yet"
    );
    rt.runner().resume();
    bounded(rt.wait_idle()).await;
    assert_eq!(lens.get(a.into()).await.unwrap().unwrap().cents, 7);
}

#[tokio::test]
async fn a_scope_dropped_without_complete_still_applies_its_perspectives() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    {
        let scope = rt.scope();
        scope.publish(dep(a, 1, 5)).await.unwrap();
        scope.publish(dep(a, 2, 6)).await.unwrap();
        // dropped here, never completed
    }
    bounded(rt.wait_idle()).await;
    let inline = rt
        .lens::<InlineBalances>()
        .get(a.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inline.cents, 11);
    let asynchronous = rt
        .lens::<AsyncBalances>()
        .get(a.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(asynchronous.seqs, vec![1, 2]);
}

#[tokio::test]
async fn a_failing_apply_keeps_the_good_prefix_and_marks_the_stream_failed() {
    let rt = Runtime::in_memory().unwrap();
    let (bad, good) = (Uuid::now_v7(), Uuid::now_v7());
    let scope = rt.scope();
    scope.publish(dep(bad, 1, 10)).await.unwrap();
    scope
        .publish(Frozen {
            account: bad,
            reason: "fail".into(),
        })
        .await
        .unwrap();
    scope.publish(dep(bad, 3, 99)).await.unwrap();
    scope.publish(dep(good, 1, 1)).await.unwrap();
    let err = scope.complete().await.unwrap_err();
    match &err {
        Error::PerspectiveFailed {
            perspective,
            stream,
            version,
            message,
        } => {
            assert_eq!(*perspective, "InlineBalances");
            assert_eq!(*stream, StreamId::from(bad));
            assert_eq!(*version, 2);
            assert!(message.contains("cannot freeze"), "{message}");
        }
        other => panic!("expected PerspectiveFailed, got {other:?}"),
    }
    let lens = rt.lens::<InlineBalances>();
    let (b, v) = lens.get_versioned(bad.into()).await.unwrap().unwrap();
    assert_eq!(
        (b.cents, b.seqs.clone(), v),
        (10, vec![1], 1),
        "the prefix before the failure committed"
    );
    assert_eq!(
        lens.get(good.into()).await.unwrap().unwrap().cents,
        1,
        "other streams still applied"
    );
    // The failed stream stays failed: a later scope does not skip past the bad event.
    let later = rt.scope();
    later.publish(dep(bad, 4, 1)).await.unwrap();
    assert!(matches!(
        later.complete().await,
        Err(Error::PerspectiveFailed { version: 2, .. })
    ));
    assert_eq!(lens.get(bad.into()).await.unwrap().unwrap().cents, 10);
}

#[tokio::test]
async fn a_panicking_apply_is_caught_and_reported_as_a_failure() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(Frozen {
            account: a,
            reason: "panic".into(),
        })
        .await
        .unwrap();
    let err = scope.complete().await.unwrap_err();
    assert!(err.to_string().contains("freeze handler blew up"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_applies_in_version_order_exactly_once_under_concurrent_scopes() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let mut tasks = Vec::new();
    for task in 0..20u64 {
        let rt = rt.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10u64 {
                let scope = rt.scope();
                scope.publish(dep(a, task * 10 + i, 1)).await.unwrap();
                scope.complete().await.unwrap();
            }
        }));
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
    bounded(rt.wait_idle()).await;
    let stored = rt.event_store().read_stream(a.into(), 0).await.unwrap();
    let expected: Vec<u64> = stored
        .iter()
        .map(|e| serde_json::from_str::<Deposited>(e.data.get()).unwrap().seq)
        .collect();
    for b in [
        rt.lens::<InlineBalances>()
            .get(a.into())
            .await
            .unwrap()
            .unwrap(),
        rt.lens::<AsyncBalances>()
            .get(a.into())
            .await
            .unwrap()
            .unwrap(),
    ] {
        assert_eq!(b.cents, 200, "every event applied exactly once");
        assert_eq!(b.seqs, expected, "in stream-version order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_apply_in_parallel_and_none_is_lost() {
    let rt = Runtime::builder().runner_concurrency(4).build().unwrap();
    let accounts: Vec<Uuid> = (0..300).map(|_| Uuid::now_v7()).collect();
    let mut tasks = Vec::new();
    for chunk in accounts.chunks(30) {
        let rt = rt.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for a in chunk {
                let scope = rt.scope();
                scope.publish(dep(a, 1, 3)).await.unwrap();
                scope.publish(dep(a, 2, 4)).await.unwrap();
                scope.complete().await.unwrap();
            }
        }));
    }
    for t in tasks {
        bounded(t).await.unwrap();
    }
    bounded(rt.wait_idle()).await;
    let all = rt
        .lens::<AsyncBalances>()
        .list(ListQuery::all())
        .await
        .unwrap();
    assert_eq!(all.len(), 300);
    assert!(all.iter().all(|b| b.cents == 7 && b.seqs == vec![1, 2]));
}

#[tokio::test]
async fn lens_lists_filter_page_and_order_by_id() {
    let rt = Runtime::in_memory().unwrap();
    let scope = rt.scope();
    let mut ids = Vec::new();
    for cents in 1..=10 {
        let a = Uuid::now_v7();
        ids.push(a);
        scope.publish(dep(a, 1, cents)).await.unwrap();
    }
    scope.complete().await.unwrap();
    let lens = rt.lens::<InlineBalances>();
    let even = lens
        .list(ListQuery::all().filter(|b: &Balance| b.cents % 2 == 0))
        .await
        .unwrap();
    assert_eq!(
        even.iter().map(|b| b.cents).collect::<Vec<_>>(),
        vec![2, 4, 6, 8, 10]
    );
    let page = lens
        .list(
            ListQuery::all()
                .filter(|b: &Balance| b.cents % 2 == 0)
                .offset(1)
                .limit(2),
        )
        .await
        .unwrap();
    assert_eq!(page.iter().map(|b| b.cents).collect::<Vec<_>>(), vec![4, 6]);
    assert_eq!(lens.get(Uuid::now_v7().into()).await.unwrap(), None);
}

//! Concurrent `send_and_sync`: every scope sees its own writes.

use super::{Balances, Deposit};
use crate::common::bounded;
use std::sync::Arc;
use uuid::Uuid;
use whizbang_core::{Error, LensQuery, Runtime, StreamId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_scopes_each_see_their_own_writes() {
    let rt = Runtime::in_memory().unwrap();
    let accounts: Arc<Vec<Uuid>> = Arc::new((0..50).map(|_| Uuid::now_v7()).collect());
    let mut tasks = Vec::new();
    for i in 0..1_000usize {
        let (rt, accounts) = (rt.clone(), Arc::clone(&accounts));
        tasks.push(tokio::spawn(async move {
            let account = accounts[i % accounts.len()];
            let scope = rt.scope();
            let out = scope
                .send_and_sync(Deposit { account, cents: 1 })
                .await?
                .into_synced()?;
            // This scope's own deposit: where it landed on the account's stream,
            // which 20 scopes share (so "some deposit is applied" proves nothing).
            let own = scope
                .emitted()
                .last()
                .map(|e| (e.stream_id, e.stream_version));
            // Read-your-writes: the model has applied at least that version.
            let model = rt.lens::<Balances>().get_versioned(account.into()).await?;
            scope.complete().await?;
            Ok::<_, Error>((out, account, own, model.map(|(b, v)| (b.events, v))))
        }));
    }
    let mut synced = 0;
    for t in tasks {
        let (out, account, own, model) = bounded(t).await.unwrap().unwrap();
        assert_eq!(out, 1);
        let (own_stream, own_version) = own.expect("the scope emitted its deposit");
        assert_eq!(own_stream, StreamId::from(account));
        let (events, applied) = model.expect("the model exists once the deposit is synced");
        assert!(
            applied >= own_version,
            "the model is at version {applied}, before this scope's own event at {own_version}"
        );
        assert_eq!(
            events, applied,
            "every event on the stream is a deposit: the model's content matches its version"
        );
        synced += 1;
    }
    assert_eq!(synced, 1_000);
    bounded(rt.wait_idle()).await;
    let total: i64 = rt
        .lens::<Balances>()
        .list(whizbang_core::ListQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|b| b.cents)
        .sum();
    assert_eq!(total, 1_000, "none lost, none applied twice");
    assert_eq!(rt.sync_tracker().waiter_count(), 0);
}

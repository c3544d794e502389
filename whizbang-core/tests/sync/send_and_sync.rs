//! `send_and_sync` and the synced lens.

use super::{Balances, Deposit};
use crate::assert_matches;
use crate::common::{bounded, ms, paused_runtime};
use uuid::Uuid;
use whizbang_core::{
    Error, LensQuery, PerspectiveSyncOptions, Runtime, SyncFilter, SyncLensExt, SyncOutcome,
};

#[tokio::test]
async fn send_and_sync_returns_the_output_and_the_async_model_is_readable_right_after() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    let out = bounded(scope.send_and_sync(Deposit {
        account: a,
        cents: 42,
    }))
    .await
    .unwrap()
    .into_synced()
    .unwrap();
    assert_eq!(out, 42);
    let b = rt.lens::<Balances>().get(a.into()).await.unwrap().unwrap();
    assert_eq!(b.cents, 42);
}

#[tokio::test]
async fn send_and_sync_with_reports_each_perspective_and_times_out_as_an_outcome() {
    let rt = paused_runtime();
    let scope = rt.scope();
    let sent = bounded(scope.send_and_sync_with(
        Deposit {
            account: Uuid::now_v7(),
            cents: 1,
        },
        PerspectiveSyncOptions::default().timeout(ms(100)),
    ))
    .await
    .unwrap();
    let (out, results) = (sent.output, sent.results);
    assert_eq!(out, 1);
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].perspective, "sync.balances");
    assert_eq!(results[0].outcome, SyncOutcome::TimedOut);
}

#[tokio::test]
async fn a_synced_lens_returns_the_fresh_model_after_a_send() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .send(Deposit {
            account: a,
            cents: 9,
        })
        .await
        .unwrap();
    let lens = rt
        .lens::<Balances>()
        .with_sync::<Balances>(&scope.sync_awaiter(), SyncFilter::current_scope());
    let b = bounded(lens.get(a.into())).await.unwrap().unwrap();
    assert_eq!(b.cents, 9);
    let all = bounded(lens.list(whizbang_core::ListQuery::all()))
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_synced_lens_errors_on_timeout_rather_than_returning_stale_data() {
    let rt = paused_runtime();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .send(Deposit {
            account: a,
            cents: 9,
        })
        .await
        .unwrap();
    let lens = rt.lens::<Balances>().with_sync::<Balances>(
        &scope.sync_awaiter(),
        SyncFilter::current_scope().with_timeout(ms(100)),
    );
    let err = bounded(lens.get(a.into())).await.unwrap_err();
    assert_matches!(err, Error::PerspectiveSyncTimeout { .. });
}

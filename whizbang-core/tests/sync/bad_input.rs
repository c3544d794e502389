//! Bad input: typed errors that say what to do.

use super::{Balances, Labels};
use crate::assert_matches;
use crate::common::{invalid_input, ms};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::{Error, PerspectiveSyncOptions, Registry, Runtime, SyncFilter};

#[tokio::test]
async fn current_scope_on_an_awaiter_without_a_scope_is_invalid_input_saying_what_to_do() {
    let rt = Runtime::in_memory().unwrap();
    let err = rt
        .sync_awaiter()
        .wait::<Balances>(SyncFilter::current_scope())
        .await
        .unwrap_err();
    let message = invalid_input(&err);
    assert!(message.contains("scope.sync_awaiter()"), "{message}");
    assert!(message.contains("sync.balances"), "{message}");
    // Nested inside a combinator too.
    let err = rt
        .sync_awaiter()
        .wait::<Balances>(SyncFilter::all().and(SyncFilter::current_scope()))
        .await
        .unwrap_err();
    assert_matches!(err, Error::InvalidInput(_));
}

#[tokio::test]
async fn waiting_on_a_perspective_the_runtime_does_not_know_is_unknown_perspective() {
    let labels_only = Registry::global().unwrap().perspective::<Labels>().unwrap();
    let registry = Arc::new(Registry::from_parts([], [labels_only], []).unwrap());
    let rt = Runtime::builder().registry(registry).build().unwrap();
    let err = rt
        .sync_awaiter()
        .wait::<Balances>(SyncFilter::all())
        .await
        .unwrap_err();
    assert_matches!(err, Error::UnknownPerspective { name } if name == "sync.balances");
    let err = rt
        .sync_awaiter()
        .wait::<Balances>(SyncFilter::for_stream(Uuid::now_v7()).with_timeout(ms(10)))
        .await
        .unwrap_err();
    assert_matches!(err, Error::UnknownPerspective { .. });
}

#[test]
fn a_negative_timeout_is_invalid_input() {
    let err = PerspectiveSyncOptions::new(SyncFilter::all())
        .timeout_ms(-1)
        .unwrap_err();
    let message = invalid_input(&err);
    assert!(message.contains("-1"), "{message}");
    let ok = PerspectiveSyncOptions::new(SyncFilter::all())
        .timeout_ms(0)
        .unwrap();
    assert_eq!(ok.timeout, Duration::ZERO);
}

#[test]
fn a_filter_converts_into_options_with_the_five_second_debugger_aware_default() {
    let options: PerspectiveSyncOptions = SyncFilter::current_scope().into();
    assert_eq!(options.timeout, Duration::from_secs(5));
    assert!(options.debugger_aware);
    assert_eq!(options.filter, SyncFilter::CurrentScope);
}

//! A failing or panicking apply wakes its waiters at once with the failure.

use super::{Charged, Charges};
use crate::assert_matches;
use crate::common::{bounded, failed, paused_runtime, scope_wait, until};
use std::time::{Duration, Instant};
use uuid::Uuid;
use whizbang_core::{Error, Runtime, StreamId, SyncFilter, SyncOutcome};

#[tokio::test]
async fn a_failing_apply_wakes_its_waiters_at_once_with_the_failure() {
    let rt = Runtime::in_memory().unwrap();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(Charged {
            account: a,
            cents: -5,
        })
        .await
        .unwrap();
    let started = Instant::now();
    let r = scope_wait::<Charges>(
        &scope,
        SyncFilter::current_scope().with_timeout(Duration::from_secs(5)),
    )
    .await;
    let wall = started.elapsed();
    let (stream, version, message) = failed(&r.outcome);
    assert_eq!(stream, StreamId::from(a));
    assert_eq!(version, 1);
    assert!(message.contains("negative charge of -5"), "{message}");
    assert!(
        wall < Duration::from_secs(1),
        "woke at {wall:?}, not at once"
    );
    let err = r.into_result().unwrap_err();
    assert_matches!(
        err,
        Error::PerspectiveFailed {
            perspective: "sync.charges",
            ..
        }
    );
}

#[tokio::test]
async fn a_panicking_apply_wakes_its_waiters_at_once_with_the_panic_message() {
    let rt = paused_runtime();
    let a = Uuid::now_v7();
    let scope = rt.scope();
    scope
        .publish(Charged {
            account: a,
            cents: 0,
        })
        .await
        .unwrap();
    let aw = scope.sync_awaiter();
    let waiting = tokio::spawn(async move {
        aw.wait::<Charges>(SyncFilter::current_scope().with_timeout(Duration::from_secs(60)))
            .await
    });
    until(|| rt.sync_tracker().waiter_count() > 0).await;
    let started = Instant::now();
    rt.runner().resume();
    let r = bounded(waiting).await.unwrap().unwrap();
    assert!(
        matches!(&r.outcome, SyncOutcome::Failed { message, .. } if message.contains("zero charge blew up")),
        "{r:?}"
    );
    // Woken by the failure, not by its 60 s timeout (a wide margin: this is
    // wall time on a shared machine, not a performance check).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

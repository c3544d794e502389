//! The filter algebra: `and` is intersection, `or` is union, chains fold left.

use super::{dep, Balances, Deposited, Withdrawn};
use crate::common::{paused_runtime, scope_wait};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::{SyncFilter, SyncOutcome};

/// Events: s1: D, W, D; s2: D, W. Returns how many the filter awaits.
async fn awaited(filter: SyncFilter, s1: Uuid, s2: Uuid) -> usize {
    let rt = paused_runtime();
    let scope = rt.scope();
    scope.publish(dep(s1, 1)).await.unwrap();
    scope
        .publish(Withdrawn {
            account: s1,
            cents: 1,
        })
        .await
        .unwrap();
    scope.publish(dep(s1, 1)).await.unwrap();
    scope.publish(dep(s2, 1)).await.unwrap();
    scope
        .publish(Withdrawn {
            account: s2,
            cents: 1,
        })
        .await
        .unwrap();
    let r = scope_wait::<Balances>(&scope, filter.with_timeout(Duration::ZERO)).await;
    let expect = if r.events_awaited == 0 {
        SyncOutcome::NoPendingEvents
    } else {
        SyncOutcome::TimedOut
    };
    assert_eq!(r.outcome, expect);
    r.events_awaited
}

#[tokio::test]
async fn and_is_intersection_or_is_union_and_chains_fold_left() {
    let (s1, s2) = (Uuid::now_v7(), Uuid::now_v7());
    let st1 = || SyncFilter::for_stream(s1);
    let st2 = || SyncFilter::for_stream(s2);
    let dep_t = SyncFilter::for_event_types::<Deposited>;
    let wd_t = SyncFilter::for_event_types::<Withdrawn>;

    assert_eq!(awaited(SyncFilter::all(), s1, s2).await, 5);
    assert_eq!(awaited(SyncFilter::current_scope(), s1, s2).await, 5);
    assert_eq!(awaited(st1(), s1, s2).await, 3);
    assert_eq!(awaited(dep_t(), s1, s2).await, 3);
    assert_eq!(
        awaited(
            SyncFilter::for_event_types::<(Deposited, Withdrawn)>(),
            s1,
            s2
        )
        .await,
        5
    );
    assert_eq!(awaited(st1().and(dep_t()), s1, s2).await, 2, "∩");
    assert_eq!(awaited(st1().and(st2()), s1, s2).await, 0, "disjoint ∩");
    assert_eq!(awaited(st1().or(dep_t()), s1, s2).await, 4, "∪");
    assert_eq!(awaited(st1().or(st2()), s1, s2).await, 5);
    // (s1 ∧ W) ∨ s2 = {s1:W} ∪ {s2:D, s2:W} = 3
    assert_eq!(awaited(st1().and(wd_t()).or(st2()), s1, s2).await, 3);
    // s1 ∧ (W ∨ s2) = {s1:W} = 1: not the same, so the chain folds left
    assert_eq!(awaited(st1().and(wd_t().or(st2())), s1, s2).await, 1);
    // (s1 ∨ s2) ∧ W = 2
    assert_eq!(awaited(st1().or(st2()).and(wd_t()), s1, s2).await, 2);
    // s1 ∨ (s2 ∧ W) = 4
    assert_eq!(awaited(st1().or(st2().and(wd_t())), s1, s2).await, 4);
}

//! Lifecycle stages: when an event receptor runs, and the sync waits that
//! must hold before it does.

use crate::perspective::Perspective;
use std::any::TypeId;

/// When an event receptor fires, relative to the event's journey. Each point
/// comes `Inline` (in the flow, before it moves on: it must not wait) or
/// `Detached` (on its own task, so it may wait for perspectives).
///
/// | point | fires |
/// | --- | --- |
/// | `PreDistribute` / `PostDistribute` | with the append, before / as the default receptors |
/// | `PreOutbox` / `PostOutbox` | after distribution, where an outbox row is written |
/// | `PreInbox` / `PostInbox` | for messages received from other processes (needs an inbox backend) |
/// | `PrePerspective` / `PostPerspective` | at the flush, around the event's perspectives |
/// | `PostAllPerspectives` | after the whole flush |
///
/// Event receptors without `#[fire_at]` run at `PostDistributeInline`, or at
/// `PostDistributeDetached` when they await perspective sync.
///
/// The inline distribute and outbox stages are a send's cascade: they run
/// *before* the send's one append, on the events as they will be stored (ids,
/// payload, metadata; `position` and `stream_version` are not assigned yet and
/// read 0), and what they emit is appended together with the send's events, or
/// nothing is when any of them fails. The detached ones start after the append,
/// on the stored events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)] // the table above documents each point
pub enum LifecycleStage {
    PreDistributeInline,
    PreDistributeDetached,
    PostDistributeInline,
    PostDistributeDetached,
    PreOutboxInline,
    PreOutboxDetached,
    PostOutboxInline,
    PostOutboxDetached,
    PreInboxInline,
    PreInboxDetached,
    PostInboxInline,
    PostInboxDetached,
    PrePerspectiveInline,
    PrePerspectiveDetached,
    PostPerspectiveInline,
    PostPerspectiveDetached,
    PostAllPerspectivesInline,
    PostAllPerspectivesDetached,
}

impl LifecycleStage {
    /// Every stage, in firing order.
    pub const ALL: [LifecycleStage; 18] = [
        LifecycleStage::PreDistributeInline,
        LifecycleStage::PreDistributeDetached,
        LifecycleStage::PostDistributeInline,
        LifecycleStage::PostDistributeDetached,
        LifecycleStage::PreOutboxInline,
        LifecycleStage::PreOutboxDetached,
        LifecycleStage::PostOutboxInline,
        LifecycleStage::PostOutboxDetached,
        LifecycleStage::PreInboxInline,
        LifecycleStage::PreInboxDetached,
        LifecycleStage::PostInboxInline,
        LifecycleStage::PostInboxDetached,
        LifecycleStage::PrePerspectiveInline,
        LifecycleStage::PrePerspectiveDetached,
        LifecycleStage::PostPerspectiveInline,
        LifecycleStage::PostPerspectiveDetached,
        LifecycleStage::PostAllPerspectivesInline,
        LifecycleStage::PostAllPerspectivesDetached,
    ];

    /// Whether receptors at this stage run inline (and so must never wait).
    #[must_use]
    pub const fn is_inline(self) -> bool {
        (self as u8) % 2 == 0
    }

    /// Whether this stage fires for messages from other processes only.
    #[must_use]
    pub const fn is_inbox(self) -> bool {
        matches!(
            self,
            LifecycleStage::PreInboxInline
                | LifecycleStage::PreInboxDetached
                | LifecycleStage::PostInboxInline
                | LifecycleStage::PostInboxDetached
        )
    }

    /// Whether this stage fires with an append (distribute and outbox stages:
    /// inline ones just before it, detached ones after it), rather than at the flush.
    #[must_use]
    pub const fn fires_at_append(self) -> bool {
        (self as u8) < LifecycleStage::PreInboxInline as u8
    }

    /// The stages that fire with an append, in order.
    pub(crate) fn at_append() -> impl Iterator<Item = LifecycleStage> {
        LifecycleStage::ALL
            .into_iter()
            .take_while(|s| s.fires_at_append())
    }
}

/// Whether a receptor runs when its sync wait did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncFire {
    /// Run only when every awaited perspective synced; otherwise the dispatch
    /// fails with [`Error::PerspectiveSyncTimeout`](crate::Error::PerspectiveSyncTimeout)
    /// (or [`Error::PerspectiveFailed`](crate::Error::PerspectiveFailed)).
    OnSuccess,
    /// Always run; read the outcome with [`Context::sync_results`](crate::Context::sync_results).
    Always,
}

/// One `#[await_perspective_sync(..)]` of a receptor.
#[derive(Debug)]
pub struct SyncRequirement {
    /// The perspective's name.
    pub perspective: &'static str,
    /// The perspective's type.
    pub perspective_type: fn() -> TypeId,
    /// Event types to await in the current scope; empty = the incoming event itself.
    pub event_types: &'static [&'static str],
    /// The timeout in milliseconds.
    pub timeout_ms: u64,
    /// Run on success only, or always.
    pub fire: SyncFire,
}

impl SyncRequirement {
    /// The requirement to await perspective `P`. For generated code.
    #[doc(hidden)]
    #[must_use]
    pub const fn of<P: Perspective>(
        event_types: &'static [&'static str],
        timeout_ms: u64,
        fire: SyncFire,
    ) -> Self {
        SyncRequirement {
            perspective: P::NAME,
            perspective_type: TypeId::of::<P>,
            event_types,
            timeout_ms,
            fire,
        }
    }
}

//! Lifecycle stages: when an event receptor runs, as a point in the event's
//! journey and a mode (in the flow, or on its own task), and the rules that
//! go with them (an inline stage never waits; the default sync timeout).
//!
//! Owns [`LifecycleStage`], [`StagePoint`], [`StageMode`] and [`SyncFire`].
//! It imports nothing of the crate: `error`, the receptor contract, the
//! registry and dispatch all build on it. The `#[fire_at]` and
//! `#[await_perspective_sync]` macros name its constants and call its
//! `const fn`s, so the rules live here only.

use std::fmt;

/// A point in an event's journey where receptors may fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StagePoint {
    /// With the append, before the default receptors.
    PreDistribute,
    /// With the append, as the default receptors.
    PostDistribute,
    /// In the outbox publisher, before an outbound event is published.
    PreOutbox,
    /// In the outbox publisher, after an outbound event was published.
    PostOutbox,
    /// Before a message received from another process is handled (an inbox, through `Scope::receive`).
    PreInbox,
    /// After a message received from another process is handled (an inbox, through `Scope::receive`).
    PostInbox,
    /// At the flush, before the event's perspectives.
    PrePerspective,
    /// At the flush, after the event's perspectives.
    PostPerspective,
    /// After the whole flush.
    PostAllPerspectives,
}

impl StagePoint {
    /// Whether this point fires for messages from other processes only.
    #[must_use]
    pub const fn is_inbox(self) -> bool {
        matches!(self, StagePoint::PreInbox | StagePoint::PostInbox)
    }

    /// Whether this point fires in the outbox publisher (for outbound events only).
    #[must_use]
    pub const fn is_outbox(self) -> bool {
        matches!(self, StagePoint::PreOutbox | StagePoint::PostOutbox)
    }

    /// Whether this point fires with an append (the distribute points),
    /// rather than at the flush or in the outbox publisher.
    #[must_use]
    pub const fn fires_at_append(self) -> bool {
        matches!(self, StagePoint::PreDistribute | StagePoint::PostDistribute)
    }
}

/// How receptors at a point run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StageMode {
    /// In the flow, before it moves on: it must not wait.
    Inline,
    /// On its own task, so it may wait for perspectives.
    Detached,
}

/// When an event receptor fires: a [`StagePoint`] and a [`StageMode`].
///
/// | point | fires |
/// | --- | --- |
/// | `PreDistribute` / `PostDistribute` | with the append, before / as the default receptors |
/// | `PreOutbox` / `PostOutbox` | in the outbox publisher, before / after an outbound event (`#[event(publish)]`) is published |
/// | `PreInbox` / `PostInbox` | for messages received from other processes (an inbox, through `Scope::receive`) |
/// | `PrePerspective` / `PostPerspective` | at the flush, around the event's perspectives |
/// | `PostAllPerspectives` | after the whole flush |
///
/// Each point has a constant per mode, named point then mode
/// (`LifecycleStage::PostPerspectiveDetached`), which is what
/// `#[fire_at(PostPerspectiveDetached)]` names.
///
/// Event receptors without `#[fire_at]` run at `PostDistributeInline`, or at
/// `PostDistributeDetached` when they await perspective sync.
///
/// The inline distribute stages are a send's cascade: they run
/// *before* the send's one append, on the events as they will be stored (ids,
/// payload, metadata; `position` and `stream_version` are not assigned yet and
/// read 0), and what they emit is appended together with the send's events, or
/// nothing is when any of them fails. The detached ones start after the append,
/// on the stored events.
///
/// ```
/// use whizbang_core::stage::{LifecycleStage, StageMode, StagePoint};
///
/// let stage = LifecycleStage::PostPerspectiveDetached;
/// assert_eq!(stage, LifecycleStage::new(StagePoint::PostPerspective, StageMode::Detached));
/// assert!(!stage.is_inline());
/// assert_eq!(stage.to_string(), "PostPerspectiveDetached");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LifecycleStage {
    /// Where in the journey.
    pub point: StagePoint,
    /// Inline or detached.
    pub mode: StageMode,
}

/// Declares each stage once: the associated constants of [`LifecycleStage`],
/// the module-level constants the macros name, `ALL` and the names.
macro_rules! stages {
    ($($point:ident: $inline:ident, $detached:ident;)*) => {
        #[allow(non_upper_case_globals)] // named as users write them in `#[fire_at]`
        impl LifecycleStage {
            $(
                #[doc = concat!("`", stringify!($point), "`, inline.")]
                pub const $inline: LifecycleStage =
                    LifecycleStage::new(StagePoint::$point, StageMode::Inline);
                #[doc = concat!("`", stringify!($point), "`, detached.")]
                pub const $detached: LifecycleStage =
                    LifecycleStage::new(StagePoint::$point, StageMode::Detached);
            )*

            /// Every stage, in firing order.
            pub const ALL: [LifecycleStage; 18] = [$(LifecycleStage::$inline, LifecycleStage::$detached),*];

            /// The stage's name, as `#[fire_at]` spells it.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match (self.point, self.mode) {
                    $(
                        (StagePoint::$point, StageMode::Inline) => stringify!($inline),
                        (StagePoint::$point, StageMode::Detached) => stringify!($detached),
                    )*
                }
            }
        }

        /// The stages as constants, for generated code: a name written in
        /// `#[fire_at(..)]` resolves here (and rustc suggests the near one).
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        pub mod names {
            use super::LifecycleStage;
            $(
                pub const $inline: LifecycleStage = LifecycleStage::$inline;
                pub const $detached: LifecycleStage = LifecycleStage::$detached;
            )*
            pub use super::{awaiting_at, sync_timeout_ms};
        }
    };
}

stages! {
    PreDistribute: PreDistributeInline, PreDistributeDetached;
    PostDistribute: PostDistributeInline, PostDistributeDetached;
    PreOutbox: PreOutboxInline, PreOutboxDetached;
    PostOutbox: PostOutboxInline, PostOutboxDetached;
    PreInbox: PreInboxInline, PreInboxDetached;
    PostInbox: PostInboxInline, PostInboxDetached;
    PrePerspective: PrePerspectiveInline, PrePerspectiveDetached;
    PostPerspective: PostPerspectiveInline, PostPerspectiveDetached;
    PostAllPerspectives: PostAllPerspectivesInline, PostAllPerspectivesDetached;
}

impl LifecycleStage {
    /// The stage at `point` in `mode`.
    #[must_use]
    pub const fn new(point: StagePoint, mode: StageMode) -> Self {
        LifecycleStage { point, mode }
    }

    /// Whether receptors at this stage run inline (and so must never wait).
    #[must_use]
    pub const fn is_inline(self) -> bool {
        matches!(self.mode, StageMode::Inline)
    }

    /// Whether this stage fires for messages from other processes only.
    #[must_use]
    pub const fn is_inbox(self) -> bool {
        self.point.is_inbox()
    }

    /// Whether this stage fires with an append (distribute stages: inline
    /// ones just before it, detached ones after it), rather than at the
    /// flush or in the outbox publisher.
    #[must_use]
    pub const fn fires_at_append(self) -> bool {
        self.point.fires_at_append()
    }

    /// The stages that fire with an append, in order.
    pub(crate) fn at_append() -> impl Iterator<Item = LifecycleStage> {
        LifecycleStage::ALL
            .into_iter()
            .filter(|s| s.fires_at_append())
    }
}

impl fmt::Debug for LifecycleStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for LifecycleStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a receptor may not await perspective sync at an inline stage: the one
/// sentence both the compile-time check and [`Error::InlineStageWait`](crate::Error::InlineStageWait) give.
pub const INLINE_AWAIT_RULE: &str = "a receptor that awaits perspective sync must fire at a \
     Detached stage: waiting at an inline stage would deadlock the flush it waits for. Use the \
     Detached variant of the stage";

/// Timeout of an `#[await_perspective_sync]` without `timeout_ms`, in milliseconds.
pub const DEFAULT_SYNC_TIMEOUT_MS: u64 = 5000;

/// `stage`, checked for a receptor that awaits perspective sync: in a constant
/// (as generated code uses it) an inline stage fails the build with
/// [`INLINE_AWAIT_RULE`].
///
/// # Panics
/// When `stage` is inline: only ever evaluated at compile time.
#[doc(hidden)]
#[must_use]
pub const fn awaiting_at(stage: LifecycleStage) -> LifecycleStage {
    if stage.is_inline() {
        panic!("{}", INLINE_AWAIT_RULE);
    }
    stage
}

/// The timeout of a sync wait: `timeout_ms`, or [`DEFAULT_SYNC_TIMEOUT_MS`].
#[must_use]
pub const fn sync_timeout_ms(timeout_ms: Option<u64>) -> u64 {
    match timeout_ms {
        Some(ms) => ms,
        None => DEFAULT_SYNC_TIMEOUT_MS,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_is_a_point_and_a_mode_named_point_then_mode() {
        for stage in LifecycleStage::ALL {
            let mode = match stage.mode {
                StageMode::Inline => "Inline",
                StageMode::Detached => "Detached",
            };
            assert_eq!(stage.name(), format!("{:?}{mode}", stage.point));
            assert_eq!(stage.is_inline(), stage.mode == StageMode::Inline);
        }
        let mut sorted = LifecycleStage::ALL;
        sorted.sort();
        assert_eq!(sorted, LifecycleStage::ALL, "ALL is in firing order");
    }

    #[test]
    fn append_stages_are_the_distribute_points() {
        let points: Vec<_> = LifecycleStage::at_append().map(|s| s.point).collect();
        assert_eq!(
            points,
            [
                StagePoint::PreDistribute,
                StagePoint::PreDistribute,
                StagePoint::PostDistribute,
                StagePoint::PostDistribute,
            ]
        );
    }

    #[test]
    fn a_wait_without_timeout_takes_the_default() {
        assert_eq!(sync_timeout_ms(None), DEFAULT_SYNC_TIMEOUT_MS);
        assert_eq!(sync_timeout_ms(Some(0)), 0);
        assert_eq!(
            awaiting_at(LifecycleStage::PostPerspectiveDetached),
            LifecycleStage::PostPerspectiveDetached
        );
    }
}

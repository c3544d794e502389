//! Where a rebuild beside live stands, as a store records it and a
//! process reads it back (see [`rebuild`](super::rebuild)).

use std::time::Duration;

/// Where a rebuild stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RebuildPhase {
    /// Not started yet.
    #[default]
    Starting,
    /// Folding the event store into the shadow generation, live models untouched.
    Building,
    /// Live applies fenced: the last events go to the shadow and it is swapped in.
    Swapping,
    /// Swapped: the rebuilt models are the live ones.
    Done,
    /// Stopped with an error; the live models are as they were.
    Failed,
}

impl RebuildPhase {
    /// The phase as stored and shown (`building`, `swapping`, ..).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RebuildPhase::Starting => "starting",
            RebuildPhase::Building => "building",
            RebuildPhase::Swapping => "swapping",
            RebuildPhase::Done => "done",
            RebuildPhase::Failed => "failed",
        }
    }

    /// The phase [`as_str`](Self::as_str) names, if any.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        [
            RebuildPhase::Starting,
            RebuildPhase::Building,
            RebuildPhase::Swapping,
            RebuildPhase::Done,
            RebuildPhase::Failed,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }
}

/// How far a rebuild got: events folded into the shadow out of the events of
/// the streams it covers, the rate, and the time left at that rate.
#[derive(Clone, Debug, PartialEq, Default)]
#[non_exhaustive]
pub struct RebuildProgress {
    /// The perspective being rebuilt (its live name).
    pub perspective: String,
    /// The version of the apply code it is rebuilt with.
    pub version: u32,
    /// Where it stands.
    pub phase: RebuildPhase,
    /// Events the shadow reflects (done before a resume included).
    pub done: u64,
    /// Events of the streams the perspective handles, at the last count
    /// (grows while new events arrive).
    pub total: u64,
    /// Events folded per second in this run (0 until measured).
    pub rate: f64,
    /// Time left at [`rate`](Self::rate) (`None` until measured).
    pub eta: Option<Duration>,
    /// Events the shadow already reflected when this run started (a resume).
    pub resumed_from: u64,
    /// The error a failed rebuild stopped with.
    pub error: Option<String>,
}

impl RebuildProgress {
    /// A progress report (for a store reading one back).
    #[must_use]
    pub fn new(perspective: impl Into<String>, version: u32, phase: RebuildPhase) -> Self {
        RebuildProgress {
            perspective: perspective.into(),
            version,
            phase,
            ..Self::default()
        }
    }

    /// `done / total`, from 0.0 to 1.0 (1.0 when there is nothing to do).
    #[must_use]
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        }
    }
}

/// What [`RebuildStore::begin`](super::RebuildStore::begin) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RebuildStart {
    /// No shadow to resume: it starts from an empty shadow.
    Fresh,
    /// An interrupted rebuild to the same version left a shadow: it resumes
    /// from the shadow's cursors.
    Resume,
}

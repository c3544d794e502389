//! What [`Scope::send_and_sync`](crate::Scope::send_and_sync) returns: the
//! command's output, always, with each perspective's sync outcome.

use crate::error::Error;
use crate::sync::{SyncOutcome, SyncResult};

/// A command's output (its events are stored) and how each perspective that
/// handles its events fared. Returned by
/// [`Scope::send_and_sync`](crate::Scope::send_and_sync).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendAndSync<O> {
    /// What the command's receptor returned.
    pub output: O,
    /// One result per perspective that handles the command's events.
    pub results: Vec<SyncResult>,
}

impl<O> SendAndSync<O> {
    /// Whether every perspective applied the command's events.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.results.iter().all(SyncResult::is_synced)
    }

    /// The output, whatever the sync outcome.
    #[must_use]
    pub fn into_output(self) -> O {
        self.output
    }

    /// The output when every perspective synced; otherwise a [`NotSynced`]
    /// that still carries it (the command's events are stored either way).
    ///
    /// # Errors
    /// [`NotSynced`] when a perspective timed out or failed.
    pub fn into_synced(self) -> Result<O, NotSynced<O>> {
        if self.is_synced() {
            Ok(self.output)
        } else {
            Err(NotSynced {
                output: self.output,
                results: self.results,
            })
        }
    }
}

/// A `send_and_sync` whose events are stored but not (yet) applied by every
/// perspective. Carries the command's output: do not send the command again.
/// Converts into [`Error::NotSynced`] so `?` works.
pub struct NotSynced<O> {
    output: O,
    results: Vec<SyncResult>,
}

impl<O> NotSynced<O> {
    /// The command's output.
    #[must_use]
    pub fn output(&self) -> &O {
        &self.output
    }

    /// The command's output, taken.
    #[must_use]
    pub fn into_output(self) -> O {
        self.output
    }

    /// Every perspective's result (synced ones too).
    #[must_use]
    pub fn results(&self) -> &[SyncResult] {
        &self.results
    }

    /// The first perspective that did not sync.
    fn first_miss(&self) -> Option<&SyncResult> {
        self.results.iter().find(|r| !r.is_synced())
    }
}

/// Says what happened instead of a sync, for messages.
fn outcome_text(result: &SyncResult) -> String {
    match &result.outcome {
        SyncOutcome::Synced | SyncOutcome::NoPendingEvents => "it applied them".to_owned(),
        SyncOutcome::TimedOut => format!(
            "the wait timed out after {:?} with {} event(s) awaited",
            result.elapsed, result.events_awaited
        ),
        SyncOutcome::Failed {
            stream,
            version,
            message,
        } => format!("it failed on stream {stream} at version {version}: {message}"),
    }
}

impl<O> std::fmt::Debug for NotSynced<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotSynced")
            .field("results", &self.results)
            .finish_non_exhaustive()
    }
}

impl<O> std::fmt::Display for NotSynced<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.first_miss() {
            Some(miss) => write!(f, "{}", miss_error(miss)),
            None => {
                f.write_str("the command's events are stored and every perspective applied them")
            }
        }
    }
}

impl<O> std::error::Error for NotSynced<O> {}

fn miss_error(miss: &SyncResult) -> Error {
    Error::NotSynced {
        perspective: miss.perspective,
        outcome: outcome_text(miss),
    }
}

impl<O> From<NotSynced<O>> for Error {
    fn from(not: NotSynced<O>) -> Self {
        match not.first_miss() {
            Some(miss) => miss_error(miss),
            None => Error::NotSynced {
                perspective: "",
                outcome: "it applied them".to_owned(),
            },
        }
    }
}

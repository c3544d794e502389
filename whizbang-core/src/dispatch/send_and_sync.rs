//! What [`Scope::send_and_sync`](crate::Scope::send_and_sync) returns: the
//! command's output, always, with each perspective's sync outcome.

use super::flush::touched;
use super::scope::Scope;
use crate::error::{Error, Result};
use crate::message::{Command, MessageId, Metadata};
use crate::sync::{Candidate, PerspectiveSyncOptions, SyncFilter, SyncOutcome, SyncResult};

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

impl Scope {
    /// Sends a command, then waits until every perspective that handles the
    /// events it appended (its own and its cascade's, nothing else) has applied
    /// them (5 s timeout, debugger-aware). Inline perspectives apply at once;
    /// async ones are signalled now, not at `complete()`.
    ///
    /// Once the command's events are stored you always get its output, with
    /// each perspective's outcome: `?` on
    /// [`into_synced`](SendAndSync::into_synced) turns a miss into an error, or
    /// answer "accepted" with the output when the read model is not there yet.
    ///
    /// ```
    /// # use whizbang_core::{Command, Context, Receptor, Result, Runtime};
    /// # #[derive(Command, serde::Serialize, serde::Deserialize)] #[command(output = u32)] struct Ping;
    /// # #[derive(Default)] struct R;
    /// # #[whizbang_core::receptor] impl Receptor<Ping> for R {
    /// #   async fn handle(&self, _: Ping, _: &mut Context) -> Result<u32> { Ok(7) } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
    /// # let runtime = Runtime::in_memory()?;
    /// let scope = runtime.scope();
    /// let sent = scope.send_and_sync(Ping).await?; // Err: nothing was stored
    /// if sent.is_synced() {
    ///     // read models reflect the command: answer 200 with them
    /// } else {
    ///     // stored, not yet applied: answer 202 with the id; never resend
    /// }
    /// let n: u32 = sent.into_synced()?; // or: a miss as an error that says the events are stored
    /// # assert_eq!(n, 7);
    /// # scope.complete().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`send`](Self::send): only when the send failed and nothing was stored.
    pub async fn send_and_sync<C: Command>(&self, command: C) -> Result<SendAndSync<C::Output>> {
        self.send_and_sync_with(command, PerspectiveSyncOptions::default())
            .await
    }

    /// Like [`send_and_sync`](Self::send_and_sync), with these options (the
    /// timeout, debugger awareness). The options' filter is ignored: the wait
    /// is on exactly this command's events.
    ///
    /// Once the send has stored its events, the timeout bounds the rest of
    /// the call (plus [`PerspectiveSyncOptions::SLACK`]): the scope's flush
    /// (a flush still running at the deadline goes on on a spawned task, so
    /// nothing is lost), the help-along, and the waits on every perspective
    /// together. The budget across perspectives is counted on the wall clock.
    ///
    /// The help-along runs realtime perspectives only: a perspective whose
    /// [strategy](crate::strategy) holds work back (batch, scheduled, custom)
    /// is not run early, and the wait on it waits for its next run
    /// ([`StrategyRun::NextRun`](crate::StrategyRun::NextRun)), unless the
    /// options say [`trigger(true)`](PerspectiveSyncOptions::trigger): then
    /// its events are applied now and the result says
    /// [`StrategyRun::Triggered`](crate::StrategyRun::Triggered).
    ///
    /// # Errors
    /// As [`send`](Self::send): only when the send failed and nothing was stored.
    pub async fn send_and_sync_with<C: Command>(
        &self,
        command: C,
        options: PerspectiveSyncOptions,
    ) -> Result<SendAndSync<C::Output>> {
        let id = MessageId::new();
        let (output, mine) = self
            .dispatch(command, id, self.shared.scope_id, None, Metadata::default())
            .await?;
        // The events are stored: from here on nothing turns into an `Err`.
        // A flush failure is recorded in the scope (`complete()` reports it);
        // a failure on our own events shows in the wait below.
        //
        // The timeout bounds everything from here: the flush (dropped at the
        // deadline, it hands the rest to a spawned task), the help-along, and
        // the waits on every perspective together (not one timeout each).
        let started = tokio::time::Instant::now();
        let budget = options
            .timeout
            .saturating_add(PerspectiveSyncOptions::SLACK);
        let _ = tokio::time::timeout(budget, self.shared.flush_queued()).await;
        let rt = &self.shared.runtime.inner;
        let touched = touched(&rt.registry, &mine);
        crate::sync::help_along(
            &rt.sync,
            &touched,
            options.timeout.saturating_sub(started.elapsed()),
        )
        .await;
        let awaiter = self.sync_awaiter();
        let emitted = self.shared.emitted_len();
        let mut results: Vec<SyncResult> = Vec::new();
        for (reg, _) in &touched {
            if results.iter().any(|r| r.perspective == reg.name) {
                continue;
            }
            // Exactly this command's events (the options' filter is ignored).
            let awaited = mine.iter().filter(|e| reg.handles(&e.event_type)).count();
            let first_stream = mine.first().map(|e| e.stream_id);
            let events = mine.iter().map(|e| Candidate::stored(e)).collect();
            let left = options
                .clone()
                .timeout(options.timeout.saturating_sub(started.elapsed()));
            let result = match awaiter
                .await_events(reg, &SyncFilter::all(), events, &left, emitted)
                .await
            {
                // Reported with the caller's timeout, not what was left of it.
                Ok(result) => SyncResult {
                    timeout: options.timeout,
                    ..result
                },
                Err(e) => {
                    let outcome = match e {
                        Error::PerspectiveFailed {
                            stream,
                            version,
                            message,
                            ..
                        } => SyncOutcome::Failed {
                            stream,
                            version,
                            message,
                        },
                        other => SyncOutcome::Failed {
                            stream: first_stream.unwrap_or_default(),
                            version: 0,
                            message: format!("the wait itself failed: {other}"),
                        },
                    };
                    SyncResult {
                        outcome,
                        events_awaited: awaited,
                        elapsed: started.elapsed(),
                        events_emitted: emitted,
                        events_tracked: mine.len(),
                        perspective: reg.name,
                        timeout: options.timeout,
                        run: crate::sync::strategy_run(reg, false),
                    }
                }
            };
            results.push(result);
        }
        Ok(SendAndSync { output, results })
    }
}

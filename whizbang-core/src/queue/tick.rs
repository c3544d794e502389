//! One worker tick: what a worker reports and asks for in one call
//! ([`MessageQueue::tick`]), and the default built from the single calls.

use super::limits::{check_batch, check_handler, check_lease, distinct};
use super::{FailOutcome, LeasedMessage, MessageQueue};
use crate::error::{Error, Result};
use crate::message::{InstanceId, MessageId};
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// A message a worker finished: complete it, recording `handler`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The message.
    pub id: MessageId,
    /// The handler name its processed record carries.
    pub handler: String,
}

/// A message whose attempt failed with `error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The message.
    pub id: MessageId,
    /// What went wrong (kept as the message's last error).
    pub error: String,
}

/// What a worker sends in one [`MessageQueue::tick`]: what it finished, the
/// leases it keeps, and how many new messages it takes.
///
/// ```
/// use std::time::Duration;
/// use whizbang_core::queue::TickRequest;
///
/// // An idle worker with 8 free slots: one call, nothing to report.
/// let idle = TickRequest::lease(8, Duration::from_secs(30));
/// assert!(idle.completed.is_empty() && idle.failed.is_empty() && idle.renew.is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TickRequest {
    /// Messages to complete (each removed and recorded processed).
    pub completed: Vec<Completion>,
    /// Messages whose attempt failed (each retried after its backoff, or
    /// dead-lettered at the attempt limit).
    pub failed: Vec<Failure>,
    /// Messages whose leases to extend to [`lease`](Self::lease) from now.
    pub renew: Vec<MessageId>,
    /// How many messages to lease (0 for none), as
    /// [`lease_orphaned`](MessageQueue::lease_orphaned) would.
    pub lease_max: usize,
    /// The lease length of renewals and new leases.
    pub lease: Duration,
    /// Whether to measure the queue's lag ([`TickResponse::lag`]).
    pub measure_lag: bool,
}

impl TickRequest {
    /// A tick that reports nothing and leases up to `max` messages for `lease`.
    #[must_use]
    pub fn lease(max: usize, lease: Duration) -> Self {
        TickRequest {
            completed: Vec::new(),
            failed: Vec::new(),
            renew: Vec::new(),
            lease_max: max,
            lease,
            measure_lag: false,
        }
    }

    /// Adds a completion.
    #[must_use]
    pub fn complete(mut self, id: MessageId, handler: impl Into<String>) -> Self {
        self.completed.push(Completion {
            id,
            handler: handler.into(),
        });
        self
    }

    /// Adds a failure.
    #[must_use]
    pub fn fail(mut self, id: MessageId, error: impl Into<String>) -> Self {
        self.failed.push(Failure {
            id,
            error: error.into(),
        });
        self
    }

    /// Adds leases to renew.
    #[must_use]
    pub fn renew(mut self, ids: impl IntoIterator<Item = MessageId>) -> Self {
        self.renew.extend(ids);
        self
    }

    /// Asks for the lag too.
    #[must_use]
    pub fn measure_lag(mut self) -> Self {
        self.measure_lag = true;
        self
    }

    /// Whether the request reports nothing and leases nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.completed.is_empty()
            && self.failed.is_empty()
            && self.renew.is_empty()
            && self.lease_max == 0
            && !self.measure_lag
    }

    /// The checks every queue runs before a tick changes anything.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        check_lease(self.lease)?;
        for (what, n) in [
            ("a tick's completions", self.completed.len()),
            ("a tick's failures", self.failed.len()),
            ("a tick's renewals", self.renew.len()),
            ("a tick's leases", self.lease_max),
        ] {
            if n > 0 {
                check_batch(what, n)?;
            }
        }
        for c in &self.completed {
            check_handler(c.id, &c.handler)?;
        }
        Ok(())
    }
}

/// How far behind a queue is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLag {
    /// Messages leasable now (waiting, or with an expired lease), counted up
    /// to [`MAX_BATCH`](super::limits::MAX_BATCH) (a deeper queue reports that).
    pub depth: u64,
    /// How long the oldest leasable message has been leasable (zero when
    /// none is).
    pub oldest: Duration,
}

/// What a [`MessageQueue::tick`] did.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct TickResponse {
    /// The completions recorded.
    pub completed: Vec<MessageId>,
    /// The failures recorded, with what became of each message.
    pub failed: Vec<(MessageId, FailOutcome)>,
    /// The leases renewed, and their new expiry (`None` when none was).
    pub renewed: Vec<MessageId>,
    /// The new expiry of the renewed leases.
    pub renewed_until: Option<SystemTime>,
    /// The ids of the request's completions, failures and renewals that
    /// `instance` no longer holds (taken over, or finished by an earlier
    /// tick): nothing was changed for them.
    pub lost: Vec<MessageId>,
    /// The messages newly leased.
    pub leased: Vec<LeasedMessage>,
    /// The lag, when asked for and the queue can tell.
    pub lag: Option<QueueLag>,
}

impl TickResponse {
    /// [`Error::LeaseLost`] naming [`lost`](Self::lost), if any.
    #[must_use]
    pub fn lost_error(&self, instance: InstanceId) -> Option<Error> {
        (!self.lost.is_empty()).then(|| Error::LeaseLost {
            message_ids: self.lost.clone(),
            instance,
        })
    }
}

/// [`MessageQueue::tick`] from the single calls, one after another.
pub(super) async fn by_single_calls<Q: MessageQueue + ?Sized>(
    queue: &Q,
    instance: InstanceId,
    request: TickRequest,
) -> Result<TickResponse> {
    request.validate()?;
    let mut response = TickResponse::default();
    let mut seen = HashSet::new();
    for c in &request.completed {
        if !seen.insert(c.id) {
            continue;
        }
        match queue.complete(c.id, instance, &c.handler).await {
            Ok(()) => response.completed.push(c.id),
            Err(Error::LeaseLost { .. }) => response.lost.push(c.id),
            Err(e) => return Err(e),
        }
    }
    for f in &request.failed {
        if !seen.insert(f.id) {
            continue;
        }
        match queue.fail(f.id, instance, &f.error).await {
            Ok(outcome) => response.failed.push((f.id, outcome)),
            Err(Error::LeaseLost { .. }) => response.lost.push(f.id),
            Err(e) => return Err(e),
        }
    }
    let mut renew: Vec<MessageId> = distinct(&request.renew)
        .into_iter()
        .filter(|id| !seen.contains(id))
        .collect();
    while !renew.is_empty() {
        match queue.renew(&renew, instance, request.lease).await {
            Ok(until) => {
                response.renewed_until = Some(until);
                response.renewed = renew;
                break;
            }
            Err(Error::LeaseLost { message_ids, .. }) if !message_ids.is_empty() => {
                renew.retain(|id| !message_ids.contains(id));
                response.lost.extend(message_ids);
            }
            Err(e) => return Err(e),
        }
    }
    if request.lease_max > 0 {
        response.leased = queue
            .lease_orphaned(instance, request.lease_max, request.lease)
            .await?;
    }
    if request.measure_lag {
        response.lag = queue.lag().await?;
    }
    Ok(response)
}

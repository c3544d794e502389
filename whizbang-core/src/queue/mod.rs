//! The lease-based message queue: the foundation of the inbox and the outbox.
//!
//! This module owns the [`MessageQueue`] contract, the [`QueuedMessage`]
//! envelope, the outcomes of each operation and the in-memory implementation
//! ([`MemoryMessageQueue`]). It imports only `message`, `error`, `store` (for
//! [`BoxFuture`]) and `util`; it knows nothing of dispatch, scopes or sync. A
//! consumer (the inbox, an outbox publisher, a worker) drives a queue; the
//! queue only keeps the books.
//!
//! # The contract
//! - **Enqueue and lease in one step.**
//!   [`enqueue_and_lease`](MessageQueue::enqueue_and_lease) stores a message
//!   and leases it to the calling instance atomically, keyed by its id:
//!   a second call with the same id answers [`EnqueueOutcome::AlreadyQueued`]
//!   while it waits or is leased, [`EnqueueOutcome::AlreadyProcessed`] once it
//!   was completed (until its processed record is pruned), and
//!   [`EnqueueOutcome::DeadLettered`] while it sits in the dead letters. Of
//!   any number of concurrent calls with one id, exactly one leases it.
//! - **Leases.** A lease belongs to an instance ([`InstanceId`]) until it
//!   expires. [`complete`](MessageQueue::complete) removes the message and
//!   records it processed (message id, handler, time) in one step;
//!   [`fail`](MessageQueue::fail) records the error and gives the message
//!   back to the queue; [`renew`](MessageQueue::renew) extends leases;
//!   [`release`](MessageQueue::release) gives leases back unused (a graceful
//!   shutdown). An expired lease stays with its owner (a late `complete`
//!   succeeds) until another lease takes the message over:
//!   [`lease_orphaned`](MessageQueue::lease_orphaned) takes, up to a maximum,
//!   the messages waiting in the queue and those whose lease expired.
//! - **Fencing.** Once a message was taken over, its old owner's `complete`,
//!   `fail`, `renew` and `release` fail with [`Error::LeaseLost`] and change
//!   nothing. Fencing is per instance: an instance must not take over
//!   (through `lease_orphaned`) a message it is still processing; it renews
//!   those.
//! - **Attempts.** Every lease counts one attempt: the first, and every
//!   take-over (a crashed handler counts). [`fail`](MessageQueue::fail) at
//!   the attempt limit ([`QueueOptions::max_attempts`]), or an expired lease
//!   at the limit found by `lease_orphaned`, moves the message to the dead
//!   letters with its last error. [`release`](MessageQueue::release) gives
//!   the attempt back.
//! - **Processed records** keep an id refused after completion for a
//!   retention window: [`prune_processed`](MessageQueue::prune_processed)
//!   deletes, in batches, those older than the window. A message delivered
//!   again after its record was pruned is processed again: keep the window
//!   longer than any transport redelivers.
//! - **Dead letters** are listed ([`dead_letters`](MessageQueue::dead_letters))
//!   and replayed ([`replay_dead_letters`](MessageQueue::replay_dead_letters)):
//!   a replayed message waits in the queue again with its attempts at zero.
//! - **Bad input** (an empty or oversized type name, a payload that is not
//!   JSON or holds `\u0000`, a zero lease, a batch of zero) is
//!   [`Error::InvalidInput`] and changes nothing; see [`limits`].
//!
//! The contract as tests: `whizbang_core::backend::conformance::queue`
//! (feature `conformance`). Each operation runs in a `tracing` span named
//! `whizbang.queue.<operation>` carrying the message id (or count) and the
//! instance.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use whizbang_core::queue::{EnqueueOutcome, MemoryMessageQueue, MessageQueue, QueuedMessage};
//! use whizbang_core::InstanceId;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
//! let queue = MemoryMessageQueue::new();
//! let me = InstanceId::new();
//! let lease = Duration::from_secs(30);
//! let message = QueuedMessage::from_json("orders.placed", r#"{"order": 7}"#)?;
//! let id = message.id;
//!
//! // A transport delivers the message: enqueue and lease it in one step.
//! let EnqueueOutcome::Leased(leased) = queue.enqueue_and_lease(message.clone(), me, lease).await?
//! else { unreachable!("a new id is leased") };
//! assert_eq!(leased.attempt, 1);
//! // .. handle it in a scope, then:
//! queue.complete(id, me, "orders.inbox").await?;
//!
//! // Delivered again: refused, its effects happened once.
//! let again = queue.enqueue_and_lease(message, me, lease).await?;
//! assert!(matches!(again, EnqueueOutcome::AlreadyProcessed));
//! # Ok(()) }
//! ```

mod envelope;
pub mod limits;
mod memory;
pub mod spans;

pub use envelope::QueuedMessage;
pub use memory::{ManualClock, MemoryMessageQueue, QueueClock, SystemClock};

#[doc(no_inline)]
pub use crate::message::InstanceId;

use crate::error::Result;
use crate::message::MessageId;
use crate::store::BoxFuture;
use limits::{check_batch, check_handler, check_lease};
use std::time::{Duration, SystemTime};

use crate::error::Error;

/// How a queue behaves. Builder-style.
///
/// ```
/// use std::time::Duration;
/// use whizbang_core::queue::QueueOptions;
/// assert_eq!(QueueOptions::default().max_attempts, 5);
/// assert_eq!(QueueOptions::default().max_attempts(0).max_attempts, 1);
///
/// // A failed attempt waits base * 2^(attempt - 1), at most the cap.
/// let o = QueueOptions::default().retry_backoff(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(o.backoff_after(1), Duration::from_millis(100));
/// assert_eq!(o.backoff_after(3), Duration::from_millis(400));
/// assert_eq!(o.backoff_after(30), Duration::from_secs(1));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueOptions {
    /// How many leases a message gets before it goes to the dead letters
    /// (default 5, at least 1). Take-overs of expired leases count.
    pub max_attempts: u32,
    /// How long a message waits after its first failed attempt before it
    /// may be leased again (default 1 s); each further failure doubles the
    /// wait, up to [`retry_backoff_cap`](Self::retry_backoff_cap). Zero
    /// retries at once.
    pub retry_backoff_base: Duration,
    /// The longest wait between a failed attempt and the next (default 5 min).
    pub retry_backoff_cap: Duration,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            max_attempts: 5,
            retry_backoff_base: Duration::from_secs(1),
            retry_backoff_cap: Duration::from_secs(5 * 60),
        }
    }
}

impl QueueOptions {
    /// Sets [`max_attempts`](Self::max_attempts) (raised to 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the retry backoff: after failed attempt `n` a message waits
    /// `base * 2^(n - 1)`, at most `cap` (both at most
    /// [`limits::MAX_LEASE`]; a cap below the base is raised to it).
    #[must_use]
    pub fn retry_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.retry_backoff_base = base.min(limits::MAX_LEASE);
        self.retry_backoff_cap = cap.min(limits::MAX_LEASE).max(self.retry_backoff_base);
        self
    }

    /// How long a message waits after its `attempts`-th attempt failed:
    /// `base * 2^(attempts - 1)`, at most the cap.
    #[must_use]
    pub fn backoff_after(&self, attempts: u32) -> Duration {
        1u32.checked_shl(attempts.saturating_sub(1))
            .and_then(|factor| self.retry_backoff_base.checked_mul(factor))
            .map_or(self.retry_backoff_cap, |d| d.min(self.retry_backoff_cap))
    }
}

/// A message leased to an instance.
#[derive(Clone, Debug, PartialEq)]
pub struct LeasedMessage {
    /// The message.
    pub message: QueuedMessage,
    /// Which attempt this lease is (1 for the first).
    pub attempt: u32,
    /// When the lease expires unless renewed.
    pub lease_expires_at: SystemTime,
    /// The error of the previous attempt, if it failed.
    pub last_error: Option<String>,
}

/// What [`MessageQueue::enqueue_and_lease`] did.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum EnqueueOutcome {
    /// The message was new: it is stored and leased to the caller. Process it,
    /// then [`complete`](MessageQueue::complete) or [`fail`](MessageQueue::fail) it.
    Leased(LeasedMessage),
    /// A message with this id waits in the queue or is leased (to anyone, the
    /// caller included). Nothing was changed: do not process it.
    AlreadyQueued,
    /// A message with this id was processed (its record is kept for the
    /// retention window). Nothing was changed: acknowledge the delivery.
    AlreadyProcessed,
    /// A message with this id is in the dead letters. Nothing was changed:
    /// replay it ([`MessageQueue::replay_dead_letters`]) to process it again.
    DeadLettered,
}

/// What [`MessageQueue::fail`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailOutcome {
    /// The message waits in the queue for another attempt
    /// ([`MessageQueue::lease_orphaned`] takes it).
    Retry {
        /// Attempts made so far.
        attempts: u32,
    },
    /// The attempt limit is reached: the message is in the dead letters with
    /// this error.
    DeadLettered {
        /// Attempts made.
        attempts: u32,
    },
}

/// The record that a message was processed, kept for idempotency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessedRecord {
    /// The message.
    pub message_id: MessageId,
    /// The handler that processed it (as given to [`MessageQueue::complete`]).
    pub handler: String,
    /// When it was completed.
    pub processed_at: SystemTime,
}

/// A message that used up its attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The message as it was enqueued.
    pub message: QueuedMessage,
    /// Attempts made.
    pub attempts: u32,
    /// The last error (the handler's, or a note that its last lease expired).
    pub error: String,
    /// When it was dead-lettered.
    pub dead_at: SystemTime,
}

/// The text a dead letter carries when its last lease expired unfinished (the
/// handler crashed, hung or lost its connection) and no error was recorded.
#[must_use]
pub fn lease_expired_error(attempts: u32) -> String {
    format!(
        "the lease of attempt {attempts} expired before the message was completed or failed \
         (the handler crashed, hung, or its instance stopped)"
    )
}

// ------------------------------------------------------------ worker ticks

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
    /// to [`MAX_BATCH`](limits::MAX_BATCH) (a deeper queue reports that).
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

/// A lease-based, idempotent message queue (see the [module docs](self) for
/// the contract). Object-safe: use it as `Arc<dyn MessageQueue>`.
///
/// Implementations: [`MemoryMessageQueue`] here, `PgMessageQueue` in
/// `whizbang-postgres`. The conformance suite holds every implementation to
/// the same contract.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a whizbang message queue",
    note = "use `whizbang_core::queue::MemoryMessageQueue` or a backend's queue (`Postgres::message_queue()`)"
)]
pub trait MessageQueue: Send + Sync + 'static {
    /// The options the queue runs with (its attempt limit).
    fn options(&self) -> &QueueOptions;

    /// Stores `message` and leases it to `instance` for `lease`, atomically;
    /// idempotent by the message's id (see [`EnqueueOutcome`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an invalid message
    /// ([`QueuedMessage::validate`]) or lease; a backend failure.
    fn enqueue_and_lease(
        &self,
        message: QueuedMessage,
        instance: InstanceId,
        lease: Duration,
    ) -> BoxFuture<'_, Result<EnqueueOutcome>>;

    /// Leases to `instance`, for `lease`, up to `max` messages that wait in
    /// the queue or whose lease expired, those available longest first. Each
    /// lease counts an attempt; an expired message already at the attempt
    /// limit goes to the dead letters instead (and is not returned, so fewer
    /// than `max` may come back while more wait).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a zero or too long lease, or `max` outside
    /// 1..=[`limits::MAX_BATCH`]; a backend failure.
    fn lease_orphaned(
        &self,
        instance: InstanceId,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<LeasedMessage>>>;

    /// Removes the message leased by `instance` and records it processed by
    /// `handler`, in one step.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when `instance` does not hold the message's lease
    /// (nothing changes); [`Error::InvalidInput`] for an empty handler name;
    /// a backend failure.
    fn complete<'a>(
        &'a self,
        id: MessageId,
        instance: InstanceId,
        handler: &'a str,
    ) -> BoxFuture<'a, Result<()>>;

    /// Records that the attempt failed with `error`: below the attempt limit
    /// the message waits in the queue for another lease, available again
    /// after the retry backoff ([`QueueOptions::backoff_after`] its
    /// attempts); at the limit it goes to the dead letters with `error`.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when `instance` does not hold the message's lease
    /// (nothing changes); a backend failure.
    fn fail<'a>(
        &'a self,
        id: MessageId,
        instance: InstanceId,
        error: &'a str,
    ) -> BoxFuture<'a, Result<FailOutcome>>;

    /// Extends the leases `instance` holds on `ids` to `lease` from now, all
    /// or none. Returns the new expiry.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] naming every id `instance` does not hold (then no
    /// lease is renewed: renew the others again without them);
    /// [`Error::InvalidInput`] for a zero or too long lease or too many ids;
    /// a backend failure.
    fn renew<'a>(
        &'a self,
        ids: &'a [MessageId],
        instance: InstanceId,
        lease: Duration,
    ) -> BoxFuture<'a, Result<SystemTime>>;

    /// Gives the leases `instance` holds on `ids` back, all or none: the
    /// messages wait in the queue again, and the attempts these leases
    /// counted are given back (a graceful shutdown that did not start them).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] naming every id `instance` does not hold (then
    /// nothing is released); a backend failure.
    fn release<'a>(
        &'a self,
        ids: &'a [MessageId],
        instance: InstanceId,
    ) -> BoxFuture<'a, Result<()>>;

    /// The processed record of `id`, if it is kept.
    ///
    /// # Errors
    /// A backend failure.
    fn processed(&self, id: MessageId) -> BoxFuture<'_, Result<Option<ProcessedRecord>>>;

    /// Deletes up to `batch` processed records older than `older_than` (the
    /// retention window), oldest first, and returns how many. Call it until
    /// it returns less than `batch`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a batch outside 1..=[`limits::MAX_BATCH`];
    /// a backend failure.
    fn prune_processed(&self, older_than: Duration, batch: usize) -> BoxFuture<'_, Result<usize>>;

    /// Up to `max` dead letters, oldest first.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for `max` outside 1..=[`limits::MAX_BATCH`];
    /// a backend failure.
    fn dead_letters(&self, max: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>>>;

    /// Moves the dead letters `ids` back to the queue (attempts at zero, the
    /// last error kept for the next lease). Returns the ids moved; ids not in
    /// the dead letters are left out.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for too many ids; a backend failure.
    fn replay_dead_letters<'a>(
        &'a self,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>>>;

    /// How far behind the queue is: the messages leasable now and how long
    /// the oldest of them has waited. `None` when the queue cannot tell
    /// cheaply (the default).
    ///
    /// # Errors
    /// A backend failure.
    fn lag(&self) -> BoxFuture<'_, Result<Option<QueueLag>>> {
        Box::pin(async { Ok(None) })
    }

    /// One worker tick: records `request`'s completions and failures, renews
    /// the leases it names, then leases up to
    /// [`lease_max`](TickRequest::lease_max) messages, and measures the lag
    /// (see [`TickRequest`] and [`TickResponse`]). Unlike
    /// [`renew`](Self::renew), an id `instance` no longer holds does not stop
    /// the others: it is answered in [`TickResponse::lost`] and nothing is
    /// changed for it.
    ///
    /// The default runs the single calls one after another (not atomic: on
    /// an error, some of the request may have been recorded; sent again, a
    /// recorded completion answers lost). A backend overrides it with one
    /// round trip (`PgMessageQueue` calls one SQL function).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a zero or too long lease, an empty handler
    /// name, or more than [`limits::MAX_BATCH`] ids or leases; a backend
    /// failure.
    fn tick(
        &self,
        instance: InstanceId,
        request: TickRequest,
    ) -> BoxFuture<'_, Result<TickResponse>> {
        let span = spans::tick(
            instance,
            request.completed.len(),
            request.failed.len(),
            request.renew.len(),
            request.lease_max,
        );
        Box::pin(tracing::Instrument::instrument(
            tick_by_single_calls(self, instance, request),
            span,
        ))
    }
}

/// [`MessageQueue::tick`] from the single calls, one after another.
async fn tick_by_single_calls<Q: MessageQueue + ?Sized>(
    queue: &Q,
    instance: InstanceId,
    request: TickRequest,
) -> Result<TickResponse> {
    request.validate()?;
    let mut response = TickResponse::default();
    let mut seen = std::collections::HashSet::new();
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
    let mut renew: Vec<MessageId> = limits::distinct(&request.renew)
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

//! The queue in memory, with an injectable clock: the reference behaviour
//! every other queue is held to, and the queue of single-process tests.

use super::limits::{check_batch, check_handler, check_lease, distinct, error_text, MAX_BATCH};
use super::{
    lease_expired_error, DeadLetter, EnqueueOutcome, FailOutcome, LeasedMessage, MessageQueue,
    ProcessedRecord, QueueLag, QueueOptions, QueuedMessage,
};
use crate::error::{Error, Result};
use crate::message::{InstanceId, MessageId};
use crate::store::BoxFuture;
use crate::util::{lock, IdMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Where a queue reads the time: lease expiry, processed and dead-letter
/// times. [`SystemClock`] in production, [`ManualClock`] in tests.
pub trait QueueClock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl QueueClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told: tests expire leases and age records
/// with [`advance`](Self::advance) instead of sleeping. Cheap to clone
/// (clones share the time).
///
/// ```
/// use std::time::Duration;
/// use whizbang_core::queue::{ManualClock, QueueClock};
///
/// let clock = ManualClock::new();
/// let before = clock.now();
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now().duration_since(before).unwrap(), Duration::from_secs(60));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at the current system time.
    #[must_use]
    pub fn new() -> Self {
        ManualClock(Arc::new(Mutex::new(SystemTime::now())))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = lock(&self.0);
        *now = now.checked_add(by).unwrap_or(*now);
    }
}

impl QueueClock for ManualClock {
    fn now(&self) -> SystemTime {
        *lock(&self.0)
    }
}

struct Entry {
    message: QueuedMessage,
    /// `Some` while leased (until another lease takes it over).
    owner: Option<InstanceId>,
    /// When the lease expires; when the message became available if queued.
    available_at: SystemTime,
    attempts: u32,
    last_error: Option<String>,
}

#[derive(Default)]
struct State {
    queue: IdMap<MessageId, Entry>,
    processed: IdMap<MessageId, ProcessedRecord>,
    dead: IdMap<MessageId, DeadLetter>,
}

/// A [`MessageQueue`] in memory. Cheap to clone (clones share the queue).
///
/// Every operation is atomic under one lock. Time comes from a
/// [`QueueClock`]: [`with_clock`](Self::with_clock) a [`ManualClock`] to
/// expire leases in tests without sleeping.
///
/// ```
/// use std::time::Duration;
/// use whizbang_core::queue::{ManualClock, MemoryMessageQueue, MessageQueue, QueueOptions, QueuedMessage};
/// use whizbang_core::InstanceId;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
/// let clock = ManualClock::new();
/// let queue = MemoryMessageQueue::with_clock(QueueOptions::default(), clock.clone());
/// let (crashed, survivor) = (InstanceId::new(), InstanceId::new());
/// let lease = Duration::from_secs(30);
/// let message = QueuedMessage::from_json("payments.captured", "{}")?;
/// queue.enqueue_and_lease(message.clone(), crashed, lease).await?;
///
/// clock.advance(Duration::from_secs(31)); // the first instance died
/// let taken = queue.lease_orphaned(survivor, 10, lease).await?;
/// assert_eq!((taken.len(), taken[0].attempt), (1, 2));
/// // The old owner wakes up: fenced.
/// assert!(queue.complete(message.id, crashed, "payments").await.is_err());
/// queue.complete(message.id, survivor, "payments").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MemoryMessageQueue {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn QueueClock>,
    options: QueueOptions,
}

impl Default for MemoryMessageQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryMessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("MemoryMessageQueue")
            .field("queued", &state.queue.len())
            .field("processed", &state.processed.len())
            .field("dead", &state.dead.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl MemoryMessageQueue {
    /// An empty queue with the default options and the system clock.
    #[must_use]
    pub fn new() -> Self {
        Self::with_clock(QueueOptions::default(), SystemClock)
    }

    /// An empty queue with these options and the system clock.
    #[must_use]
    pub fn with_options(options: QueueOptions) -> Self {
        Self::with_clock(options, SystemClock)
    }

    /// An empty queue with these options, reading the time from `clock`.
    #[must_use]
    pub fn with_clock(options: QueueOptions, clock: impl QueueClock) -> Self {
        MemoryMessageQueue {
            state: Arc::new(Mutex::new(State::default())),
            clock: Arc::new(clock),
            options,
        }
    }

    /// How many messages wait in the queue or are leased.
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.state).queue.len()
    }

    /// Whether no message waits in the queue or is leased.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expiry(&self, now: SystemTime, lease: Duration) -> Result<SystemTime> {
        check_lease(lease)?;
        now.checked_add(lease).ok_or_else(|| {
            Error::InvalidInput(format!(
                "a lease of {lease:?} from {now:?} passes the end of representable time"
            ))
        })
    }

    fn enqueue_now(
        &self,
        message: QueuedMessage,
        instance: InstanceId,
        lease: Duration,
    ) -> Result<EnqueueOutcome> {
        message.validate()?;
        let now = self.clock.now();
        let expires = self.expiry(now, lease)?;
        let mut state = lock(&self.state);
        let id = message.id;
        if state.processed.contains_key(&id) {
            return Ok(EnqueueOutcome::AlreadyProcessed);
        }
        if state.dead.contains_key(&id) {
            return Ok(EnqueueOutcome::DeadLettered);
        }
        if state.queue.contains_key(&id) {
            return Ok(EnqueueOutcome::AlreadyQueued);
        }
        state.queue.insert(
            id,
            Entry {
                message: message.clone(),
                owner: Some(instance),
                available_at: expires,
                attempts: 1,
                last_error: None,
            },
        );
        Ok(EnqueueOutcome::Leased(LeasedMessage {
            message,
            attempt: 1,
            lease_expires_at: expires,
            last_error: None,
        }))
    }

    fn lease_orphaned_now(
        &self,
        instance: InstanceId,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<LeasedMessage>> {
        check_batch("lease_orphaned", max)?;
        let now = self.clock.now();
        let expires = self.expiry(now, lease)?;
        let mut state = lock(&self.state);
        let mut candidates: Vec<(SystemTime, MessageId)> = state
            .queue
            .iter()
            .filter(|(_, e)| e.available_at <= now)
            .map(|(id, e)| (e.available_at, *id))
            .collect();
        candidates.sort_unstable();
        candidates.truncate(max);
        let mut leased = Vec::with_capacity(candidates.len());
        for (_, id) in candidates {
            let Some(entry) = state.queue.get_mut(&id) else {
                continue;
            };
            if entry.attempts >= self.options.max_attempts {
                let error = match (&entry.owner, &entry.last_error) {
                    (None, Some(e)) => e.clone(),
                    _ => lease_expired_error(entry.attempts),
                };
                if let Some(entry) = state.queue.remove(&id) {
                    state.dead.insert(
                        id,
                        DeadLetter {
                            message: entry.message,
                            attempts: entry.attempts,
                            error,
                            dead_at: now,
                        },
                    );
                }
                continue;
            }
            entry.owner = Some(instance);
            entry.available_at = expires;
            entry.attempts += 1;
            leased.push(LeasedMessage {
                message: entry.message.clone(),
                attempt: entry.attempts,
                lease_expires_at: expires,
                last_error: entry.last_error.clone(),
            });
        }
        Ok(leased)
    }

    /// The ids of `ids` whose lease `instance` does not hold.
    fn lost(state: &State, ids: &[MessageId], instance: InstanceId) -> Vec<MessageId> {
        ids.iter()
            .copied()
            .filter(|id| state.queue.get(id).and_then(|e| e.owner) != Some(instance))
            .collect()
    }

    /// `Err(LeaseLost)` naming every id of `ids` that `instance` does not hold.
    fn check_held(state: &State, ids: &[MessageId], instance: InstanceId) -> Result<()> {
        let lost = Self::lost(state, ids, instance);
        if lost.is_empty() {
            Ok(())
        } else {
            Err(Error::LeaseLost {
                message_ids: lost,
                instance,
            })
        }
    }

    fn complete_now(&self, id: MessageId, instance: InstanceId, handler: &str) -> Result<()> {
        check_handler(id, handler)?;
        let now = self.clock.now();
        let mut state = lock(&self.state);
        Self::check_held(&state, &[id], instance)?;
        state.queue.remove(&id);
        state.processed.insert(
            id,
            ProcessedRecord {
                message_id: id,
                handler: handler.to_owned(),
                processed_at: now,
            },
        );
        Ok(())
    }

    fn fail_now(&self, id: MessageId, instance: InstanceId, error: &str) -> Result<FailOutcome> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        Self::check_held(&state, &[id], instance)?;
        let error = error_text(error);
        let Some(entry) = state.queue.get_mut(&id) else {
            return Err(Error::Invariant(format!(
                "message {id} vanished under the lock"
            )));
        };
        let attempts = entry.attempts;
        if attempts >= self.options.max_attempts {
            if let Some(entry) = state.queue.remove(&id) {
                state.dead.insert(
                    id,
                    DeadLetter {
                        message: entry.message,
                        attempts,
                        error,
                        dead_at: now,
                    },
                );
            }
            return Ok(FailOutcome::DeadLettered { attempts });
        }
        entry.owner = None;
        let backoff = self.options.backoff_after(attempts);
        entry.available_at = now.checked_add(backoff).unwrap_or(now);
        entry.last_error = Some(error);
        Ok(FailOutcome::Retry { attempts })
    }

    fn renew_now(
        &self,
        ids: &[MessageId],
        instance: InstanceId,
        lease: Duration,
    ) -> Result<SystemTime> {
        check_batch("renew", ids.len())?;
        let expires = self.expiry(self.clock.now(), lease)?;
        let ids = distinct(ids);
        let mut state = lock(&self.state);
        Self::check_held(&state, &ids, instance)?;
        for id in &ids {
            if let Some(entry) = state.queue.get_mut(id) {
                entry.available_at = expires;
            }
        }
        Ok(expires)
    }

    fn release_now(&self, ids: &[MessageId], instance: InstanceId) -> Result<()> {
        check_batch("release", ids.len())?;
        let now = self.clock.now();
        let ids = distinct(ids);
        let mut state = lock(&self.state);
        Self::check_held(&state, &ids, instance)?;
        for id in &ids {
            if let Some(entry) = state.queue.get_mut(id) {
                entry.owner = None;
                entry.available_at = now;
                entry.attempts = entry.attempts.saturating_sub(1);
            }
        }
        Ok(())
    }

    fn prune_now(&self, older_than: Duration, batch: usize) -> Result<usize> {
        check_batch("prune_processed", batch)?;
        let now = self.clock.now();
        let Some(cutoff) = now.checked_sub(older_than) else {
            return Ok(0); // a window reaching before the epoch holds everything
        };
        let mut state = lock(&self.state);
        let mut old: Vec<(SystemTime, MessageId)> = state
            .processed
            .values()
            .filter(|r| r.processed_at < cutoff)
            .map(|r| (r.processed_at, r.message_id))
            .collect();
        old.sort_unstable();
        old.truncate(batch);
        for (_, id) in &old {
            state.processed.remove(id);
        }
        Ok(old.len())
    }

    fn lag_now(&self) -> QueueLag {
        let now = self.clock.now();
        let state = lock(&self.state);
        let mut depth = 0u64;
        let mut oldest = now;
        for entry in state.queue.values().filter(|e| e.available_at <= now) {
            depth += 1;
            oldest = oldest.min(entry.available_at);
        }
        QueueLag {
            depth: depth.min(MAX_BATCH as u64),
            oldest: now.duration_since(oldest).unwrap_or_default(),
        }
    }

    fn dead_letters_now(&self, max: usize) -> Result<Vec<DeadLetter>> {
        check_batch("dead_letters", max)?;
        let state = lock(&self.state);
        let mut dead: Vec<&DeadLetter> = state.dead.values().collect();
        dead.sort_unstable_by_key(|d| (d.dead_at, d.message.id));
        Ok(dead.into_iter().take(max).cloned().collect())
    }

    fn replay_now(&self, ids: &[MessageId]) -> Result<Vec<MessageId>> {
        if ids.len() > MAX_BATCH {
            check_batch("replay_dead_letters", ids.len())?;
        }
        let now = self.clock.now();
        let mut state = lock(&self.state);
        let mut replayed = Vec::new();
        for id in distinct(ids) {
            if let Some(dead) = state.dead.remove(&id) {
                state.queue.insert(
                    id,
                    Entry {
                        message: dead.message,
                        owner: None,
                        available_at: now,
                        attempts: 0,
                        last_error: Some(dead.error),
                    },
                );
                replayed.push(id);
            }
        }
        Ok(replayed)
    }
}

/// A future that runs `f` in `span` when first polled (not when built, so a
/// future dropped unpolled changes nothing).
fn traced<'a, T: Send + 'a>(
    span: tracing::Span,
    f: impl FnOnce() -> T + Send + 'a,
) -> BoxFuture<'a, T> {
    Box::pin(async move { span.in_scope(f) })
}

impl MessageQueue for MemoryMessageQueue {
    fn options(&self) -> &QueueOptions {
        &self.options
    }

    fn enqueue_and_lease(
        &self,
        message: QueuedMessage,
        instance: InstanceId,
        lease: Duration,
    ) -> BoxFuture<'_, Result<EnqueueOutcome>> {
        let span = super::spans::enqueue_and_lease(&message, instance);
        traced(span, move || self.enqueue_now(message, instance, lease))
    }

    fn lease_orphaned(
        &self,
        instance: InstanceId,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<LeasedMessage>>> {
        let span = super::spans::lease_orphaned(instance, max);
        traced(span, move || self.lease_orphaned_now(instance, max, lease))
    }

    fn complete<'a>(
        &'a self,
        id: MessageId,
        instance: InstanceId,
        handler: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        let span = super::spans::complete(id, instance, handler);
        traced(span, move || self.complete_now(id, instance, handler))
    }

    fn fail<'a>(
        &'a self,
        id: MessageId,
        instance: InstanceId,
        error: &'a str,
    ) -> BoxFuture<'a, Result<FailOutcome>> {
        let span = super::spans::fail(id, instance);
        traced(span, move || self.fail_now(id, instance, error))
    }

    fn renew<'a>(
        &'a self,
        ids: &'a [MessageId],
        instance: InstanceId,
        lease: Duration,
    ) -> BoxFuture<'a, Result<SystemTime>> {
        let span = super::spans::renew(ids.len(), instance);
        traced(span, move || self.renew_now(ids, instance, lease))
    }

    fn release<'a>(
        &'a self,
        ids: &'a [MessageId],
        instance: InstanceId,
    ) -> BoxFuture<'a, Result<()>> {
        let span = super::spans::release(ids.len(), instance);
        traced(span, move || self.release_now(ids, instance))
    }

    fn processed(&self, id: MessageId) -> BoxFuture<'_, Result<Option<ProcessedRecord>>> {
        let span = super::spans::processed(id);
        traced(span, move || {
            Ok(lock(&self.state).processed.get(&id).cloned())
        })
    }

    fn prune_processed(&self, older_than: Duration, batch: usize) -> BoxFuture<'_, Result<usize>> {
        let span = super::spans::prune_processed(older_than, batch);
        traced(span, move || self.prune_now(older_than, batch))
    }

    fn dead_letters(&self, max: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>>> {
        let span = super::spans::dead_letters(max);
        traced(span, move || self.dead_letters_now(max))
    }

    fn replay_dead_letters<'a>(
        &'a self,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        let span = super::spans::replay_dead_letters(ids.len());
        traced(span, move || self.replay_now(ids))
    }

    fn lag(&self) -> BoxFuture<'_, Result<Option<QueueLag>>> {
        Box::pin(async move { Ok(Some(self.lag_now())) })
    }
}

//! The inbox worker: recovers messages no delivery finishes (failed attempts
//! waiting for a retry, leases of dead instances), on a timer and on a wake-up.

use super::{bump, Inbox, InboxStats, UNMEASURED};
use crate::error::Result;
use crate::message::{InstanceId, MessageId};
use crate::queue::limits::MAX_BATCH;
use crate::queue::{FailOutcome, LeasedMessage, TickRequest};
use crate::util::lock;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

/// How an [`InboxWorker`] runs. Builder-style.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InboxWorkerOptions {
    /// How many messages it handles at once (default 8, at least 1).
    pub concurrency: usize,
    /// How often it looks for orphaned messages without a wake-up (default 1 s).
    pub poll_interval: Duration,
}

impl Default for InboxWorkerOptions {
    fn default() -> Self {
        InboxWorkerOptions {
            concurrency: 8,
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl InboxWorkerOptions {
    /// Sets [`concurrency`](Self::concurrency) (raised to 1).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.clamp(1, MAX_BATCH);
        self
    }

    /// Sets [`poll_interval`](Self::poll_interval) (at least 1 ms).
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(1));
        self
    }
}

/// Recovers orphaned inbox messages: those waiting in the queue (a failed
/// attempt's retry after its backoff, a released lease) and those whose
/// lease expired (their instance died). Each is handled in its own scope by
/// the inbox's handling, at most [`concurrency`](InboxWorkerOptions::concurrency)
/// at once.
///
/// **One round trip per tick.** Each round is one [`MessageQueue::tick`]:
/// the completions and failures of the messages that finished since the
/// last round, the renewal of the leases it holds (every
/// [`renew_every`](super::InboxOptions::renew_every)), as many new leases as
/// it has free slots, and, once per
/// [`poll_interval`](InboxWorkerOptions::poll_interval), the queue's lag. An
/// idle worker costs one cheap query per poll. A finished message is
/// completed in the next round (at once: a finishing handler wakes the
/// loop), so between its handling and that round it stays leased; if the
/// instance dies then, another takes it over, and the inbox completes it
/// without a second effect (its event id is stored already).
///
/// A message the tick answers lost (another instance took it over) is
/// counted in [`InboxStats::lease_lost`] and its result dropped.
///
/// It looks every [`poll_interval`](InboxWorkerOptions::poll_interval), when
/// woken ([`InboxWorkerHandle::wake`], or the `Notify` from
/// [`InboxWorkerHandle::waker`] given to a queue's notification listener), and
/// as soon as a message finishes. Each round runs in a `whizbang.inbox.tick`
/// span recording what it completed, failed, leased and lost, and the queue
/// depth and lag it measured.
///
/// [`MessageQueue::tick`]: crate::queue::MessageQueue::tick
#[derive(Debug)]
pub struct InboxWorker;

impl InboxWorker {
    /// Starts a worker for `inbox` on the current tokio runtime.
    #[must_use]
    pub fn start(inbox: Inbox, options: InboxWorkerOptions) -> InboxWorkerHandle {
        let shared = Arc::new(Shared {
            wake: Arc::new(Notify::new()),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            grace: Mutex::new(None),
        });
        let task = tokio::spawn(run(inbox.clone(), options, Arc::clone(&shared)));
        InboxWorkerHandle {
            inbox,
            shared,
            task: Some(task),
        }
    }
}

struct Shared {
    wake: Arc<Notify>,
    stop: Notify,
    stopping: AtomicBool,
    /// How long a shutdown waits for messages in flight (`None`: until they finish).
    grace: Mutex<Option<Duration>>,
}

/// Controls a running [`InboxWorker`]. Dropping it stops the worker without
/// waiting (its in-flight messages finish on their tasks); call
/// [`shutdown`](Self::shutdown) to wait for them.
pub struct InboxWorkerHandle {
    inbox: Inbox,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<usize>>,
}

impl std::fmt::Debug for InboxWorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxWorkerHandle")
            .field("instance", &self.inbox.instance())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl InboxWorkerHandle {
    /// Makes the worker look for messages now.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// The worker's wake-up: `notify_one` on it makes the worker look for
    /// messages now (hand it to a queue's notification listener).
    #[must_use]
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.wake)
    }

    /// The counters of the worker's inbox (its deliveries' included).
    #[must_use]
    pub fn stats(&self) -> InboxStats {
        self.inbox.stats()
    }

    /// The inbox it works for.
    #[must_use]
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Stops leasing and waits until every message in flight is completed or
    /// failed (their leases are renewed meanwhile), so nothing it took is left
    /// leased to it.
    ///
    /// # Errors
    /// [`Error::Invariant`](crate::Error::Invariant) when the worker's task panicked.
    pub async fn shutdown(self) -> Result<()> {
        self.stop(None).await.map(drop)
    }

    /// Stops leasing and waits up to `grace` for the messages in flight; those
    /// not finished by then are abandoned (their handling dropped, which
    /// stores nothing it had not appended yet) and their leases released, so
    /// another instance takes them at once (the attempt is given back).
    /// Returns how many were released.
    ///
    /// # Errors
    /// [`Error::Invariant`](crate::Error::Invariant) when the worker's task
    /// panicked.
    pub async fn shutdown_within(self, grace: Duration) -> Result<usize> {
        self.stop(Some(grace)).await
    }

    async fn stop(mut self, grace: Option<Duration>) -> Result<usize> {
        *lock(&self.shared.grace) = grace;
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.notify_one();
        match self.task.take() {
            Some(task) => task.await.map_err(|e| {
                crate::error::Error::Invariant(format!("the inbox worker's task failed: {e}"))
            }),
            None => Ok(0),
        }
    }
}

impl Drop for InboxWorkerHandle {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.notify_one();
    }
}

/// How a handling task ended, as it reports to the worker loop.
enum Outcome {
    /// Handled: complete it.
    Handled,
    /// Failed with this error: fail it.
    Failed(String),
    /// Dropped before it finished (aborted at a shutdown's grace, or the
    /// handler panicked).
    Dropped,
}

/// Sends the task's outcome to the worker loop, [`Outcome::Dropped`] if the
/// task is dropped (aborted or panicking) before it sends one.
struct Report {
    id: MessageId,
    tx: mpsc::UnboundedSender<(MessageId, Outcome)>,
    sent: bool,
}

impl Report {
    fn send(mut self, outcome: Outcome) {
        self.sent = true;
        let _ = self.tx.send((self.id, outcome));
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.tx.send((self.id, Outcome::Dropped));
        }
    }
}

/// The worker loop's books.
struct Books {
    inbox: Inbox,
    instance: InstanceId,
    lease: Duration,
    handler: String,
    /// Leased to this worker and being handled.
    in_flight: HashSet<MessageId>,
    /// Of `in_flight`, those a tick answered lost (taken over): their end is
    /// not reported.
    lost: HashSet<MessageId>,
    /// Finished, to report in the next tick.
    finished: Vec<(MessageId, Outcome)>,
    last_renew: Instant,
    last_lag: Option<Instant>,
}

impl Books {
    fn take_done(&mut self, id: MessageId, outcome: Outcome) {
        self.in_flight.remove(&id);
        if self.lost.remove(&id) {
            return; // another instance owns it now; its end changes nothing
        }
        self.finished.push((id, outcome));
    }

    /// One round trip: reports what finished, renews when due, leases up to
    /// `free`, measures the lag when due. Returns the new leases (empty on
    /// an error, after which what finished is reported again next time).
    async fn tick(
        &mut self,
        free: usize,
        renew_every: Duration,
        lag_every: Duration,
    ) -> Vec<LeasedMessage> {
        let renew_due = !self.in_flight.is_empty() && self.last_renew.elapsed() >= renew_every;
        let lag_due = self.last_lag.is_none_or(|at| at.elapsed() >= lag_every);
        let mut request = TickRequest::lease(free, self.lease);
        for (id, outcome) in &self.finished {
            request = match outcome {
                Outcome::Handled => request.complete(*id, self.handler.clone()),
                Outcome::Failed(error) => request.fail(*id, error.clone()),
                Outcome::Dropped => request.fail(
                    *id,
                    "the handling stopped before it finished (the handler panicked)",
                ),
            };
        }
        if renew_due {
            request = request.renew(self.in_flight.iter().copied());
        }
        if lag_due {
            request = request.measure_lag();
        }
        if request.is_empty() {
            return Vec::new();
        }
        let span = tracing::debug_span!(
            "whizbang.inbox.tick",
            instance = %self.instance,
            completed = tracing::field::Empty,
            failed = tracing::field::Empty,
            leased = tracing::field::Empty,
            lost = tracing::field::Empty,
            queue_depth = tracing::field::Empty,
            queue_lag_ms = tracing::field::Empty,
        );
        let result = self
            .inbox
            .queue()
            .tick(self.instance, request)
            .instrument(span.clone())
            .await;
        let c = &self.inbox.inner.counters;
        bump(&c.ticks);
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%error, "the inbox worker's queue tick failed; it reports again at its next tick");
                return Vec::new();
            }
        };
        self.finished.clear();
        if renew_due {
            self.last_renew = Instant::now();
        }
        for _ in &response.completed {
            bump(&c.processed);
        }
        for (_, outcome) in &response.failed {
            match outcome {
                FailOutcome::DeadLettered { .. } => bump(&c.dead_lettered),
                _ => bump(&c.retried),
            }
        }
        if let Some(error) = response.lost_error(self.instance) {
            span.in_scope(|| tracing::warn!(%error, "inbox messages were taken over by another instance; their results are dropped"));
        }
        for id in &response.lost {
            bump(&c.lease_lost);
            if self.in_flight.contains(id) {
                self.lost.insert(*id);
            }
        }
        if lag_due {
            self.last_lag = Some(Instant::now());
            if let Some(lag) = response.lag {
                c.queue_depth.store(lag.depth, Ordering::Relaxed);
                let micros = u64::try_from(lag.oldest.as_micros()).unwrap_or(UNMEASURED - 1);
                c.queue_lag
                    .store(micros.min(UNMEASURED - 1), Ordering::Relaxed);
                span.record("queue_depth", lag.depth);
                span.record(
                    "queue_lag_ms",
                    u64::try_from(lag.oldest.as_millis()).unwrap_or(u64::MAX),
                );
            }
        }
        span.record("completed", response.completed.len());
        span.record("failed", response.failed.len());
        span.record("leased", response.leased.len());
        span.record("lost", response.lost.len());
        response.leased
    }
}

async fn run(inbox: Inbox, options: InboxWorkerOptions, shared: Arc<Shared>) -> usize {
    let (tx, mut rx) = mpsc::unbounded_channel::<(MessageId, Outcome)>();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let renew_every = inbox.options().renew_every.max(Duration::from_millis(1));
    let mut books = Books {
        instance: inbox.instance(),
        lease: inbox.options().lease,
        handler: inbox.options().handler.clone(),
        inbox,
        in_flight: HashSet::new(),
        lost: HashSet::new(),
        finished: Vec::new(),
        last_renew: Instant::now(),
        last_lag: None,
    };
    while !shared.stopping.load(Ordering::SeqCst) {
        while let Ok((id, outcome)) = rx.try_recv() {
            books.take_done(id, outcome);
        }
        let free = options.concurrency.saturating_sub(books.in_flight.len());
        let leased = books.tick(free, renew_every, options.poll_interval).await;
        for leased in leased {
            let id = leased.message.id;
            let report = Report {
                id,
                tx: tx.clone(),
                sent: false,
            };
            books.in_flight.insert(id);
            let inbox = books.inbox.clone();
            tasks.spawn(async move {
                let outcome = match inbox.handle_leased(&leased).await {
                    Ok(()) => Outcome::Handled,
                    Err(error) => Outcome::Failed(error),
                };
                report.send(outcome);
            });
        }
        let wait = if books.in_flight.is_empty() {
            options.poll_interval
        } else {
            options.poll_interval.min(renew_every)
        };
        tokio::select! {
            () = shared.stop.notified() => {}
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            Some((id, outcome)) = rx.recv() => books.take_done(id, outcome),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Graceful: finish what is in flight (renewing its leases meanwhile), or
    // within the grace period; report it; release what did not finish.
    let grace = *lock(&shared.grace);
    let deadline = grace.map(|g| Instant::now() + g);
    while !books.in_flight.is_empty() {
        let until = deadline.map_or(renew_every, |d| {
            d.saturating_duration_since(Instant::now()).min(renew_every)
        });
        tokio::select! {
            Some((id, outcome)) = rx.recv() => books.take_done(id, outcome),
            () = tokio::time::sleep(until) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                books.tick(0, renew_every, Duration::MAX).await;
            }
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let mut left = Vec::new();
    while let Some((id, outcome)) = rx.recv().await {
        match outcome {
            Outcome::Dropped if !books.lost.contains(&id) => left.push(id),
            outcome => books.take_done(id, outcome),
        }
    }
    // Report what finished (retried once if the first tick fails).
    for _ in 0..2 {
        if books.finished.is_empty() {
            break;
        }
        books.tick(0, Duration::MAX, Duration::MAX).await;
    }
    let queue = books.inbox.queue();
    if left.is_empty() {
        return 0;
    }
    let instance = books.instance;
    if queue.release(&left, instance).await.is_ok() {
        return left.len();
    }
    // All or none failed (one finished or was taken over as it was dropped):
    // one at a time.
    let mut released = 0;
    for id in left {
        match queue.release(&[id], instance).await {
            Ok(()) => released += 1,
            Err(error) => tracing::warn!(
                %error, message_id = %id,
                "could not release the lease of an unfinished inbox message; it is taken over \
                 when the lease expires"
            ),
        }
    }
    released
}

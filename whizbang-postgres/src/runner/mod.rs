//! The partitioned runner: finds perspective work in the database and shares
//! it among processes.
//!
//! Every registered perspective (async and inline alike: an inline one
//! applies right after the append in the appending process, and this runner
//! recovers it from the log after a crash) is run per leased (perspective,
//! partition): read the partition's feed after the perspective's checkpoint
//! ([`feed`]), catch up each stream it names with
//! [`Runtime::catch_up`](whizbang_core::Runtime::catch_up) (the perspective
//! store's claim and fenced cursor make each event apply exactly once, in
//! order, whoever else runs it), then move the checkpoint with a statement
//! fenced on the lease (for a held-back perspective whose run is one claim,
//! in that claim's transaction: [`feed::Ride`]). Leases and heartbeats are
//! [`lease`]'s.
//!
//! Woken by the LISTEN task (new events in a partition, a reconnect) and by
//! the rescan timer. Holds the runtime weakly: it stops when the runtime is
//! dropped, and then releases its leases.

pub(crate) mod feed;
mod held;
pub(crate) mod lease;

use crate::listen::{gone, Dirty, Gone, Wakeups};
use crate::PostgresOptions;
use lease::Lease;
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::{Id, JoinSet};
use tokio::time::MissedTickBehavior;
use tracing::Instrument;
use uuid::Uuid;
use whizbang_core::{Error, Runtime, StreamId, WeakRuntime};

/// What the runner needs besides the runtime.
pub(crate) struct Config {
    pub(crate) pool: PgPool,
    pub(crate) instance_id: Uuid,
    pub(crate) options: PostgresOptions,
}

/// A registered perspective as the runner sees it.
struct Job {
    name: &'static str,
    handled: Vec<&'static str>,
    /// When it runs (see [`held`]).
    strategy: &'static dyn whizbang_core::strategy::SyncStrategy,
    schedule: held::Schedule,
}

struct Runner {
    config: Config,
    jobs: Vec<Job>,
    names: Vec<&'static str>,
    leases: BTreeSet<Lease>,
    last_heartbeat: Option<Instant>,
}

/// Runs until the runtime behind `runtime` is dropped, then releases the
/// instance's leases.
pub(crate) async fn run(config: Config, runtime: WeakRuntime, wakeups: Arc<Wakeups>, stop: Gone) {
    let declared = runtime.upgrade().map(|rt| {
        rt.registry()
            .perspectives()
            .iter()
            .map(|p| held::Declared {
                name: p.name,
                mode: p.mode,
                strategy: p.strategy.describe(),
                event_types: (!p.is_keyed()).then(|| p.event_types.to_vec()),
            })
            .collect::<Vec<_>>()
    });
    if let Some(declared) = declared {
        if let Err(error) = held::declare(&config.pool, config.instance_id, &declared).await {
            tracing::warn!(%error, "recording the perspectives' strategies failed (status shows none)");
        }
    }
    let Some(jobs) = runtime.upgrade().map(|rt| {
        rt.registry()
            .perspectives()
            .iter()
            .map(|p| Job {
                name: p.name,
                handled: p.event_types.to_vec(),
                strategy: p.strategy,
                schedule: held::Schedule::default(),
            })
            .collect::<Vec<_>>()
    }) else {
        return;
    };
    let span = tracing::info_span!("whizbang.postgres.runner", instance = %config.instance_id);
    let mut runner = Runner {
        names: jobs.iter().map(|j| j.name).collect(),
        jobs,
        config,
        leases: BTreeSet::new(),
        last_heartbeat: None,
    };
    tokio::select! {
        () = runner.work(&runtime, &wakeups).instrument(span.clone()) => {}
        () = gone(stop) => {}
    }
    let _enter = span.enter();
    match lease::release_all(&runner.config.pool, runner.config.instance_id, &[]).await {
        Ok(()) => tracing::info!("runner stopped: the runtime is gone; leases released"),
        Err(error) => {
            tracing::warn!(%error, "runner stopped; releasing its leases failed (they expire)")
        }
    }
}

impl Runner {
    async fn work(&mut self, runtime: &WeakRuntime, wakeups: &Wakeups) {
        let options = self.config.options.clone();
        let mut rescan = tokio::time::interval(options.rescan_interval);
        rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(options.heartbeat_interval);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut dirty = Dirty {
            all: true,
            ..Dirty::default()
        };
        let mut recheck = FIRST_RECHECK;
        let mut rescanning = true;
        loop {
            // Partitions whose new events the horizon held back (a
            // transaction older than theirs was still open) are read again
            // soon, backing off to the rescan interval, not only at the next
            // rescan: a short transaction elsewhere must not delay a wake-up
            // by a whole interval.
            let held = self.scan(runtime, dirty, rescanning).await;
            if runtime.upgrade().is_none() {
                return;
            }
            let delay = recheck;
            recheck = if held == 0 {
                FIRST_RECHECK
            } else {
                (recheck * 2).min(options.rescan_interval)
            };
            let due = self.jobs.iter().filter_map(|j| j.schedule.due).min();
            rescanning = false;
            dirty = tokio::select! {
                _ = beat.tick() => {
                    let acquired = self.maintain_if_due().await;
                    Dirty { partitions: acquired, ..Dirty::default() }
                }
                _ = rescan.tick() => {
                    rescanning = true;
                    Dirty { all: true, ..Dirty::default() }
                }
                () = wakeups.notified() => {
                    let woken = wakeups.take();
                    let notices = woken.notices.max(1);
                    self.jobs.iter_mut().for_each(|j| j.schedule.woke(notices));
                    woken
                }
                () = tokio::time::sleep(delay), if held != 0 => Dirty::default(),
                () = sleep_until(due), if due.is_some() => Dirty { all: true, ..Dirty::default() },
            };
            dirty.partitions |= held;
        }
    }

    /// Heartbeats, renews and rebalances when a heartbeat is due. Returns
    /// the partitions newly leased (a bit each), to scan at once.
    async fn maintain_if_due(&mut self) -> u32 {
        let every = self.config.options.heartbeat_interval;
        if self.last_heartbeat.is_some_and(|at| at.elapsed() < every) {
            return 0;
        }
        match self.maintain().await {
            Ok(acquired) => {
                self.last_heartbeat = Some(Instant::now());
                acquired
            }
            Err(error) => {
                tracing::warn!(%error, "runner heartbeat failed; retrying at the next tick");
                0
            }
        }
    }

    async fn maintain(&mut self) -> Result<u32, sqlx::Error> {
        let Config {
            pool,
            instance_id: me,
            options,
        } = &self.config;
        let (me, lease_for) = (*me, options.lease_duration);
        lease::heartbeat(pool, me, &self.names, lease_for).await?;
        let held = lease::renew(pool, me, lease_for, &self.names).await?;
        // Leases of perspectives this build does not run go back at once.
        lease::release_all(pool, me, &self.names).await?;
        for lost in self.leases.iter().filter(|l| !held.contains(l)) {
            tracing::warn!(
                perspective = lost.perspective,
                partition = lost.partition,
                "partition lease lost to another instance"
            );
        }
        self.leases = held.into_iter().collect();
        let live = lease::live_counts(pool, &self.names, lease_for).await?;
        let mut acquired = 0u32;
        for name in self.names.clone() {
            let share = lease::fair_share(live.get(name).copied().unwrap_or(1));
            let mine: Vec<Lease> = self
                .leases
                .iter()
                .filter(|l| l.perspective == name)
                .copied()
                .collect();
            if mine.len() > share {
                let extra: Vec<i16> = mine[share..].iter().map(|l| l.partition).collect();
                lease::release(pool, me, name, &extra).await?;
                for l in &mine[share..] {
                    self.leases.remove(l);
                }
                tracing::info!(perspective = name, partitions = ?extra, share, "released partitions above the fair share");
            } else if mine.len() < share {
                for l in lease::acquire(pool, me, name, share - mine.len(), lease_for).await? {
                    acquired |= 1 << l.partition;
                    self.leases.insert(l);
                }
            }
        }
        Ok(acquired)
    }

    /// Drains the feeds of the leased partitions `dirty` names, every
    /// partition of a perspective together (`rescan`: at the rescan timer).
    /// Returns the partitions whose new events the horizon held back (a bit
    /// each).
    async fn scan(&mut self, runtime: &WeakRuntime, dirty: Dirty, rescan: bool) -> u32 {
        let mut held = 0u32;
        for job in 0..self.jobs.len() {
            let name = self.jobs[job].name;
            let Job {
                strategy, schedule, ..
            } = &self.jobs[job];
            if !strategy.is_realtime() && !schedule.should_read(*strategy, Instant::now(), rescan) {
                continue;
            }
            // A held-back perspective counts what is pending over all its
            // partitions: every one is read, unless nothing was pending
            // (then new work is where the wake-ups say).
            let all = dirty.all || !strategy.is_realtime() && !schedule.is_idle();
            let mut targets: Vec<Lease> = self
                .leases
                .iter()
                .filter(|l| l.perspective == name && (all || dirty.has(l.partition)))
                .copied()
                .collect();
            while !targets.is_empty() {
                // A long backlog must not starve the heartbeat.
                let _ = self.maintain_if_due().await;
                targets.retain(|t| self.leases.contains(t));
                if targets.is_empty() {
                    break;
                }
                match self.batch(runtime, job, &targets).await {
                    Ok(step) => {
                        held |= step.held_back;
                        targets = step.more;
                    }
                    Err(BatchError::RuntimeGone) => return held,
                    Err(error) => {
                        tracing::warn!(
                            perspective = name, %error,
                            "feed batch failed; its partitions are retried at the next rescan"
                        );
                        break;
                    }
                }
            }
        }
        held
    }

    /// One batch of one perspective over several leased partitions: one
    /// read of every partition's feed, the catch-ups of every stream named
    /// (at most the runner concurrency at once, across partitions), one
    /// fenced statement moving every checkpoint whose streams all caught up.
    async fn batch(
        &mut self,
        runtime: &WeakRuntime,
        job: usize,
        leases: &[Lease],
    ) -> Result<Step, BatchError> {
        let perspective = self.jobs[job].name;
        let cap = self.config.options.batch_size;
        let partitions: Vec<i16> = leases.iter().map(|l| l.partition).collect();
        let read = feed::read_many(
            &self.config.pool,
            perspective,
            &partitions,
            &self.jobs[job].handled,
            cap,
            !self.jobs[job].strategy.is_realtime(),
        )
        .instrument(tracing::debug_span!(
            "whizbang.postgres.feed_read",
            perspective,
            partitions = partitions.len(),
        ))
        .await?;
        let streams: Vec<Uuid> = read
            .batches
            .values()
            .flat_map(|b| b.streams.iter().copied())
            .collect();
        let events: usize = read.batches.values().map(|b| b.events).sum();
        let held_back = Step {
            more: Vec::new(),
            held_back: read.held_back,
        };
        let Job {
            strategy, schedule, ..
        } = &mut self.jobs[job];
        // A held-back perspective's schedule hears of every read, an empty
        // one too (it is idle then, unless the horizon held events back).
        if !strategy.is_realtime() {
            let (pending, held) = (read.pending() as u64, read.held() as u64);
            if !schedule.run_now(
                *strategy,
                pending,
                held,
                read.held_uncounted,
                Instant::now(),
            ) {
                return Ok(held_back);
            }
        }
        if events == 0 {
            return Ok(held_back);
        }
        let span = tracing::debug_span!(
            "whizbang.postgres.batch",
            perspective,
            partitions = partitions.len(),
            events,
            streams = streams.len(),
        );
        let runtime = runtime.upgrade().ok_or(BatchError::RuntimeGone)?;
        let limit = self.config.options.effective_runner_concurrency();
        let held = !self.jobs[job].strategy.is_realtime();
        // A held-back perspective's run of up to `MAX_TOGETHER` streams is
        // one claim: the checkpoint moves in its transaction (when the claim
        // commits nothing, or fails, it moves on its own below).
        let keyed = runtime
            .registry()
            .perspective_named(perspective)
            .is_some_and(|r| r.is_keyed());
        let ride =
            (held && !keyed && !streams.is_empty() && streams.len() <= MAX_TOGETHER).then(|| {
                let moves = leases
                    .iter()
                    .filter_map(|l| {
                        let last = read.batches.get(&l.partition)?.last.clone()?;
                        Some((l.partition, l.fence, last))
                    })
                    .collect();
                feed::Ride::new(perspective, self.config.instance_id, moves)
            });
        let failed = catch_up_all(&runtime, perspective, &streams, limit, held, ride.clone())
            .instrument(span)
            .await;
        drop(runtime);
        // A partition with a stream that did not catch up keeps its
        // checkpoint: its batch is read again at the next rescan.
        let moves: Vec<(i16, i64, &feed::Position)> = leases
            .iter()
            .filter(|l| !failed.contains(&l.partition))
            .filter_map(|l| {
                let last = read.batches.get(&l.partition)?.last.as_ref()?;
                Some((l.partition, l.fence, last))
            })
            .collect();
        let moved = match ride.and_then(|r| r.moved()) {
            // Every stream caught up in the claim that moved the checkpoint.
            Some(moved) => moved,
            None => {
                feed::advance_many(
                    &self.config.pool,
                    perspective,
                    self.config.instance_id,
                    &moves,
                )
                .instrument(tracing::debug_span!(
                    "whizbang.postgres.checkpoint",
                    perspective,
                    partitions = moves.len(),
                ))
                .await?
            }
        };
        for (partition, fence, _) in &moves {
            if !moved.contains(partition) {
                tracing::warn!(
                    perspective,
                    partition,
                    fence,
                    "checkpoint not moved: the lease was lost; leaving the partition"
                );
                self.leases.remove(&Lease {
                    perspective,
                    partition: *partition,
                    fence: *fence,
                });
            }
        }
        tracing::debug!(
            perspective,
            partitions = moved.len(),
            events,
            streams = streams.len(),
            "feed batch consumed"
        );
        let more: Vec<Lease> = leases
            .iter()
            .filter(|l| {
                moved.contains(&l.partition)
                    && read
                        .batches
                        .get(&l.partition)
                        .is_some_and(|b| b.events >= cap as usize)
            })
            .copied()
            .collect();
        let Job {
            strategy, schedule, ..
        } = &mut self.jobs[job];
        if !strategy.is_realtime() {
            schedule.ran(*strategy, Instant::now(), !more.is_empty());
        }
        Ok(Step {
            more,
            held_back: read.held_back,
        })
    }
}

/// What a batch leaves to do.
struct Step {
    /// Leases whose feed filled the batch: more may follow at once.
    more: Vec<Lease>,
    /// Partitions with events the horizon held back (a bit each).
    held_back: u32,
}

/// Sleeps until `due` (for ever when `None`: its branch is disabled then).
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// The first delay before a held-back partition is read again.
const FIRST_RECHECK: std::time::Duration = std::time::Duration::from_millis(5);

/// Why a batch stopped before its checkpoint moved.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("reading or checkpointing the feed failed: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("the runtime is gone")]
    RuntimeGone,
}

/// The most streams one catch-up transaction of the runner covers.
const MAX_TOGETHER: usize = 100;

/// Catches `perspective` up on every stream, in at most `limit` tasks at
/// once, each catching a share of the streams up in one transaction
/// ([`Runtime::catch_up_together`]), or one by one when that commits nothing
/// (an event failed to apply: the one-by-one path records the failure).
/// A realtime perspective spreads the streams over the tasks (the latency of
/// a batch is the slowest share); a `held` one (its strategy batches) takes
/// shares of [`MAX_TOGETHER`] streams, so a run of up to that many streams
/// is one claim and one commit.
/// Returns the partitions of the streams that did not catch up: a failed
/// cursor (the store recorded it) counts as caught up and does not stop the
/// others; any other error, or a task that panicked or was cancelled (it has
/// no result), keeps its partition's checkpoint where it is, so its stream is
/// read again, never passed over.
async fn catch_up_all(
    runtime: &Runtime,
    perspective: &'static str,
    streams: &[Uuid],
    limit: usize,
    held: bool,
    ride: Option<Arc<feed::Ride>>,
) -> BTreeSet<i16> {
    type Outcome = Vec<(StreamId, Result<(), Error>)>;
    type Joined = Option<std::result::Result<(Id, Outcome), tokio::task::JoinError>>;
    let limit = limit.max(1);
    let share = if held {
        MAX_TOGETHER
    } else {
        streams.len().div_ceil(limit).clamp(1, MAX_TOGETHER)
    };
    // A keyed perspective has one cursor: one catch-up covers every stream.
    let keyed = runtime
        .registry()
        .perspective_named(perspective)
        .is_some_and(|r| r.is_keyed());
    let share = if keyed { streams.len().max(1) } else { share };
    let mut running = JoinSet::new();
    let mut started: HashMap<Id, Vec<StreamId>> = HashMap::new();
    let mut failed = BTreeSet::new();
    let mut collect = |joined: Joined, started: &mut HashMap<Id, Vec<StreamId>>| {
        let outcome = match joined {
            None => return,
            Some(Ok((id, outcome))) => {
                started.remove(&id);
                outcome
            }
            Some(Err(lost)) => {
                let streams = started.remove(&lost.id()).unwrap_or_default();
                tracing::warn!(
                    perspective, streams = streams.len(), error = %lost,
                    "a catch-up task ended without a result; its partitions are read again"
                );
                if streams.is_empty() {
                    // Unknown streams: keep every partition of the batch.
                    failed.extend(0..crate::wire::PARTITIONS);
                }
                failed.extend(streams.into_iter().map(crate::wire::partition_of));
                return;
            }
        };
        for (stream, result) in outcome {
            match result {
                Ok(()) => {}
                Err(Error::PerspectiveFailed {
                    version, message, ..
                }) => tracing::warn!(
                    perspective, %stream, version, %message,
                    "perspective failed on this stream; its cursor is marked failed (retry or skip it)"
                ),
                Err(error) => {
                    tracing::warn!(
                        perspective, %stream, %error,
                        "catching up a stream failed; its partition is read again at the next rescan"
                    );
                    failed.insert(crate::wire::partition_of(stream));
                }
            }
        }
    };
    // The checkpoint rides only with a claim of every stream.
    let mut ride = ride.filter(|_| streams.len() <= share);
    for chunk in streams.chunks(share) {
        while running.len() >= limit {
            collect(running.join_next_with_id().await, &mut started);
        }
        let runtime = runtime.clone();
        let chunk: Vec<StreamId> = chunk.iter().copied().map(StreamId::from).collect();
        let streams = chunk.clone();
        let ride = ride.take();
        let riding = ride.is_some();
        let work = async move {
            // One stream of a ride is claimed as a batch too: the batch
            // commit is the one that takes the checkpoint along.
            if streams.len() > 1 || riding {
                match runtime.catch_up_together(perspective, &streams).await {
                    Ok(Some(_)) => return streams.into_iter().map(|s| (s, Ok(()))).collect(),
                    Ok(None) => {}
                    Err(error) => tracing::debug!(
                        perspective, streams = streams.len(), %error,
                        "catching up streams together failed; catching them up one by one"
                    ),
                }
            }
            let mut outcome = Vec::with_capacity(streams.len());
            for stream in streams {
                let result = runtime.catch_up(perspective, stream).await.map(drop);
                outcome.push((stream, result));
            }
            outcome
        };
        let task = match ride {
            Some(ride) => running.spawn(feed::Ride::scope(ride, work)),
            None => running.spawn(work),
        };
        started.insert(task.id(), chunk);
    }
    while !running.is_empty() {
        collect(running.join_next_with_id().await, &mut started);
    }
    failed
}

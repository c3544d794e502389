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
//! fenced on the lease. Leases and heartbeats are [`lease`]'s.
//!
//! Woken by the LISTEN task (new events in a partition, a reconnect) and by
//! the rescan timer. Holds the runtime weakly: it stops when the runtime is
//! dropped, and then releases its leases.

pub(crate) mod feed;
pub(crate) mod lease;

use crate::listen::{gone, Dirty, Gone, Wakeups};
use crate::PostgresOptions;
use lease::Lease;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;
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
    let Some(jobs) = runtime.upgrade().map(|rt| {
        rt.registry()
            .perspectives()
            .iter()
            .map(|p| Job {
                name: p.name,
                handled: p.event_types.to_vec(),
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
        loop {
            self.scan(runtime, dirty).await;
            if runtime.upgrade().is_none() {
                return;
            }
            dirty = tokio::select! {
                _ = beat.tick() => {
                    let acquired = self.maintain_if_due().await;
                    Dirty { partitions: acquired, all: false }
                }
                _ = rescan.tick() => Dirty { all: true, ..Dirty::default() },
                () = wakeups.notified() => wakeups.take(),
            };
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

    /// Drains the feeds of the leased partitions `dirty` names.
    async fn scan(&mut self, runtime: &WeakRuntime, dirty: Dirty) {
        let targets: Vec<Lease> = self
            .leases
            .iter()
            .filter(|l| dirty.has(l.partition))
            .copied()
            .collect();
        for target in targets {
            loop {
                // A long backlog must not starve the heartbeat.
                let _ = self.maintain_if_due().await;
                if !self.leases.contains(&target) {
                    break;
                }
                match self.batch(runtime, &target).await {
                    Ok(more) if more => continue,
                    Ok(_) => break,
                    Err(BatchError::RuntimeGone) => return,
                    Err(error) => {
                        tracing::warn!(
                            perspective = target.perspective, partition = target.partition, %error,
                            "feed batch failed; the partition is retried at the next rescan"
                        );
                        break;
                    }
                }
            }
        }
    }

    /// One batch of one (perspective, partition). Returns whether more may
    /// follow at once.
    async fn batch(&mut self, runtime: &WeakRuntime, lease: &Lease) -> Result<bool, BatchError> {
        let Some(job) = self.jobs.iter().find(|j| j.name == lease.perspective) else {
            return Ok(false);
        };
        let cap = self.config.options.batch_size;
        let batch = feed::read(&self.config.pool, lease, &job.handled, cap).await?;
        let Some(last) = batch.last.clone() else {
            return Ok(false);
        };
        let span = tracing::debug_span!(
            "whizbang.postgres.batch",
            perspective = lease.perspective,
            partition = lease.partition,
            events = batch.events,
            streams = batch.streams.len(),
        );
        let runtime = runtime.upgrade().ok_or(BatchError::RuntimeGone)?;
        let limit = self.config.options.effective_runner_concurrency();
        catch_up_all(&runtime, lease.perspective, &batch.streams, limit)
            .instrument(span)
            .await?;
        drop(runtime);
        let moved = feed::advance(
            &self.config.pool,
            lease.perspective,
            lease.partition,
            self.config.instance_id,
            lease.fence,
            &last,
        )
        .await?;
        if !moved {
            tracing::warn!(
                perspective = lease.perspective,
                partition = lease.partition,
                fence = lease.fence,
                "checkpoint not moved: the lease was lost; leaving the partition"
            );
            self.leases.remove(lease);
            return Ok(false);
        }
        tracing::debug!(
            perspective = lease.perspective,
            partition = lease.partition,
            events = batch.events,
            streams = batch.streams.len(),
            "feed batch consumed"
        );
        Ok(batch.events >= cap as usize)
    }
}

/// Why a batch stopped before its checkpoint moved.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("reading or checkpointing the feed failed: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("catching up stream {stream} failed: {source}")]
    CatchUp { stream: StreamId, source: Error },
    #[error("a catch-up task ended without a result: {0}")]
    Lost(tokio::task::JoinError),
    #[error("the runtime is gone")]
    RuntimeGone,
}

/// Catches `perspective` up on every stream, at most `limit` at once. A
/// failed cursor (the store recorded it) does not stop the others; any other
/// error keeps the checkpoint where it is, so the batch is read again.
async fn catch_up_all(
    runtime: &Runtime,
    perspective: &'static str,
    streams: &[Uuid],
    limit: usize,
) -> Result<(), BatchError> {
    let mut running = JoinSet::new();
    let mut first_error = None;
    let mut results = BTreeMap::new();
    // A catch-up task that panicked or was cancelled has no result: the
    // batch must then not be checkpointed, or its stream would be passed over.
    let mut lost = None;
    let mut collect = |joined: Option<std::result::Result<_, tokio::task::JoinError>>| match joined
    {
        Some(Ok((stream, result))) => {
            results.insert(stream, result);
        }
        Some(Err(error)) => lost = Some(error),
        None => {}
    };
    for stream in streams {
        while running.len() >= limit.max(1) {
            collect(running.join_next().await);
        }
        let runtime = runtime.clone();
        let stream = StreamId::from(*stream);
        running.spawn(async move { (stream, runtime.catch_up(perspective, stream).await) });
    }
    while !running.is_empty() {
        collect(running.join_next().await);
    }
    if let Some(error) = lost {
        return Err(BatchError::Lost(error));
    }
    for (stream, result) in results {
        match result {
            Ok(_) => {}
            Err(Error::PerspectiveFailed {
                version, message, ..
            }) => tracing::warn!(
                perspective, %stream, version, %message,
                "perspective failed on this stream; its cursor is marked failed (retry or skip it)"
            ),
            Err(source) => {
                if first_error.is_none() {
                    first_error = Some(BatchError::CatchUp { stream, source });
                }
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

//! Wake-ups in from other processes: one LISTEN connection per backend.
//!
//! Applied notifications (a perspective commit anywhere) wake this runtime's
//! waiters on that (perspective, stream); events notifications (an append
//! anywhere) wake the runner for those partitions. After the connection is
//! re-established every NOTIFY sent meanwhile is lost, so every waiter
//! re-asks and the runner rescans everything. This module owns the LISTEN
//! connection and the wake-up flags; it applies nothing itself.

use crate::wire;
use sqlx::postgres::{PgListener, PgNotification};
use sqlx::PgPool;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tracing::Instrument;
use whizbang_core::backend::{ApplyReport, WakeupSink};

/// What the runner has been woken for since it last looked: partitions
/// (a bit each) or everything.
#[derive(Default)]
pub(crate) struct Wakeups {
    dirty: Mutex<Dirty>,
    notify: Notify,
}

#[derive(Default, Clone, Copy)]
pub(crate) struct Dirty {
    /// Bit `p` set: partition `p` has new events.
    pub(crate) partitions: u32,
    /// Rescan every leased partition.
    pub(crate) all: bool,
    /// Notifications of new events taken in (each is at least one event).
    pub(crate) notices: u64,
}

impl Dirty {
    /// Whether partition `p` must be scanned.
    pub(crate) fn has(&self, p: i16) -> bool {
        self.all || (0..32).contains(&p) && self.partitions & (1 << p) != 0
    }
}

impl Wakeups {
    fn lock(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `partitions` as having new events and wakes the runner.
    pub(crate) fn partitions(&self, partitions: &[i16]) {
        let mut dirty = self.lock();
        dirty.notices += 1;
        for p in partitions {
            if (0..32).contains(p) {
                dirty.partitions |= 1 << p;
            }
        }
        drop(dirty);
        self.notify.notify_one();
    }

    /// Asks the runner to rescan everything it leases.
    pub(crate) fn all(&self) {
        self.lock().all = true;
        self.notify.notify_one();
    }

    /// What was marked since the last call, clearing it.
    pub(crate) fn take(&self) -> Dirty {
        std::mem::take(&mut *self.lock())
    }

    /// Resolves once something was marked (at once if it already was).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// Resolves when the runtime is gone: its sender lives in an apply listener
/// the runtime holds, so it is dropped with the runtime.
pub(crate) type Gone = watch::Receiver<()>;

/// Waits until the runtime that holds `gone`'s sender is dropped.
pub(crate) async fn gone(mut gone: Gone) {
    while gone.changed().await.is_ok() {}
}

/// A listener on both channels, LISTENing when this returns.
/// The channels are those of the pool's schema ([`wire::channel`]).
pub(crate) async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    let channels = Channels::of(pool);
    listener
        .listen_all([channels.events.as_str(), channels.applied.as_str()])
        .await?;
    Ok(listener)
}

/// The names of the events and applied channels in a pool's schema.
pub(crate) struct Channels {
    events: String,
    applied: String,
}

impl Channels {
    pub(crate) fn of(pool: &PgPool) -> Self {
        Channels {
            events: wire::channel(pool, wire::EVENTS_CHANNEL),
            applied: wire::channel(pool, wire::APPLIED_CHANNEL),
        }
    }
}

/// What the LISTEN task feeds.
pub(crate) struct Targets {
    /// This runtime's waiters.
    pub(crate) sink: WakeupSink,
    /// Its runner.
    pub(crate) wakeups: std::sync::Arc<Wakeups>,
    /// The perspectives registered in this runtime (their `'static` names).
    pub(crate) perspectives: Vec<&'static str>,
    /// The channels listened on (those of the backend's schema).
    pub(crate) channels: Channels,
}

/// The LISTEN task: runs until the runtime is gone.
pub(crate) async fn run(listener: Option<PgListener>, pool: PgPool, targets: Targets, stop: Gone) {
    let span = tracing::info_span!("whizbang.postgres.listen");
    tokio::select! {
        () = listen(listener, &pool, &targets).instrument(span) => {}
        () = gone(stop) => {}
    }
    tracing::debug!("whizbang LISTEN task stopped: the runtime is gone");
}

async fn listen(listener: Option<PgListener>, pool: &PgPool, targets: &Targets) {
    let mut listener = match listener {
        Some(listener) => listener,
        None => {
            let listener = reconnect(pool).await;
            if !reconnected(targets) {
                return;
            }
            listener
        }
    };
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if !deliver(&notification, targets) {
                    return;
                }
            }
            // The connection was lost and sqlx re-established it (and its
            // LISTENs) before returning: what was sent meanwhile is gone.
            Ok(None) => {
                tracing::warn!(
                    "LISTEN connection was lost and re-established; every waiter re-asks"
                );
                if !reconnected(targets) {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                drop(listener);
                listener = reconnect(pool).await;
                if !reconnected(targets) {
                    return;
                }
            }
        }
    }
}

/// A new listener, retrying with a bounded backoff until it connects.
async fn reconnect(pool: &PgPool) -> PgListener {
    let mut delay = Duration::from_millis(50);
    loop {
        match connect(pool).await {
            Ok(listener) => return listener,
            Err(error) => {
                tracing::warn!(%error, "could not LISTEN; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// After a reconnect: waiters re-ask, the runner rescans. `false` when the
/// runtime is gone.
fn reconnected(targets: &Targets) -> bool {
    targets.wakeups.all();
    targets.sink.reask_all()
}

/// Routes one notification. `false` when the runtime is gone.
fn deliver(notification: &PgNotification, targets: &Targets) -> bool {
    let channel = notification.channel();
    if channel == targets.channels.applied {
        // One entry per line (a batch commit names many streams).
        for entry in notification.payload().lines() {
            let Some((name, stream, version)) = wire::decode_applied(entry) else {
                tracing::debug!(payload = entry, "ignoring a foreign applied payload");
                continue;
            };
            // A perspective this runtime does not register has no waiter here.
            let Some(name) = targets.perspectives.iter().find(|p| **p == name) else {
                continue;
            };
            if !targets
                .sink
                .notify(&ApplyReport::new(name, stream, version, Vec::new()))
            {
                return false;
            }
        }
        true
    } else if channel == targets.channels.events {
        match wire::decode_partitions(notification.payload()) {
            Some(partitions) => targets.wakeups.partitions(&partitions),
            None => targets.wakeups.all(),
        }
        true
    } else {
        true
    }
}

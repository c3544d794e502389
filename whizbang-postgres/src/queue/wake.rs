//! Wake-ups for queue workers: a message became leasable (a failed attempt
//! waits for its retry, leases were released, dead letters replayed) on any
//! instance. The queue sends a NOTIFY on [`QUEUE_CHANNEL`] after such a
//! statement commits; [`QueueWakeups`] listens and wakes a worker.

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The channel the queue notifies when messages become leasable (in a
/// schema of its own, [`PostgresOptions::schema`](crate::PostgresOptions::schema),
/// `wh_queue.<schema>`).
pub const QUEUE_CHANNEL: &str = "wh_queue";

/// Sends the wake-up on its own task, after the statement that made messages
/// leasable committed (a NOTIFY inside it would serialise commits). A lost
/// wake-up only delays the message until a worker's next poll.
pub(super) fn announce(pool: &PgPool) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let pool = pool.clone();
    handle.spawn(async move {
        if let Err(error) = sqlx::query("select pg_notify($1, '')")
            .bind(crate::wire::channel(&pool, QUEUE_CHANNEL))
            .execute(&pool)
            .await
        {
            tracing::debug!(%error, "could not send a queue wake-up; workers find the message at their next poll");
        }
    });
}

/// A LISTEN on [`QUEUE_CHANNEL`] that wakes a worker (`notify_one` on its
/// `Notify`, e.g. `InboxWorkerHandle::waker()`) for every notification, and
/// once after each (re)connect, for what was sent while it was not
/// listening. Stops when dropped.
#[derive(Debug)]
pub struct QueueWakeups {
    task: tokio::task::JoinHandle<()>,
    listening: watch::Receiver<bool>,
}

impl QueueWakeups {
    pub(super) fn start(pool: PgPool, waker: Arc<Notify>) -> QueueWakeups {
        let (tx, listening) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                match listen(&pool, &waker, &tx).await {
                    Ok(()) => return,
                    Err(error) => {
                        let _ = tx.send(false);
                        tracing::warn!(%error, "queue wake-ups lost their connection; reconnecting in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        QueueWakeups { task, listening }
    }

    /// Waits until the LISTEN is established (wake-ups sent before it may be
    /// missed, and are covered by the wake-up it gives when it starts).
    pub async fn listening(&mut self) {
        let _ = self.listening.wait_for(|l| *l).await;
    }
}

impl Drop for QueueWakeups {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen(
    pool: &PgPool,
    waker: &Notify,
    listening: &watch::Sender<bool>,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen(&crate::wire::channel(pool, QUEUE_CHANNEL))
        .await?;
    let _ = listening.send(true);
    waker.notify_one();
    loop {
        listener.recv().await?;
        waker.notify_one();
    }
}

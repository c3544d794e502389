//! Wake-ups out: the NOTIFYs that tell other processes about a commit (new
//! events for their runners, applied events for their waiters), sent right
//! after the commit instead of inside it.
//!
//! Why after: a `NOTIFY` inside a transaction makes PostgreSQL take a
//! database-wide lock at commit and hold it until the commit record is
//! flushed, so every notifying transaction commits after the other (no group
//! commit): with concurrent writers, commits queue behind each other's
//! flush. Sent after the commit, the `NOTIFY` is a transaction that writes
//! nothing (no flush), and commits run side by side. A listener still hears
//! of a commit only once it is visible.
//!
//! What it costs: a notification is lost when the process dies (or its
//! connection fails) between the commit and the send. The runner's rescan
//! timer and the waiters' backoff re-asks cover it, as they cover any lost
//! notification. This module sends; [`crate::listen`] receives.

use sqlx::PgPool;

/// Sends `payloads` on `channel` from a task of its own (one statement), so
/// the committing caller does not wait for it. Call only after a successful
/// commit.
pub(crate) fn after_commit(pool: &PgPool, channel: &'static str, payloads: Vec<String>) {
    if payloads.is_empty() {
        return;
    }
    let pool = pool.clone();
    tokio::spawn(async move {
        let sent = sqlx::query("select pg_notify($1, p) from unnest($2::text[]) as p")
            .bind(channel)
            .bind(&payloads)
            .execute(&pool)
            .await;
        if let Err(error) = sent {
            tracing::debug!(
                channel, %error,
                "a wake-up NOTIFY was not sent; rescans and re-asks cover it"
            );
        }
    });
}

//! Wake-ups sent after a commit, not inside it.
//!
//! PostgreSQL's `NOTIFY` takes a database-wide lock when its transaction
//! prepares to commit and holds it until that commit is flushed to the WAL,
//! so every notifying transaction in the database commits after the one
//! before it, each waiting for its own flush. An append therefore commits
//! its rows without notifying and then, on the same connection, sends its
//! notifications in one autocommit statement that sets
//! `synchronous_commit` to `off` for its own implicit transaction: the lock
//! is then held only for a commit that does not wait for a flush, and the
//! data commits of concurrent appends share their flushes again.
//!
//! The notification is only a wake-up: the data it announces is already
//! committed and durable when it is sent. A crash (or a dropped future, or
//! a failed statement) between the commit and this statement loses the
//! wake-up and nothing else; the runner's rescan timer and the waiters'
//! bounded re-ask find the work without it.

use sqlx::PgConnection;

/// Sends every notification in one statement, in its own transaction whose
/// commit does not wait for a WAL flush.
const SEND: &str = "select set_config('synchronous_commit', 'off', true),
            count(pg_notify(n.channel, n.payload))
       from unnest($1::text[], $2::text[]) as n(channel, payload)";

/// The notifications a transaction sends once it has committed.
#[derive(Debug, Default)]
pub(crate) struct Notifications {
    channels: Vec<String>,
    payloads: Vec<String>,
}

impl Notifications {
    /// Adds one notification of `payload` on `channel`.
    pub(crate) fn push(&mut self, channel: &str, payload: String) {
        self.channels.push(channel.to_owned());
        self.payloads.push(payload);
    }

    /// Adds one notification on `channel` per payload.
    pub(crate) fn extend(&mut self, channel: &str, payloads: Vec<String>) {
        for payload in payloads {
            self.push(channel, payload);
        }
    }

    /// Sends them on `conn` (outside any transaction, after the commit they
    /// announce) in one statement. A failure is logged at `warn` and
    /// otherwise ignored: what they announce is stored, and the rescan and
    /// re-ask timers find it without the wake-up.
    pub(crate) async fn send_after_commit(self, conn: &mut PgConnection, what: &str) {
        if self.channels.is_empty() {
            return;
        }
        if let Err(error) = sqlx::query(SEND)
            .bind(&self.channels)
            .bind(&self.payloads)
            .execute(conn)
            .await
        {
            tracing::warn!(
                %error,
                operation = what,
                "the wake-up NOTIFY after a commit failed; what was committed is stored, \
                 and runners and waiters find it on their next rescan or re-ask"
            );
        }
    }
}

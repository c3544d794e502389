//! PostgreSQL backend for whizbang, built on [`sqlx`].
//!
//! [`Postgres`] is the whole backend in one value: connect, migrate, and
//! plug it into a runtime with `Runtime::builder().backend(pg)`. That
//! installs the event store ([`PgEventStore`]), the perspective store
//! ([`PgPerspectiveStore`]), the sync backend ([`PgSyncBackend`]), a LISTEN
//! task that wakes waiters when another process applies their events, and a
//! runner that finds perspective work in the database and shares it with the
//! other processes through partition leases.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use whizbang_core::Runtime;
//! use whizbang_postgres::{Postgres, PostgresOptions};
//!
//! let url = std::env::var("DATABASE_URL")
//!     .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
//! let pg = Postgres::connect_with(&url, PostgresOptions::default().pool_size(20)).await?;
//! pg.migrate().await?; // safe on every start-up, from several processes at once
//! let runtime = Runtime::builder().backend(pg.clone()).build()?;
//! // ... serve ...
//! drop(runtime);
//! pg.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! The stores also work on their own over a pool from [`connect`] (migrated
//! with [`migrate`]), without the runner and the LISTEN task.
//!
//! # Schema
//!
//! This crate owns the database schema: the SQL migrations in the
//! workspace's top-level `migrations/` folder (reached through the
//! `whizbang-postgres/migrations` symlink, which `cargo package` follows, so
//! the published crate carries them) are embedded at compile time
//! ([`MIGRATOR`]). `0001` holds the event store (`wh_events`, `wh_streams`),
//! the per-model perspective cursors (`wh_perspective_cursors`) and read
//! models (`wh_perspective_rows`); `0002` the runner's instances
//! (`wh_instances`), partition leases (`wh_partition_leases`) and feed
//! checkpoints (`wh_feed_checkpoints`); `0003` the message queue
//! ([`PgMessageQueue`], from [`Postgres::message_queue`]):
//!
//! | table | one row per | keys and indexes |
//! | --- | --- | --- |
//! | `wh_message_queue` | message waiting (`status` `queued`) or leased (`leased`, with `lease_owner`): type, `jsonb` payload and headers, correlation and causation ids, `enqueued_at`, `available_at` (the lease's expiry, or since when it waits), `attempts`, `last_error` | primary key `message_id`; `wh_message_queue_available_idx` on `(available_at, message_id)`: the next leasable messages, read with `FOR UPDATE SKIP LOCKED` |
//! | `wh_processed_messages` | message completed: `handler`, `processed_at`; refuses a redelivered id for the retention window | primary key `message_id`; `wh_processed_messages_processed_at_idx` on `processed_at` for pruning by age |
//! | `wh_dead_letters` | message that used up its attempts: the message, `attempts`, last `error`, `dead_at` | primary key `message_id`; `wh_dead_letters_dead_at_idx` on `(dead_at, message_id)` for listing |
//!
//! A message id is in at most one of the three tables. `0003` also creates
//! the function `wh_enqueue_and_lease`, which enqueues and leases in one
//! round trip and re-checks the processed and dead tables after its insert
//! in a new snapshot, so a redelivery racing a complete of the same id is
//! never leased. Every other queue operation is one SQL statement (CTEs).
//! A fail that retries, a release and a replay send a NOTIFY on
//! [`QUEUE_CHANNEL`] once committed; [`PgMessageQueue::wakeups`] listens and
//! wakes an inbox worker (`whizbang_core::inbox`), which handles its messages
//! on this queue as on any other.
//!
//! `0004` holds the outbox (`wh_outbox`, [`PgOutbox`] from
//! [`Postgres::outbox`]): one row per outbound event (`#[event(publish)]`),
//! inserted by [`PgEventStore`]'s append in its own transaction, leased by an
//! `OutboxPublisher` through the partial index `wh_outbox_pending_idx` on
//! `(available_at, message_id) where status = 'pending'`, marked `published`
//! or `dead`. It also creates `wh_enqueue`, which a [`PgTransport`] of
//! another service calls to put a message in this schema's inbox queue
//! (pinned to its schema with `set search_path from current`), and
//! `wh_channel`.
//!
//! `0006` holds the sync log (`wh_sync_log`, written by [`PgSyncLog`]): one
//! row per explicit sync run (perspective, mode, target, `started_at`,
//! duration, applied/skipped/failed counts, outcome, error), indexed on
//! `(started_at desc, id desc)`, pruned on every insert to
//! [`PostgresOptions::sync_log_keep`] rows (and
//! [`PostgresOptions::sync_log_max_age`]).
//!
//! `0008` holds what rebuilds beside live and the operator's requests need
//! (`whizbang_core::perspective::rebuild`): `wh_perspective_versions` (the
//! `#[perspective(version = N)]` each perspective's live models were built
//! with), `wh_rebuilds` (per perspective: the version rebuilt to, phase,
//! events done and total, rate, time left, error) and
//! `wh_operator_requests` (the `sync` and `rebuild` requests of the
//! `whizbang` tool, claimed by a running service with a lease and `FOR
//! UPDATE SKIP LOCKED`, woken by a NOTIFY on [`REQUESTS_CHANNEL`]). A
//! rebuild's shadow models live in the perspective tables under the name
//! `<perspective>~rebuild`; the swap that replaces the live models is one
//! transaction holding `wh_perspective_cursors` in `share row exclusive`
//! mode (applies wait, readers do not). A runner process checks the declared
//! versions at start ([`PostgresOptions::on_version_bump`]).
//!
//! # Several services in one database
//!
//! [`PostgresOptions::schema`] puts a service's tables in a schema of its
//! own: `search_path` is set on every connection, [`Postgres::migrate`]
//! creates the schema and migrates in it, and the NOTIFY channels are named
//! `<channel>.<schema>` (the plain names stay for `public`).
//! [`PgTransport`] delivers one service's outbox into another's inbox, and
//! [`Postgres::service`] lets a caller wait until the other service's
//! perspective applied an event it published ([`PgService`]).
//!
//! # Errors
//!
//! Every fallible function returns [`Error`]. Its `Display` text says what went
//! wrong and what to do; the underlying [`sqlx`] error is available through
//! [`std::error::Error::source`], so print the whole chain when reporting.

mod wire;

mod backend;
mod events;
mod inline;
mod keyed;
mod listen;
mod outbox;
mod perspectives;
mod queue;
mod rebuild;
mod requests;
mod runner;
mod schema;
mod service;
mod sync;
mod sync_log;
mod transport;

pub use backend::{Postgres, PostgresOptions};
pub use events::PgEventStore;
pub use outbox::{OutboxWakeups, PgOutbox, OUTBOX_CHANNEL};
pub use perspectives::PgPerspectiveStore;
pub use queue::{PgMessageQueue, QueueWakeups, QUEUE_CHANNEL};
pub use requests::REQUESTS_CHANNEL;
pub use schema::{SchemaName, MAX_SCHEMA_NAME};
pub use service::PgService;
pub use sync::PgSyncBackend;
pub use sync_log::{PgSyncLog, DEFAULT_SYNC_LOG_KEEP};
pub use transport::PgTransport;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection as _;

pub use sqlx::PgPool;

/// Internals the crate's own tests drive directly. Not a public API: it may
/// change in any release.
#[doc(hidden)]
pub mod __private {
    use sqlx::PgPool;
    use uuid::Uuid;
    use whizbang_core::StreamId;

    /// How many partitions the event feed has (numbered from 0).
    pub const PARTITIONS: i16 = crate::wire::PARTITIONS;

    /// The partition a stream's events are stored in.
    #[must_use]
    pub fn partition_of(stream: StreamId) -> i16 {
        crate::wire::partition_of(stream)
    }

    /// The runner's fenced checkpoint statement: moves `perspective`'s
    /// checkpoint on `partition` to (`tx_id`, `global_position`) only while
    /// `owner` holds the lease at `fence`. Returns whether it moved.
    ///
    /// # Errors
    /// The database's.
    pub async fn advance_checkpoint(
        pool: &PgPool,
        perspective: &str,
        partition: i16,
        owner: Uuid,
        fence: i64,
        tx_id: &str,
        global_position: i64,
    ) -> Result<bool, sqlx::Error> {
        let to = crate::runner::feed::Position {
            tx_id: tx_id.to_owned(),
            global_position,
        };
        crate::runner::feed::advance(pool, perspective, partition, owner, fence, &to).await
    }

    /// Runs `work` as the runner runs the claim of a held-back
    /// perspective's run: the batch commit of `perspective` that `work`
    /// makes moves each `(partition, fence, tx_id, global_position)`
    /// checkpoint in its transaction, fenced on `owner`'s lease. Returns
    /// `work`'s output and the partitions whose checkpoint moved with a
    /// commit (`None`: no commit took the move).
    pub async fn with_checkpoint_ride<F: std::future::Future>(
        perspective: &'static str,
        owner: Uuid,
        moves: Vec<(i16, i64, String, i64)>,
        work: F,
    ) -> (F::Output, Option<Vec<i16>>) {
        let moves = moves
            .into_iter()
            .map(|(partition, fence, tx_id, global_position)| {
                let to = crate::runner::feed::Position {
                    tx_id,
                    global_position,
                };
                (partition, fence, to)
            })
            .collect();
        let ride = crate::runner::feed::Ride::new(perspective, owner, moves);
        let out = crate::runner::feed::Ride::scope(std::sync::Arc::clone(&ride), work).await;
        (out, ride.moved())
    }
}

/// The whizbang schema migrations, embedded from the top-level `migrations/`
/// folder.
///
/// [`migrate`] runs these; the static is public so that tests can hand it to
/// `#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]`.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Errors returned at the `whizbang-postgres` crate boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening a connection to PostgreSQL failed.
    #[error(
        "could not connect to PostgreSQL at {url}: check that the server is running \
         and reachable and that the URL (e.g. DATABASE_URL) has the right host, port, \
         database, user and password"
    )]
    Connect {
        /// The connection URL with any password replaced by `***`.
        url: String,
        /// The underlying connection error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed.
    #[error(
        "applying the whizbang schema migrations failed: if a migration that was already \
         applied has changed, or the database was migrated by a newer whizbang, use a \
         database that matches this version"
    )]
    Migrate(#[from] MigrateError),
    /// The schema asked for ([`PostgresOptions::schema`]) is not a valid name.
    #[error("invalid PostgreSQL schema for this service: {0}")]
    InvalidSchema(whizbang_core::Error),
    /// A database operation failed.
    #[error("PostgreSQL operation failed: see the source error for the server's message")]
    Database(#[from] sqlx::Error),
}

/// Connects to PostgreSQL and returns a connection pool with default options,
/// for using the stores on their own. [`Postgres::connect`] is the whole
/// backend (pool, LISTEN connection, runner) and what most users want.
///
/// One connection is opened first on its own, so an unreachable server, bad
/// credentials or a missing database fail at once with the server's or the
/// socket's own error. (A pool alone would keep retrying a refused connection
/// until its acquire timeout and then report only "timed out".) Retry at the
/// call site if the server may still be starting.
///
/// # Errors
///
/// [`Error::Connect`] if the URL is invalid or no connection can be opened;
/// the URL in the error has its password redacted.
pub async fn connect(url: &str) -> Result<PgPool, Error> {
    let connect_error = |source| Error::Connect {
        url: redact_password(url),
        source,
    };
    let options: PgConnectOptions = url.parse().map_err(connect_error)?;
    PgConnection::connect_with(&options)
        .await
        .map_err(connect_error)?
        .close()
        .await
        .map_err(connect_error)?;
    PgPool::connect_with(options).await.map_err(connect_error)
}

/// Applies the whizbang schema migrations that the database does not have yet.
///
/// Idempotent: already applied migrations are skipped, so it is safe to call
/// on every start-up. Concurrent callers are serialised by sqlx with an
/// advisory lock.
///
/// # Errors
///
/// [`Error::Migrate`] if a migration fails to apply, or if an applied
/// migration no longer matches the embedded one.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Replaces the password in a connection URL (in the user info or in a
/// `password=` query parameter) with `***`.
fn redact_password(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);

    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }

    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((query, fragment)) => (query, Some(fragment)),
                None => (query, None),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
            if let Some(fragment) = fragment {
                out.push('#');
                out.push_str(fragment);
            }
        }
        None => out.push_str(tail),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_password;

    #[test]
    fn redacts_password_in_user_info() {
        assert_eq!(
            redact_password("postgres://alice:s3cr%40t@db.example:5432/app"),
            "postgres://alice:***@db.example:5432/app"
        );
    }

    #[test]
    fn redacts_password_query_parameter() {
        assert_eq!(
            redact_password("postgres://db/app?user=alice&password=s3cret&sslmode=require"),
            "postgres://db/app?user=alice&password=***&sslmode=require"
        );
    }

    #[test]
    fn leaves_urls_without_password_alone() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://127.0.0.1/postgres?sslmode=disable",
            "postgresql:///app",
        ] {
            assert_eq!(redact_password(url), url);
        }
    }

    #[test]
    fn password_containing_at_sign_is_fully_hidden() {
        let redacted = redact_password("postgres://u:p@ss@host/db");
        assert_eq!(redacted, "postgres://u:***@host/db");
    }
}

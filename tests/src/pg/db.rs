//! A fresh, migrated database per test.
//!
//! [`FreshDb::create`] makes `wh_test_<pid>_<random>` on the server named by
//! `DATABASE_URL` (default [`DEFAULT_URL`]), applies
//! [`whizbang_postgres::MIGRATOR`] and hands back its URL and a pool;
//! [`FreshDb::on`] does the same on another server (a private
//! [`PgServer`](super::server::PgServer)). Dropping it drops the database
//! (best effort, `WITH (FORCE)`), and the first database a test process makes
//! drops those that earlier, killed test processes left behind.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, PgConnection, PgPool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The shared test server, when `DATABASE_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The prefix of every database made here.
pub const PREFIX: &str = "wh_test_";

/// How long connecting, creating or migrating may take.
const BOUND: Duration = Duration::from_secs(30);

/// The server URL tests use: `DATABASE_URL`, or [`DEFAULT_URL`].
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A database made for one test, dropped when this is dropped.
#[derive(Debug)]
pub struct FreshDb {
    /// The database's name (`wh_test_<pid>_<random>`).
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
    /// A pool on it (8 connections).
    pub pool: PgPool,
    /// The server, to drop the database from.
    admin: PgConnectOptions,
}

/// The connect options of `url`.
///
/// # Panics
/// If `url` is not a PostgreSQL URL.
fn options(url: &str) -> PgConnectOptions {
    url.parse()
        .unwrap_or_else(|e| panic!("{url:?} is not a PostgreSQL URL ({e}); fix DATABASE_URL"))
}

/// An admin connection to `url`, with a message that says how to fix a refusal.
///
/// # Panics
/// If the server cannot be reached within the bound.
async fn admin(url: &str, admin: &PgConnectOptions) -> PgConnection {
    let connect = PgConnection::connect_with(admin);
    match tokio::time::timeout(BOUND, connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "cannot reach the PostgreSQL test server at {url}: {e}. Start PostgreSQL \
             (15, trust auth for user postgres) on 127.0.0.1:5432, or set DATABASE_URL to a \
             server this test may create databases on"
        ),
        Err(_) => panic!(
            "connecting to the PostgreSQL test server at {url} took longer than {BOUND:?}: \
             check that it accepts connections (DATABASE_URL)"
        ),
    }
}

impl FreshDb {
    /// A fresh, migrated database on the server of `DATABASE_URL`
    /// (default [`DEFAULT_URL`]).
    ///
    /// # Panics
    /// If the server is unreachable (the message says how to fix it), or the
    /// database cannot be created or migrated.
    pub async fn create() -> FreshDb {
        FreshDb::on(&server_url()).await
    }

    /// A fresh, migrated database on the server `url` points at (its
    /// database part is only used to connect as admin).
    ///
    /// # Panics
    /// As [`create`](Self::create).
    pub async fn on(url: &str) -> FreshDb {
        static CLEANED: AtomicBool = AtomicBool::new(false);
        let server = options(url);
        let mut conn = admin(url, &server).await;
        if !CLEANED.swap(true, Ordering::SeqCst) {
            drop_leftovers(&mut conn).await;
        }
        let name = format!(
            "{PREFIX}{}_{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        );
        // The name is ours: a prefix, digits and hex.
        let create = format!("create database \"{name}\"");
        tokio::time::timeout(BOUND, conn.execute(create.as_str()))
            .await
            .unwrap_or_else(|_| panic!("create database {name} took longer than {BOUND:?}"))
            .unwrap_or_else(|e| panic!("create database {name} on {url}: {e}"));
        conn.close().await.ok();

        let db = server.clone().database(&name);
        let pool = tokio::time::timeout(
            BOUND,
            PgPoolOptions::new().max_connections(8).connect_with(db),
        )
        .await
        .unwrap_or_else(|_| panic!("connecting to {name} took longer than {BOUND:?}"))
        .unwrap_or_else(|e| panic!("connect to the new database {name}: {e}"));
        let fresh = FreshDb {
            url: database_url(url, &name),
            name,
            pool,
            admin: server,
        };
        tokio::time::timeout(BOUND, whizbang_postgres::MIGRATOR.run(&fresh.pool))
            .await
            .unwrap_or_else(|_| panic!("migrating {} took longer than {BOUND:?}", fresh.name))
            .unwrap_or_else(|e| panic!("migrate {}: {e}", fresh.name));
        fresh
    }

    /// Closes the pool and drops the database now, reporting failure.
    ///
    /// # Errors
    /// The server's error when the drop fails.
    pub async fn drop_now(self) -> Result<(), sqlx::Error> {
        self.pool.close().await;
        drop_database(&self.admin, &self.name).await
    }
}

impl Drop for FreshDb {
    /// Drops the database (best effort), from a thread of its own so that it
    /// also works inside a runtime that is shutting down.
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = tokio::time::timeout(BOUND, drop_database(&admin, &name)).await;
            });
        });
        let _ = dropper.join();
    }
}

/// `DROP DATABASE IF EXISTS name WITH (FORCE)`.
async fn drop_database(admin: &PgConnectOptions, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect_with(admin).await?;
    let sql = format!(
        "drop database if exists \"{}\" with (force)",
        name.replace('"', "\"\"")
    );
    conn.execute(sql.as_str()).await?;
    conn.close().await
}

/// Drops the databases of earlier test processes that are no longer running
/// (their name carries the process id).
async fn drop_leftovers(conn: &mut PgConnection) {
    let names: Vec<String> =
        match sqlx::query_scalar("select datname::text from pg_database where datname like $1")
            .bind(format!("{PREFIX}%"))
            .fetch_all(&mut *conn)
            .await
        {
            Ok(names) => names,
            Err(_) => return,
        };
    for name in names {
        let pid = name[PREFIX.len()..].split('_').next().unwrap_or_default();
        if pid.is_empty() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let sql = format!("drop database if exists \"{name}\" with (force)");
        let _ = conn.execute(sql.as_str()).await;
    }
}

/// `url` with its database replaced by `name` (query parameters kept).
///
/// ```
/// use whizbang_tests::pg::db::database_url;
/// assert_eq!(
///     database_url("postgres://postgres@127.0.0.1:5432/postgres", "wh_test_1"),
///     "postgres://postgres@127.0.0.1:5432/wh_test_1"
/// );
/// assert_eq!(
///     database_url("postgres://u@h/db?sslmode=disable", "x"),
///     "postgres://u@h/x?sslmode=disable"
/// );
/// assert_eq!(database_url("postgres://u@h:5433", "x"), "postgres://u@h:5433/x");
/// ```
pub fn database_url(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

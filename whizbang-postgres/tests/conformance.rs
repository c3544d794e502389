//! The core's backend conformance suite on PostgreSQL: every contract of
//! `whizbang_core::backend` against `PgEventStore`, `PgPerspectiveStore` and
//! `PgSyncBackend`, each contract in a fresh, migrated database.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, PgConnection, PgPool};
use std::sync::atomic::{AtomicBool, Ordering};
use whizbang_core::backend::conformance::Stores;
use whizbang_postgres::{PgEventStore, PgPerspectiveStore, PgSyncBackend};

const PREFIX: &str = "whizbang_conformance_";

fn server() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    url.parse().expect("DATABASE_URL is a PostgreSQL URL")
}

/// Drops the databases earlier runs left behind: their name carries the
/// creating process's id, and only those of processes no longer running go.
async fn drop_leftovers(admin: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("select datname::text from pg_database where datname like $1")
            .bind(format!("{PREFIX}%"))
            .fetch_all(&mut *admin)
            .await
            .expect("list databases");
    for name in names {
        let pid = name[PREFIX.len()..].split('_').next().unwrap_or_default();
        if pid == std::process::id().to_string()
            || std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            continue;
        }
        // The name comes from pg_database and matched our prefix.
        let _ = admin
            .execute(format!("drop database if exists \"{name}\" with (force)").as_str())
            .await;
    }
}

/// A fresh database with the whizbang schema, and a pool on it.
async fn fresh_database() -> PgPool {
    static CLEANED: AtomicBool = AtomicBool::new(false);
    let server = server();
    let mut admin = PgConnection::connect_with(&server)
        .await
        .expect("the test server is reachable (DATABASE_URL)");
    if !CLEANED.swap(true, Ordering::SeqCst) {
        drop_leftovers(&mut admin).await;
    }
    let name = format!(
        "{PREFIX}{}_{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    admin
        .execute(format!("create database \"{name}\"").as_str())
        .await
        .expect("create a test database");
    admin.close().await.ok();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(server.database(&name))
        .await
        .expect("connect to the test database");
    whizbang_postgres::migrate(&pool).await.expect("migrate");
    pool
}

fn stores(pool: PgPool) -> Stores {
    Stores::new(
        PgEventStore::new(pool.clone()),
        PgPerspectiveStore::new(pool.clone()),
    )
    .with_sync_backend(PgSyncBackend::new(pool))
}

whizbang_core::conformance_tests!(|| async { stores(fresh_database().await) });

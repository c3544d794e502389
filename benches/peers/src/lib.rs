//! Benchmarks whizbang against its peers. The library crates never depend on
//! this crate; it exists so the comparison builds with the workspace and
//! stays honest as both sides change.
//!
//! `cargo bench -p whizbang-peer-bench --bench cqrs_es` (needs PostgreSQL:
//! `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`).

use std::time::{Duration, Instant};

/// The server the benchmarks use.
#[must_use]
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Creates a fresh database named `whizbang_bench_<suffix>` on the server
/// and returns its URL. Panics with a sentence when the server is not there:
/// a benchmark has nothing to measure without it.
pub async fn fresh_database(suffix: &str) -> String {
    use sqlx::Connection as _;
    let url = database_url();
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!("cannot reach PostgreSQL at {url} ({e}): start it, or set DATABASE_URL")
    });
    let name = format!("whizbang_bench_{suffix}_{}", std::process::id());
    sqlx::query(&format!("drop database if exists {name}"))
        .execute(&mut admin)
        .await
        .expect("drop the old bench database");
    sqlx::query(&format!("create database {name}"))
        .execute(&mut admin)
        .await
        .expect("create the bench database");
    match url.rfind('/') {
        Some(i) if url[..i].contains("://") && i > url.find("://").unwrap_or(0) + 2 => {
            let (base, rest) = url.split_at(i);
            let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
            format!("{base}/{name}{query}")
        }
        _ => format!("{url}/{name}"),
    }
}

/// Drops the database [`fresh_database`] made for `suffix` in this process
/// (its pools must be closed first). Best effort: a leftover only costs disk.
pub async fn drop_database(suffix: &str) {
    use sqlx::Connection as _;
    let name = format!("whizbang_bench_{suffix}_{}", std::process::id());
    if let Ok(mut admin) = sqlx::PgConnection::connect(&database_url()).await {
        let _ = sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(&mut admin)
            .await;
    }
}

/// Runs `clients` concurrent loops of `per_client` calls of `op` and returns
/// the calls per second.
pub async fn throughput<F, Fut>(clients: usize, per_client: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_client {
                op(c * per_client + i).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("a bench client panicked");
    }
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    (clients * per_client) as f64 / elapsed.as_secs_f64()
}

//! The PostgreSQL process-test helpers themselves: a fresh database exists, is
//! migrated and goes away; a private server starts, restarts and keeps its
//! data; a killed child is reaped and a stopped one continues; the ledger
//! and the fold check find a planted duplicate, a planted loss, a wrong model
//! and a version gap.

use serde::Serialize;
use sqlx::{Connection as _, Executor as _, PgConnection, PgPool};
use std::os::unix::process::ExitStatusExt as _;
use std::sync::Arc;
use std::time::Duration;
use whizbang_tests::pg::cluster::Cluster;
use whizbang_tests::pg::db::{self, FreshDb};
use whizbang_tests::pg::ledger::{self, FoldEvent};
use whizbang_tests::pg::server::PgServer;

/// No step of these tests may take longer than this.
const BOUND: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

async fn database_exists(name: &str) -> bool {
    let mut admin = PgConnection::connect(&db::server_url())
        .await
        .expect("the test server is reachable (DATABASE_URL)");
    let found: Option<i32> = sqlx::query_scalar("select 1 from pg_database where datname = $1")
        .bind(name)
        .fetch_optional(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    found.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_exists_is_migrated_and_is_dropped_at_the_end() {
    let fresh = bounded(FreshDb::create()).await;
    assert!(fresh.name.starts_with(db::PREFIX), "{}", fresh.name);
    let current: String = sqlx::query_scalar("select current_database()::text")
        .fetch_one(&fresh.pool)
        .await
        .unwrap();
    assert_eq!(current, fresh.name);
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(&fresh.pool)
        .await
        .unwrap();
    let embedded = whizbang_postgres::MIGRATOR.iter().count();
    assert_eq!(applied, embedded as i64, "every embedded migration applied");
    let events: i64 = sqlx::query_scalar("select count(*) from wh_events")
        .fetch_one(&fresh.pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "the event store is there and empty");

    // Its URL reaches the same database.
    let mut by_url = PgConnection::connect(&fresh.url).await.unwrap();
    let via_url: String = sqlx::query_scalar("select current_database()::text")
        .fetch_one(&mut by_url)
        .await
        .unwrap();
    assert_eq!(via_url, fresh.name);
    by_url.close().await.ok();

    // Dropped explicitly, or by Drop (even with a connection still open).
    let name = fresh.name.clone();
    bounded(fresh.drop_now()).await.unwrap();
    assert!(!bounded(database_exists(&name)).await, "{name} dropped");

    let fresh = bounded(FreshDb::create()).await;
    let name = fresh.name.clone();
    let _open = fresh.pool.acquire().await.unwrap();
    drop(fresh);
    assert!(!bounded(database_exists(&name)).await, "{name} dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_with_a_message_that_says_how_to_fix_it() {
    // Port 1 on localhost: nothing listens there.
    let failed = tokio::spawn(FreshDb::on("postgres://postgres@127.0.0.1:1/postgres"))
        .await
        .expect_err("no database without a server");
    let payload = failed.into_panic();
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    assert!(message.contains("cannot reach"), "{message}");
    assert!(message.contains("DATABASE_URL"), "{message}");
}

/// Runs a blocking server command off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    bounded(tokio::task::spawn_blocking(f)).await.unwrap()
}

async fn count_rows(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from kept")
        .fetch_one(pool)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_server_starts_restarts_and_keeps_its_data() {
    let server = Arc::new(
        blocking(PgServer::start)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_ne!(server.port(), 5432, "never the shared server");
    assert!(server.is_running());
    let dir = server.dir().to_owned();

    let pool = bounded(whizbang_postgres::connect(&server.url()))
        .await
        .unwrap();
    pool.execute("create table kept (n int); insert into kept select generate_series(1, 10)")
        .await
        .unwrap();

    let s = Arc::clone(&server);
    blocking(move || s.restart()).await.unwrap();
    assert!(server.is_running());
    // The same pool works again: its dead connections are replaced.
    let after_restart = bounded(async {
        loop {
            match count_rows(&pool).await {
                Ok(n) => break n,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(after_restart, 10, "committed rows survive a restart");

    let s = Arc::clone(&server);
    blocking(move || s.stop()).await.unwrap();
    assert!(!server.is_running());
    // (A pool would keep retrying a refused connection until its acquire
    // timeout; a single connection is refused at once.)
    assert!(
        bounded(PgConnection::connect(&server.url())).await.is_err(),
        "a stopped server accepts no connection"
    );
    let s = Arc::clone(&server);
    blocking(move || s.start_again()).await.unwrap();
    let after_start = bounded(async {
        loop {
            match count_rows(&pool).await {
                Ok(n) => break n,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(after_start, 10, "committed rows survive a stop and a start");
    pool.close().await;

    // A fresh database works on it too.
    let fresh = bounded(FreshDb::on(&server.url())).await;
    assert!(fresh.url.contains(&format!(":{}/", server.port())));
    drop(fresh);

    let server = Arc::into_inner(server).expect("the only handle");
    blocking(move || drop(server)).await;
    assert!(!dir.exists(), "the server's directory is removed");
}

#[test]
fn a_killed_child_is_reaped_and_a_stopped_one_continues() {
    let mut cluster = Cluster::spawn(3, |_| {
        let mut cmd = Cluster::command(env!("CARGO_BIN_EXE_pg_child"));
        cmd.arg("sleep");
        cmd
    });
    for i in 0..cluster.len() {
        assert_eq!(cluster[i].next_line(BOUND).unwrap(), "ready");
    }
    let pids: Vec<u32> = (0..3).map(|i| cluster[i].id()).collect();

    cluster[0].kill();
    let status = cluster[0]
        .wait_timeout(BOUND)
        .expect("the killed child exits");
    assert_eq!(status.signal(), Some(9), "{status}");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", pids[0])).exists(),
        "reaped: no zombie left"
    );

    cluster[1].stop();
    assert_eq!(whizbang_tests::process::state(pids[1]), Some('T'));
    cluster[1].cont();
    assert!(!cluster[1].has_exited());

    // Children die with their cluster.
    drop(cluster);
    for pid in &pids[1..] {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} killed and reaped on drop"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_finds_a_planted_duplicate_and_a_planted_loss() {
    let fresh = bounded(FreshDb::create()).await;
    ledger::install(&fresh.pool).await.unwrap();
    for key in ["a", "b", "b", "d"] {
        let mut tx = fresh.pool.begin().await.unwrap();
        ledger::record(&mut tx, key).await.unwrap();
        tx.commit().await.unwrap();
    }
    // Work rolled back is not counted: its ledger row rolls back with it.
    let mut tx = fresh.pool.begin().await.unwrap();
    ledger::record(&mut tx, "c").await.unwrap();
    tx.rollback().await.unwrap();

    let expected = ["a", "b", "c"].map(String::from);
    let tally = ledger::check(&fresh.pool, expected).await.unwrap();
    assert_eq!(tally.counts(), (3, 3, 1, 1));
    assert_eq!(tally.lost, ["c"]);
    assert_eq!(tally.duplicated, [("b".to_owned(), 2)]);
    assert_eq!(tally.unexpected, ["d"]);
    let message = tally.to_string();
    assert!(message.contains("1 lost"), "{message}");
    assert!(message.contains("b x2"), "{message}");
    let failed = std::panic::catch_unwind(|| tally.assert_exact());
    assert!(failed.is_err(), "an inexact tally fails its assertion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_writing_the_ledger_are_counted_exactly() {
    let fresh = bounded(FreshDb::create()).await;
    ledger::install(&fresh.pool).await.unwrap();
    let url = fresh.url.clone();
    let statuses = tokio::task::spawn_blocking(move || {
        let mut cluster = Cluster::spawn(2, |i| {
            let mut cmd = Cluster::command(env!("CARGO_BIN_EXE_pg_child"));
            let (from, to) = (i * 50, i * 50 + 50);
            cmd.args(["ledger", &url, "work", &from.to_string(), &to.to_string()]);
            cmd
        });
        for i in 0..2 {
            cluster[i]
                .wait_line(|l| l == "finished", BOUND)
                .unwrap_or_else(|e| panic!("child {i}: {e}"));
        }
        cluster.wait_all(BOUND)
    })
    .await
    .unwrap()
    .unwrap_or_else(|running| panic!("children {running:?} never exited"));
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
    let tally = ledger::check(&fresh.pool, (0..100).map(|i| format!("work:{i}")))
        .await
        .unwrap();
    tally.assert_exact();
    assert_eq!(tally.counts(), (100, 100, 0, 0));
}

/// The fold the fold checks use: a count and a sum of `amount`.
#[derive(Default, Serialize)]
struct Totals {
    count: u64,
    sum: u64,
}

fn fold_totals(m: &mut Totals, e: &FoldEvent) {
    if e.event_type == "infra.added" {
        m.count += 1;
        m.sum += e.data["amount"].as_u64().unwrap_or(0);
    }
}

/// Plants an event row directly (the append path is not under test here).
async fn plant_event(pool: &PgPool, stream: uuid::Uuid, version: i64, amount: u64) {
    sqlx::query(
        "insert into wh_events (partition, event_id, stream_id, stream_version, event_type, data)
         values (0, $1, $2, $3, 'infra.added', ($4::text)::jsonb)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(stream)
    .bind(version)
    .bind(serde_json::json!({ "amount": amount }).to_string())
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into wh_streams (stream_id, version, partition) values ($1, $2, 0)
         on conflict (stream_id) do update set version = excluded.version",
    )
    .bind(stream)
    .bind(version)
    .execute(pool)
    .await
    .unwrap();
}

async fn plant_model(pool: &PgPool, stream: uuid::Uuid, version: i64, model: serde_json::Value) {
    sqlx::query(
        "insert into wh_perspective_rows (perspective, model_key, version, data)
         values ('infra.totals', $1, $2, ($3::text)::jsonb)
         on conflict (perspective, model_key)
         do update set version = excluded.version, data = excluded.data",
    )
    .bind(stream)
    .bind(version)
    .bind(model.to_string())
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fold_check_finds_a_wrong_model_a_stale_one_and_a_version_gap() {
    let fresh = bounded(FreshDb::create()).await;
    let pool = &fresh.pool;
    let (good, wrong, stale, missing) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    for stream in [good, wrong, stale, missing] {
        for (version, amount) in [(1, 5), (2, 7)] {
            plant_event(pool, stream, version, amount).await;
        }
    }
    plant_model(pool, good, 2, serde_json::json!({ "count": 2, "sum": 12 })).await;
    plant_model(pool, wrong, 2, serde_json::json!({ "count": 2, "sum": 13 })).await;
    plant_model(pool, stale, 1, serde_json::json!({ "count": 2, "sum": 12 })).await;

    let check = ledger::fresh_fold(pool, "infra.totals", good, fold_totals)
        .await
        .unwrap();
    assert!(check.matches(), "{check}");
    assert_eq!(check.events, 2);

    let bad = ledger::check_all_folds(pool, "infra.totals", fold_totals)
        .await
        .unwrap();
    let mut bad_streams: Vec<uuid::Uuid> = bad.iter().map(|c| c.stream).collect();
    bad_streams.sort();
    let mut want = vec![wrong, stale, missing];
    want.sort();
    assert_eq!(bad_streams, want, "{bad:#?}");
    let shown = bad.iter().find(|c| c.stream == wrong).unwrap().to_string();
    assert!(shown.contains("\"sum\":13"), "{shown}");

    assert!(ledger::version_gaps(pool).await.unwrap().is_empty());
    plant_event(pool, good, 4, 1).await; // version 3 is missing
    let gaps = ledger::version_gaps(pool).await.unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(gaps[0].contains(&good.to_string()), "{gaps:?}");
}

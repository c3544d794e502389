//! The `whizbang` operator tool, run as a process on a fresh database per
//! test prepared through the library: a runtime whose perspective fails on a
//! poison event (status and failed list the cursor; skip and retry recover
//! it, the partitioned runner applies and waiters wake), lag counted on
//! streams without a cursor too, a rebuild shown as the rebuild of its
//! perspective, a keyed perspective's lag counted from its one cursor,
//! dead letters listed and replayed, and
//! clear errors with a non-zero exit code.

mod support;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use std::process::{Command as Process, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{backend, bounded, eventually, fast_options, shut_down};
use uuid::Uuid;
use whizbang_core::queue::{MessageQueue as _, QueueOptions, QueuedMessage};
use whizbang_core::{
    perspective, receptor, Command, Context, Event, InstanceId, PerspectiveSyncOptions, Receptor,
    Registry, Result, Runtime, StrategyRun, SyncFilter, SyncOutcome,
};
use whizbang_postgres::__private::{advance_checkpoint, partition_of};
use whizbang_postgres::{PgMessageQueue, Postgres};

// ---- the service under repair -------------------------------------------------------------

#[derive(Command, Serialize, Deserialize)]
#[command(output = ())]
struct Deposit {
    account: Uuid,
    cents: i64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_cli.deposited")]
struct Deposited {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

#[derive(Default)]
struct Teller;

#[receptor]
impl Receptor<Deposit> for Teller {
    async fn handle(&self, cmd: Deposit, cx: &mut Context) -> Result<()> {
        cx.emit(Deposited {
            account: cmd.account,
            cents: cmd.cents,
        })?;
        Ok(())
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Balance {
    cents: i64,
    deposits: u64,
}

/// While set, an apply of 13 cents fails (the poison event).
static UNLUCKY: AtomicBool = AtomicBool::new(true);

struct Picky;
#[perspective(model = Balance, name = "pg_cli.picky")]
impl Picky {
    fn deposited(b: &mut Balance, e: &Deposited) -> std::result::Result<(), String> {
        if e.cents == 13 && UNLUCKY.load(Ordering::SeqCst) {
            return Err("13 cents is unlucky".to_owned());
        }
        b.cents += e.cents;
        b.deposits += 1;
        Ok(())
    }
}

/// A runtime on `pg` whose in-process runner is paused: only the
/// partitioned runner (the one in the database) applies the perspective.
fn runtime(pg: &Postgres) -> Runtime {
    let registry = Registry::builder()
        .receptors_of::<Teller>()
        .perspective::<Picky>()
        .build()
        .unwrap();
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .unwrap();
    rt.runner().pause();
    rt
}

async fn deposit(rt: &Runtime, account: Uuid, cents: i64) {
    let scope = rt.scope();
    bounded(scope.send(Deposit { account, cents }))
        .await
        .unwrap();
    bounded(scope.complete()).await.unwrap();
}

// ---- running the tool ---------------------------------------------------------------------

/// The URL of the test database: DATABASE_URL with its database name.
fn url_of(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let (prefix, rest) = base.rsplit_once('/').expect("DATABASE_URL has a database");
    match rest.split_once('?') {
        Some((_, query)) => format!("{prefix}/{database}?{query}"),
        None => format!("{prefix}/{database}"),
    }
}

/// Runs `whizbang` with `args` against `url` (in the environment), within a
/// bound.
async fn whizbang(url: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::from(Process::new(env!("CARGO_BIN_EXE_whizbang")));
    cmd.args(args).env("DATABASE_URL", url).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("whizbang finished within 30 s")
        .expect("whizbang ran")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `whizbang` and expects success; returns its standard output.
async fn ok(url: &str, args: &[&str]) -> String {
    let out = whizbang(url, args).await;
    assert!(
        out.status.success(),
        "whizbang {args:?} failed ({}): {}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs `whizbang --json` and parses its output.
async fn ok_json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(url, &all).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Runs `whizbang` and expects a failure with exit code 1 and a message on
/// standard error containing `needle`.
async fn refused(url: &str, args: &[&str], needle: &str) {
    let out = whizbang(url, args).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "whizbang {args:?}: {err}");
    assert!(err.contains(needle), "whizbang {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Whether the runner's checkpoint for the perspective is past the first
/// event of `stream` (the failure was passed over, as the runner does).
async fn checkpoint_past(pool: &PgPool, stream: Uuid) -> bool {
    sqlx::query_scalar(
        "select exists (
             select 1 from wh_feed_checkpoints c join wh_events e
               on e.stream_id = $1 and e.stream_version = 1 and c.partition = e.partition
              where c.perspective = 'pg_cli.picky'
                and (c.tx_id, c.global_position) >= (e.tx_id, e.global_position))",
    )
    .bind(stream)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_stream(rt: &Runtime, stream: Uuid) -> SyncOutcome {
    bounded(
        rt.sync_awaiter()
            .wait::<Picky>(SyncFilter::for_stream(stream).with_timeout(Duration::from_secs(8))),
    )
    .await
    .unwrap()
    .outcome
}

// ---- tests --------------------------------------------------------------------------------

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn failed_cursors_are_listed_then_skipped_and_retried_and_the_runner_applies(pool: PgPool) {
    let url = url_of(&pool);
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime(&pg);
    let (fine, retried, skipped) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    deposit(&rt, retried, 13).await;
    deposit(&rt, skipped, 13).await;
    deposit(&rt, skipped, 5).await;
    deposit(&rt, fine, 1).await;
    eventually("both poison events failed their cursors", || async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from wh_perspective_cursors where failed_version is not null",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (n == 2).then_some(())
    })
    .await;
    eventually("the fine stream applied", || async {
        let applied: Option<i64> =
            sqlx::query_scalar("select version from wh_perspective_cursors where model_key = $1")
                .bind(fine)
                .fetch_optional(&pool)
                .await
                .unwrap();
        (applied == Some(1)).then_some(())
    })
    .await;
    eventually("the runner's checkpoints passed the failures", || async {
        (checkpoint_past(&pool, retried).await && checkpoint_past(&pool, skipped).await)
            .then_some(())
    })
    .await;

    // status: the perspective, its failed cursors, an instance with leases.
    let status = ok_json(&url, &["status"]).await;
    let perspectives = status["perspectives"].as_array().unwrap();
    let picky = perspectives
        .iter()
        .find(|p| p["name"] == "pg_cli.picky")
        .unwrap_or_else(|| panic!("{status:#}"));
    let failed = picky["failed"].as_array().unwrap();
    let mut streams: Vec<String> = failed
        .iter()
        .map(|f| f["stream"].as_str().unwrap().to_owned())
        .collect();
    streams.sort();
    let mut expected = vec![retried.to_string(), skipped.to_string()];
    expected.sort();
    assert_eq!(streams, expected, "{status:#}");
    for f in failed {
        assert_eq!(f["failed_version"], 1);
        assert!(f["message"]
            .as_str()
            .unwrap()
            .contains("13 cents is unlucky"));
    }
    assert_eq!(picky["streams"], 3, "{status:#}");
    // The skipped stream is two events behind its head, the retried one one.
    assert_eq!(picky["lag_events"], 3, "{status:#}");
    // The strategy the runner declared at start; the oldest unapplied
    // event's age.
    assert_eq!(picky["strategy"], "realtime", "{status:#}");
    assert!(picky["lag_seconds"].as_f64().unwrap() >= 0.0, "{status:#}");
    let instances = status["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{status:#}");
    assert_eq!(
        instances[0]["instance_id"],
        pg.instance_id().to_string(),
        "{status:#}"
    );
    let leased: usize = instances[0]["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["partitions"].as_array().unwrap().len())
        .sum();
    assert_eq!(leased, 16, "one instance holds every partition: {status:#}");
    assert_eq!(status["queue"]["dead_letters"], 0);
    // The table names them too.
    let table = ok(&url, &["status"]).await;
    assert!(table.contains("pg_cli.picky") && table.contains(&retried.to_string()));
    assert!(
        table.contains("STRATEGY") && table.contains("realtime"),
        "{table}"
    );
    let listed = ok(&url, &["failed"]).await;
    assert!(listed.contains(&skipped.to_string()) && listed.contains("13 cents is unlucky"));
    let listed = ok_json(&url, &["failed"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // Skip the poison event (still failing): the runner moves past it and
    // applies the rest; a waiter ends Synced.
    ok(
        &url,
        &[
            "skip",
            "pg_cli.picky",
            &skipped.to_string(),
            "--reason",
            "known bad deposit",
        ],
    )
    .await;
    // Synced when the wait began before the runner applied the stream,
    // NoPendingEvents when after (this runner is quick): either way nothing
    // of it is left unapplied, and the model below shows what was.
    let outcome = wait_stream(&rt, skipped).await;
    assert!(
        matches!(outcome, SyncOutcome::Synced | SyncOutcome::NoPendingEvents),
        "{outcome:?}"
    );
    let model = eventually("the skipped stream applied its next event", || {
        let lens = rt.lens::<Picky>();
        async move {
            let (model, _) = lens.get_versioned(skipped.into()).await.unwrap()?;
            (model.deposits >= 1).then_some(model)
        }
    })
    .await;
    assert_eq!(
        model,
        Balance {
            cents: 5,
            deposits: 1
        }
    );
    let (version, failed_version, reason): (i64, Option<i64>, String) = sqlx::query_as(
        "select version, failed_version, skipped->0->>'reason' from wh_perspective_cursors
          where perspective = 'pg_cli.picky' and model_key = $1",
    )
    .bind(skipped)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((version, failed_version), (2, None));
    assert_eq!(reason, "known bad deposit");

    // Fix the cause, retry: the runner applies the event; a waiter ends Synced.
    UNLUCKY.store(false, Ordering::SeqCst);
    let partition = partition_of(retried.into());
    // The skip released this partition's lease (it may be the same one):
    // wait until the runner holds it again.
    let (owner, fence): (Uuid, i64) = eventually("the partition leased again", || {
        let pool = pool.clone();
        async move {
            let row: Option<(Option<Uuid>, i64)> = sqlx::query_as(
                "select owner, fence from wh_partition_leases
                  where perspective = 'pg_cli.picky' and partition = $1",
            )
            .bind(partition)
            .fetch_optional(&pool)
            .await
            .unwrap();
            row.and_then(|(owner, fence)| owner.map(|o| (o, fence)))
        }
    })
    .await;
    ok(&url, &["retry", "pg_cli.picky", &retried.to_string()]).await;
    // A batch the runner read before the retry (at the old fence) can no
    // longer move the checkpoint forward over the retried stream.
    assert!(
        !advance_checkpoint(
            &pool,
            "pg_cli.picky",
            partition,
            owner,
            fence,
            "999999999",
            1
        )
        .await
        .unwrap(),
        "the retry released the partition's lease (fence bumped)"
    );
    let outcome = wait_stream(&rt, retried).await;
    assert!(
        matches!(outcome, SyncOutcome::Synced | SyncOutcome::NoPendingEvents),
        "{outcome:?}"
    );
    let (model, _) = rt
        .lens::<Picky>()
        .get_versioned(retried.into())
        .await
        .unwrap()
        .expect("the retried stream has a model");
    assert_eq!(
        model,
        Balance {
            cents: 13,
            deposits: 1
        }
    );
    let status = ok_json(&url, &["status"]).await;
    let picky = status["perspectives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "pg_cli.picky")
        .unwrap();
    assert_eq!(picky["failed"].as_array().unwrap().len(), 0, "{status:#}");
    assert_eq!(picky["lag_events"], 0, "{status:#}");

    // Nothing to retry any more, unknown names: refused, nothing changed.
    refused(
        &url,
        &["retry", "pg_cli.picky", &retried.to_string()],
        "has not failed",
    )
    .await;
    refused(
        &url,
        &["retry", "pg_cli.nope", &retried.to_string()],
        "unknown perspective `pg_cli.nope`",
    )
    .await;
    refused(
        &url,
        &[
            "skip",
            "pg_cli.picky",
            &Uuid::now_v7().to_string(),
            "--reason",
            "x",
        ],
        "has no cursor on stream",
    )
    .await;
    shut_down(rt, pg).await;
}

/// Runs hourly: the runner reads its feed but never applies within a test,
/// so its streams stay without a cursor unless a wait triggers a run.
struct Hourly;
#[perspective(model = Balance, name = "pg_cli.hourly", strategy = scheduled("1h"))]
impl Hourly {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn streams_without_a_cursor_count_in_the_lag(pool: PgPool) {
    let url = url_of(&pool);
    let pg = backend(&pool, fast_options()).await;
    let rt = service_of::<Hourly>(&pg);
    // A paused runner runs no triggered wait; an hourly one runs nothing
    // else within the test.
    rt.runner().resume();
    eventually("the runner declared the handled event types", || async {
        let types: Option<Vec<String>> = sqlx::query_scalar(
            "select event_types from wh_perspective_strategies where perspective = 'pg_cli.hourly'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap()
        .flatten();
        (types == Some(vec!["pg_cli.deposited".to_owned()])).then_some(())
    })
    .await;
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    // a: applied once by a triggered wait (its cursor), then one more behind.
    deposit(&rt, a, 1).await;
    let triggered = bounded(
        rt.sync_awaiter().wait::<Hourly>(
            PerspectiveSyncOptions::new(SyncFilter::for_stream(a))
                .timeout(Duration::from_secs(8))
                .trigger(true),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        (triggered.outcome, triggered.run),
        (SyncOutcome::Synced, StrategyRun::Triggered)
    );
    deposit(&rt, a, 1).await;
    // b: two deposits the schedule holds, no cursor.
    deposit(&rt, b, 2).await;
    deposit(&rt, b, 2).await;
    // c: a deposit appended an hour ago (as an import would have), no cursor.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("insert into wh_streams (stream_id, version, partition) values ($1, 1, $2)")
        .bind(c)
        .bind(partition_of(c.into()))
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "insert into wh_events (partition, event_id, stream_id, stream_version, event_type, data,
                                created_at)
         values ($2, $3, $1, 1, 'pg_cli.deposited',
                 jsonb_build_object('account', $1::text, 'cents', 3),
                 now() - interval '1 hour')",
    )
    .bind(c)
    .bind(partition_of(c.into()))
    .bind(Uuid::now_v7())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let status = ok_json(&url, &["status"]).await;
    let hourly = status["perspectives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "pg_cli.hourly")
        .unwrap_or_else(|| panic!("{status:#}"))
        .clone();
    assert_eq!(hourly["strategy"], "scheduled(1h)", "{status:#}");
    assert_eq!(hourly["streams"], 1, "only a has a cursor: {status:#}");
    // a: 1 behind its cursor; b: 2 and c: 1 without a cursor.
    assert_eq!(hourly["lag_events"], 4, "{status:#}");
    // The oldest unapplied event is c's, an hour old.
    let lag = hourly["lag_seconds"].as_f64().unwrap();
    assert!((3599.0..3700.0).contains(&lag), "{status:#}");
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_rebuild_in_progress_is_shown_as_the_rebuild_of_its_perspective(pool: PgPool) {
    let url = url_of(&pool);
    let pg = backend(&pool, fast_options()).await;
    let rt = service_of::<Ledger>(&pg);
    let accounts: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for account in &accounts {
        deposit(&rt, *account, 2).await;
    }
    ledger_equals_fresh_fold(&rt, &accounts).await;
    shut_down(rt, pg).await;
    // A rebuild to version 2 half-way, as its process leaves it: the progress
    // row, and a shadow generation with two streams, one of them failed.
    sqlx::query(
        "insert into wh_rebuilds (perspective, version, phase, done, total)
         values ('pg_cli.ledger', 2, 'building', 2, 3)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into wh_perspective_cursors
                (perspective, model_key, version, failed_version, failure_message, attempts)
         values ('pg_cli.ledger~rebuild', $1, 1, null, null, 0),
                ('pg_cli.ledger~rebuild', $2, 0, 1, 'the new apply failed', 1)",
    )
    .bind(accounts[0])
    .bind(accounts[1])
    .execute(&pool)
    .await
    .unwrap();

    let status = ok_json(&url, &["status"]).await;
    let perspectives = status["perspectives"].as_array().unwrap();
    let names: Vec<&str> = perspectives
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pg_cli.ledger"], "{status:#}");
    let ledger = &perspectives[0];
    // The live generation alone in the perspective's own figures.
    assert_eq!(ledger["streams"], 3, "{status:#}");
    assert_eq!(ledger["applied_events"], 3, "{status:#}");
    assert_eq!(ledger["lag_events"], 0, "{status:#}");
    assert_eq!(ledger["failed"].as_array().unwrap().len(), 0, "{status:#}");
    let rebuild = &ledger["rebuild"];
    assert_eq!(rebuild["version"], 2, "{status:#}");
    assert_eq!(rebuild["phase"], "building", "{status:#}");
    assert_eq!(
        (&rebuild["done"], &rebuild["total"]),
        (&2.into(), &3.into())
    );
    assert_eq!(rebuild["shadow_streams"], 2, "{status:#}");
    assert_eq!(rebuild["shadow_applied_events"], 1, "{status:#}");
    let failed = rebuild["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{status:#}");
    assert_eq!(failed[0]["stream"], accounts[1].to_string());

    let table = ok(&url, &["status"]).await;
    let rows: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("PERSPECTIVE"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(rows.len(), 1, "{table}");
    assert!(rows[0].starts_with("pg_cli.ledger "), "{table}");
    assert!(
        rows[0].ends_with("building v2 2/3, 1 failed"),
        "the REBUILD column: {table}"
    );
    assert!(table.contains("REBUILD"), "{table}");
    assert!(table.contains("the new apply failed"), "{table}");

    // Once swapped (the shadow gone, the row done), no rebuild is shown.
    sqlx::query("delete from wh_perspective_cursors where perspective = 'pg_cli.ledger~rebuild'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("update wh_rebuilds set phase = 'done', done = 3")
        .execute(&pool)
        .await
        .unwrap();
    let table = ok(&url, &["status"]).await;
    let row = table
        .lines()
        .find(|l| l.starts_with("pg_cli.ledger"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.ends_with(" -"), "{table}");
    assert!(!table.contains("~rebuild"), "{table}");
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn dead_letters_are_listed_and_replayed(pool: PgPool) {
    let url = url_of(&pool);
    let queue = PgMessageQueue::with_options(pool.clone(), QueueOptions::default().max_attempts(1));
    let me = InstanceId::new();
    let mut ids = Vec::new();
    for n in 0..3 {
        let payload = serde_json::value::to_raw_value(&serde_json::json!({ "n": n })).unwrap();
        let message = QueuedMessage::new("pg_cli.poison", payload);
        ids.push(message.id.as_uuid());
        bounded(queue.enqueue_and_lease(message, me, Duration::from_secs(30)))
            .await
            .unwrap();
        bounded(queue.fail(ids[n].into(), me, "poison pill"))
            .await
            .unwrap();
    }
    let listed = ok_json(&url, &["dead-letters", "list"]).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    for letter in listed {
        assert_eq!(letter["error"], "poison pill");
        assert_eq!(letter["message_type"], "pg_cli.poison");
    }
    let table = ok(&url, &["dead-letters", "list"]).await;
    assert!(table.contains(&ids[1].to_string()) && table.contains("poison pill"));
    let status = ok_json(&url, &["status"]).await;
    assert_eq!(status["queue"]["dead_letters"], 3);

    // One by id, then the rest; an id that is not a dead letter is an error.
    let replayed = ok_json(&url, &["dead-letters", "replay", &ids[0].to_string()]).await;
    assert_eq!(replayed["replayed"], serde_json::json!([ids[0]]));
    refused(
        &url,
        &["dead-letters", "replay", &ids[0].to_string()],
        "not dead letters",
    )
    .await;
    let replayed = ok_json(&url, &["dead-letters", "replay", "--all"]).await;
    assert_eq!(replayed["replayed"].as_array().unwrap().len(), 2);
    let status = ok_json(&url, &["status"]).await;
    assert_eq!(status["queue"]["dead_letters"], 0);
    assert_eq!(status["queue"]["queued"], 3);
    let queued: i64 =
        sqlx::query_scalar("select count(*) from wh_message_queue where attempts = 0")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(queued, 3, "replayed messages wait again with no attempts");
}

#[sqlx::test(migrations = false)]
async fn an_unmigrated_database_and_an_unreachable_server_are_clear_errors(pool: PgPool) {
    let url = url_of(&pool);
    refused(&url, &["status"], "missing whizbang migrations").await;
    refused(
        "postgres://postgres@127.0.0.1:1/postgres",
        &["status"],
        "could not connect to PostgreSQL at 127.0.0.1:1/postgres",
    )
    .await;
    // --database-url overrides DATABASE_URL.
    let out = whizbang(
        "postgres://postgres@127.0.0.1:1/postgres",
        &["--database-url", &url, "failed"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing whizbang migrations"));
    // A schema nobody migrated.
    refused(&url, &["--schema", "billing", "status"], "schema `billing`").await;
    // A usage error is exit code 2.
    let out = whizbang(&url, &["retry", "only-a-name"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

// ---- sync and rebuild, carried out by a running service -------------------------------------

/// Folds deposits; its rebuilds run while deposits keep arriving.
struct Ledger;
#[perspective(model = Balance, name = "pg_cli.ledger")]
impl Ledger {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
}

/// Fails on 13 cents, always: a rebuild of it fails in the service.
struct Grumpy;
#[perspective(model = Balance, name = "pg_cli.grumpy")]
impl Grumpy {
    fn deposited(b: &mut Balance, e: &Deposited) -> std::result::Result<(), String> {
        if e.cents == 13 {
            return Err("13 cents is unlucky".to_owned());
        }
        b.cents += e.cents;
        b.deposits += 1;
        Ok(())
    }
}

/// A service running the teller and perspective `P` (its partitioned runner
/// and the request task on).
fn service_of<P: whizbang_core::Perspective>(pg: &Postgres) -> Runtime {
    let registry = Registry::builder()
        .receptors_of::<Teller>()
        .perspective::<P>()
        .build()
        .unwrap();
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .unwrap();
    rt.runner().pause();
    rt
}

/// Every account's `Ledger` model, once caught up, equals a fresh fold.
async fn ledger_equals_fresh_fold(rt: &Runtime, accounts: &[Uuid]) {
    for account in accounts {
        let fold = rt.aggregate::<Ledger>(*account).await.unwrap();
        let lens = rt.lens::<Ledger>();
        let got = eventually(&format!("{account} caught up"), || {
            let lens = lens.clone();
            async move {
                let got = lens.get_versioned((*account).into()).await.unwrap()?;
                (got.1 >= fold.version).then_some(got)
            }
        })
        .await;
        assert_eq!(got, (fold.model.clone(), fold.version), "{account}");
    }
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_rebuild_requested_from_the_tool_under_load_ends_equal_to_a_fresh_fold(pool: PgPool) {
    let url = url_of(&pool);
    let pg = backend(&pool, fast_options()).await;
    let rt = service_of::<Ledger>(&pg);
    let accounts: Vec<Uuid> = (0..30).map(|_| Uuid::now_v7()).collect();
    for round in 0..5 {
        for (i, account) in accounts.iter().enumerate() {
            deposit(&rt, *account, (round * 7 + i) as i64).await;
        }
    }
    ledger_equals_fresh_fold(&rt, &accounts).await;

    // Deposits keep arriving while the tool asks for the rebuild.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (rt, stop, accounts) = (rt.clone(), Arc::clone(&stop), accounts.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                deposit(&rt, accounts[n % accounts.len()], 1).await;
                n += 1;
            }
            n
        })
    };
    let out = ok(&url, &["--json", "rebuild", "pg_cli.ledger"]).await;
    stop.store(true, Ordering::SeqCst);
    let written = bounded(writer).await.unwrap();
    assert!(written > 0);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let last = lines.last().expect("progress lines");
    assert_eq!(last["status"], "done", "{out}");
    assert_eq!(last["kind"], "rebuild");
    assert_eq!(last["done"], last["total"], "{out}");
    assert!(last["total"].as_i64().unwrap() >= 150, "{out}");
    ledger_equals_fresh_fold(&rt, &accounts).await;
    let status: String = sqlx::query_scalar(
        "select status from wh_operator_requests where perspective = 'pg_cli.ledger'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "done");

    // `sync` as plain text: a bar redrawn in place, ending at 100%.
    deposit(&rt, accounts[0], 5).await;
    let text = ok(&url, &["sync", "pg_cli.ledger"]).await;
    assert!(text.contains('\r') && text.contains("100.0%"), "{text:?}");
    assert!(text.contains("(done)"), "{text:?}");
    ledger_equals_fresh_fold(&rt, &accounts).await;
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_request_nobody_serves_or_that_fails_exits_non_zero_with_the_reason(pool: PgPool) {
    let url = url_of(&pool);
    // No service runs this perspective: withdrawn after the timeout.
    refused(
        &url,
        &["rebuild", "pg_cli.nobody", "--timeout", "1"],
        "no running service picked up the rebuild of perspective `pg_cli.nobody` within 1s",
    )
    .await;
    let left: i64 = sqlx::query_scalar("select count(*) from wh_operator_requests")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the request was withdrawn");

    // The service fails the rebuild: the tool says why.
    let pg = backend(&pool, fast_options()).await;
    let rt = service_of::<Grumpy>(&pg);
    let account = Uuid::now_v7();
    deposit(&rt, account, 13).await;
    refused(&url, &["rebuild", "pg_cli.grumpy"], "13 cents is unlucky").await;
    let (status, error): (String, Option<String>) = sqlx::query_as(
        "select status, error from wh_operator_requests where perspective = 'pg_cli.grumpy'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(status, "failed");
    assert!(error
        .unwrap()
        .contains("live models were left as they were"));
    // status: the failed rebuild is grumpy's, not a perspective of its own.
    let status = ok_json(&url, &["status"]).await;
    let perspectives = status["perspectives"].as_array().unwrap();
    assert!(
        perspectives
            .iter()
            .all(|p| !p["name"].as_str().unwrap().contains("~rebuild")),
        "{status:#}"
    );
    let grumpy = perspectives
        .iter()
        .find(|p| p["name"] == "pg_cli.grumpy")
        .unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!(grumpy["rebuild"]["phase"], "failed", "{status:#}");
    shut_down(rt, pg).await;
}

/// Balances keyed by account through one cursor over the global order.
struct KeyedBalances;
#[perspective(model = Balance, key = account, name = "pg_cli.keyed")]
impl KeyedBalances {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
}

/// The status entry of perspective `name`.
fn entry(status: &Value, name: &str) -> Value {
    status["perspectives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{status:#}"))
        .clone()
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_keyed_perspective_lags_by_what_its_one_cursor_has_not_passed(pool: PgPool) {
    let url = url_of(&pool);
    let pg = backend(&pool, fast_options()).await;
    let rt = service_of::<KeyedBalances>(&pg);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    deposit(&rt, a, 1).await;
    deposit(&rt, a, 2).await;
    deposit(&rt, b, 3).await;
    eventually("the runner applied the three deposits", || {
        let url = url.clone();
        async move {
            let keyed = entry(&ok_json(&url, &["status"]).await, "pg_cli.keyed");
            (keyed["lag_events"] == 0 && keyed["applied_events"].as_i64() >= Some(3))
                .then_some(keyed)
        }
    })
    .await;
    shut_down(rt, pg).await;

    // Nobody applies now: two more deposits on a (a stream whose earlier
    // events are applied) and one on c.
    let pg = backend(&pool, fast_options().runner(false)).await;
    let rt = service_of::<KeyedBalances>(&pg);
    let c = Uuid::now_v7();
    deposit(&rt, a, 4).await;
    deposit(&rt, a, 5).await;
    deposit(&rt, c, 6).await;
    let keyed = entry(&ok_json(&url, &["status"]).await, "pg_cli.keyed");
    assert_eq!(keyed["keyed"], true, "{keyed:#}");
    assert_eq!(keyed["streams"], 2, "the models of a and b: {keyed:#}");
    assert_eq!(
        keyed["applied_events"], 3,
        "the cursor's position: {keyed:#}"
    );
    assert_eq!(keyed["lag_events"], 3, "{keyed:#}");
    assert_eq!(keyed["failed"], Value::Array(Vec::new()), "{keyed:#}");
    shut_down(rt, pg).await;
}

/// Balances keyed by account, refusing deposits of 13 cents, always.
struct KeyedPicky;
#[perspective(model = Balance, key = account, name = "pg_cli.keyed_picky")]
impl KeyedPicky {
    fn deposited(b: &mut Balance, e: &Deposited) -> std::result::Result<(), String> {
        if e.cents == 13 {
            return Err("13 cents is unlucky".to_owned());
        }
        b.cents += e.cents;
        b.deposits += 1;
        Ok(())
    }
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_keyed_perspective_failed_on_an_event_is_listed_and_skipped_past(pool: PgPool) {
    let url = url_of(&pool);
    let pg = backend(&pool, fast_options()).await;
    let rt = service_of::<KeyedPicky>(&pg);
    let account = Uuid::now_v7();
    deposit(&rt, account, 2).await;
    deposit(&rt, account, 13).await;
    deposit(&rt, account, 5).await;
    let cursor = whizbang_core::perspective::KEYED_CURSOR
        .as_uuid()
        .to_string();
    let failed = eventually("the keyed cursor is listed failed", || {
        let url = url.clone();
        async move {
            let failed = ok_json(&url, &["failed"]).await;
            failed
                .as_array()
                .and_then(|all| {
                    all.iter()
                        .find(|f| f["perspective"] == "pg_cli.keyed_picky")
                })
                .cloned()
        }
    })
    .await;
    assert_eq!(failed["stream"], cursor.as_str(), "{failed:#}");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(message.contains("13 cents is unlucky"), "{failed:#}");

    // A retry cannot help (the cause is in the event); a skip moves past
    // it, and the runner applies the rest.
    let out = ok_json(
        &url,
        &[
            "skip",
            "pg_cli.keyed_picky",
            &cursor,
            "--reason",
            "known bad deposit",
        ],
    )
    .await;
    assert_eq!(out["action"], "skip", "{out:#}");
    let model = eventually("the deposit after the skipped one applied", || {
        let lens = rt.lens::<KeyedPicky>();
        async move {
            let model = lens.get_by_key(account).await.unwrap()?;
            (model.deposits == 2).then_some(model)
        }
    })
    .await;
    assert_eq!(
        model,
        Balance {
            cents: 7,
            deposits: 2
        }
    );
    let (failed_version, reason): (Option<i64>, String) = sqlx::query_as(
        "select failed_version, skipped->0->>'reason' from wh_perspective_cursors
          where perspective = 'pg_cli.keyed_picky' and model_key = $1",
    )
    .bind(whizbang_core::perspective::KEYED_CURSOR.as_uuid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (failed_version, reason.as_str()),
        (None, "known bad deposit")
    );
    shut_down(rt, pg).await;
}

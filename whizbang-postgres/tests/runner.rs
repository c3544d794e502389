//! The partitioned runner on a real database: the feed never skips a
//! late-committing append, a perspective registered later catches up,
//! runtimes share partitions and apply each event once, expired leases are
//! taken over, stale fences change nothing, and failures stay on their
//! cursor.
//!
//! Each test builds its runtimes on a registry of its own perspectives, so
//! tests in this binary do not run each other's perspectives.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::{Connection as _, PgConnection, PgPool};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{backend, bounded, eventually, fast_options, shut_down};
use uuid::Uuid;
use whizbang_core::{
    perspective, receptor, Command, Context, Event, Receptor, Registry, Result, Runtime, StreamId,
    SyncFilter, SyncOutcome,
};
use whizbang_postgres::__private::{advance_checkpoint, partition_of, with_checkpoint_ride};
use whizbang_postgres::Postgres;

// ---- messages -------------------------------------------------------------------------

#[derive(Command, Serialize, Deserialize)]
#[command(output = ())]
struct Deposit {
    account: Uuid,
    cents: i64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_runner.deposited")]
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

// ---- perspectives, one set per test -----------------------------------------------------

struct LateBalances;
#[perspective(model = Balance, name = "pg_runner.late")]
impl LateBalances {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
}

struct FirstBalances;
#[perspective(model = Balance, name = "pg_runner.first")]
impl FirstBalances {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
}

struct AddedLater;
#[perspective(model = Balance, name = "pg_runner.added_later")]
impl AddedLater {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
}

static COUNTED_APPLIES: AtomicUsize = AtomicUsize::new(0);

struct Counted;
#[perspective(model = Balance, name = "pg_runner.counted")]
impl Counted {
    fn deposited(b: &mut Balance, e: &Deposited) {
        COUNTED_APPLIES.fetch_add(1, Ordering::SeqCst);
        b.cents += e.cents;
        b.deposits += 1;
    }
}

struct TakenOver;
#[perspective(model = Balance, name = "pg_runner.taken_over")]
impl TakenOver {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
}

/// Held for an hour: only the test's own catch-ups apply it.
struct Ridden;
#[perspective(model = Balance, name = "pg_runner.ridden", strategy = batch(1000, "1h"))]
impl Ridden {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
}

/// While set, an apply of 13 cents fails.
static UNLUCKY: AtomicBool = AtomicBool::new(true);

struct Picky;
#[perspective(model = Balance, name = "pg_runner.picky")]
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

struct Strict;
#[perspective(model = Balance, name = "pg_runner.strict")]
impl Strict {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
}

/// A registry with the teller and perspective `P` only.
fn registry_with<P: whizbang_core::Perspective>() -> Registry {
    Registry::builder()
        .receptors_of::<Teller>()
        .perspective::<P>()
        .build()
        .unwrap()
}

/// A runtime on `pg` whose in-process runner is paused: only the
/// partitioned runner applies async perspectives.
fn runtime(pg: &Postgres, registry: Registry) -> Runtime {
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

/// `P`'s model of `account`, once it has `deposits` deposits.
async fn balance_with<P: whizbang_core::Perspective<Model = Balance>>(
    rt: &Runtime,
    account: Uuid,
    deposits: u64,
) -> Balance {
    eventually(&format!("{} applied {deposits} deposits", P::NAME), || {
        let lens = rt.lens::<P>();
        async move {
            let (model, _) = lens.get_versioned(account.into()).await.unwrap()?;
            (model.deposits >= deposits).then_some(model)
        }
    })
    .await
}

/// A metadata document as the event store writes it.
fn metadata() -> String {
    format!(
        r#"{{"correlation_id":"{}","causation_id":null,"timestamp_us":0,"extra":{{}}}}"#,
        Uuid::now_v7()
    )
}

/// Appends one event the way the event store does (stream head, then the
/// row with its partition), on `conn`, which may be inside a transaction.
async fn raw_append(
    conn: &mut PgConnection,
    stream: Uuid,
    version: i64,
    event_type: &str,
    data: &str,
) -> Uuid {
    let partition = partition_of(StreamId::from(stream));
    sqlx::query(
        "insert into wh_streams (stream_id, version, partition) values ($1, $2, $3)
         on conflict (stream_id) do update set version = excluded.version",
    )
    .bind(stream)
    .bind(version)
    .bind(partition)
    .execute(&mut *conn)
    .await
    .unwrap();
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into wh_events
             (event_id, stream_id, stream_version, partition, event_type, data, metadata)
         values ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)",
    )
    .bind(id)
    .bind(stream)
    .bind(version)
    .bind(partition)
    .bind(event_type)
    .bind(data)
    .bind(metadata())
    .execute(&mut *conn)
    .await
    .unwrap();
    id
}

async fn connection(pool: &PgPool) -> PgConnection {
    PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("a connection to the test database")
}

/// A stream id in `partition`.
fn stream_in(partition: i16) -> Uuid {
    loop {
        let id = Uuid::now_v7();
        if partition_of(StreamId::from(id)) == partition {
            return id;
        }
    }
}

/// The checkpoint of `perspective` on `partition`: (tx_id, global_position).
async fn checkpoint(pool: &PgPool, perspective: &str, partition: i16) -> Option<(String, i64)> {
    sqlx::query_as(
        "select tx_id::text, global_position from wh_feed_checkpoints
          where perspective = $1 and partition = $2",
    )
    .bind(perspective)
    .bind(partition)
    .fetch_optional(pool)
    .await
    .unwrap()
}

// ---- tests ----------------------------------------------------------------------------

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn an_append_that_commits_late_is_applied_not_skipped(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime(&pg, registry_with::<LateBalances>());
    let partition = 3;
    let (late, early) = (stream_in(partition), stream_in(partition));

    // A transaction appends first and stays open ..
    let mut open = connection(&pool).await;
    let mut tx = open.begin().await.unwrap();
    let late_tx: String = sqlx::query_scalar("select pg_current_xact_id()::text")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    raw_append(
        &mut tx,
        late,
        1,
        "pg_runner.deposited",
        &format!(r#"{{"account":"{late}","cents":5}}"#),
    )
    .await;

    // .. while a later append to the same partition commits and the runner
    // scans again and again.
    deposit(&rt, early, 7).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    if let Some((tx_id, _)) = checkpoint(&pool, "pg_runner.late", partition).await {
        let behind: bool = sqlx::query_scalar("select $1::text::xid8 < $2::text::xid8")
            .bind(&tx_id)
            .bind(&late_tx)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(
            behind,
            "checkpoint {tx_id} passed the open transaction {late_tx}"
        );
    }

    // Once it commits, both are applied: the late one was not skipped.
    tx.commit().await.unwrap();
    assert_eq!(balance_with::<LateBalances>(&rt, late, 1).await.cents, 5);
    assert_eq!(balance_with::<LateBalances>(&rt, early, 1).await.cents, 7);
    open.close().await.unwrap();
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_perspective_only_a_newer_runtime_has_catches_up_over_existing_events(pool: PgPool) {
    let old_pg = backend(&pool, fast_options()).await;
    let old = runtime(&old_pg, registry_with::<FirstBalances>());
    let accounts: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    for (i, account) in accounts.iter().enumerate() {
        deposit(&old, *account, i as i64 + 1).await;
    }
    for account in &accounts {
        balance_with::<FirstBalances>(&old, *account, 1).await;
    }

    // A newer build registers one more perspective; the old one keeps
    // running its own.
    let newer = Registry::builder()
        .receptors_of::<Teller>()
        .perspective::<FirstBalances>()
        .perspective::<AddedLater>()
        .build()
        .unwrap();
    let new_pg = backend(&pool, fast_options()).await;
    let new = runtime(&new_pg, newer);
    for (i, account) in accounts.iter().enumerate() {
        let model = balance_with::<AddedLater>(&new, *account, 1).await;
        assert_eq!(
            model,
            Balance {
                cents: i as i64 + 1,
                deposits: 1
            }
        );
    }
    // And new events reach both.
    deposit(&old, accounts[0], 100).await;
    assert_eq!(
        balance_with::<AddedLater>(&new, accounts[0], 2).await.cents,
        101
    );
    assert_eq!(
        balance_with::<FirstBalances>(&old, accounts[0], 2)
            .await
            .cents,
        101
    );
    shut_down(old, old_pg).await;
    shut_down(new, new_pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn two_runtimes_split_the_partitions_and_apply_each_event_once(pool: PgPool) {
    let a_pg = backend(&pool, fast_options()).await;
    let b_pg = backend(&pool, fast_options()).await;
    let (a_id, b_id) = (a_pg.instance_id(), b_pg.instance_id());
    let a = runtime(&a_pg, registry_with::<Counted>());
    let b = runtime(&b_pg, registry_with::<Counted>());

    let owned = |owner: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from wh_partition_leases
                  where perspective = 'pg_runner.counted' and owner = $1 and expires_at > now()",
            )
            .bind(owner)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    eventually("the two instances hold 8 partitions each", || async {
        (owned(a_id).await == 8 && owned(b_id).await == 8).then_some(())
    })
    .await;

    let accounts: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    let mut appended = 0;
    for round in 0..3 {
        for (i, account) in accounts.iter().enumerate() {
            let rt = if i % 2 == 0 { &a } else { &b };
            deposit(rt, *account, round + 1).await;
            appended += 1;
        }
    }
    for account in &accounts {
        let model = balance_with::<Counted>(&a, *account, 3).await;
        assert_eq!(
            model,
            Balance {
                cents: 6,
                deposits: 3
            }
        );
    }
    // A few more rescans change nothing: every event was applied once.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(COUNTED_APPLIES.load(Ordering::SeqCst), appended);
    let both: i64 = sqlx::query_scalar(
        "select count(distinct owner) from wh_partition_leases where perspective = 'pg_runner.counted'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(both, 2);

    // One leaves: the other takes its share over.
    shut_down(b, b_pg).await;
    eventually("the remaining instance holds all 16 partitions", || async {
        (owned(a_id).await == 16).then_some(())
    })
    .await;
    shut_down(a, a_pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn an_expired_lease_of_an_instance_that_stopped_heartbeating_is_taken_over(pool: PgPool) {
    // A dead instance holds every partition until its leases expire in 1 s.
    let dead = Uuid::now_v7();
    sqlx::query(
        "insert into wh_instances (instance_id, perspectives, heartbeat_at)
         values ($1, '{pg_runner.taken_over}', now() - interval '1 hour')",
    )
    .bind(dead)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into wh_partition_leases (perspective, partition, owner, fence, expires_at)
         select 'pg_runner.taken_over', g, $1, 5, now() + interval '1 second'
           from generate_series(0, 15) g",
    )
    .bind(dead)
    .execute(&pool)
    .await
    .unwrap();

    let pg = backend(&pool, fast_options()).await;
    let me = pg.instance_id();
    let rt = runtime(&pg, registry_with::<TakenOver>());
    let account = Uuid::now_v7();
    deposit(&rt, account, 9).await;
    assert_eq!(balance_with::<TakenOver>(&rt, account, 1).await.cents, 9);

    let leases: Vec<(Uuid, i64)> = sqlx::query_as(
        "select owner, fence from wh_partition_leases
          where perspective = 'pg_runner.taken_over' order by partition",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(leases.len(), 16);
    for (owner, fence) in leases {
        assert_eq!(owner, me, "every partition was taken over");
        assert_eq!(fence, 6, "a take-over bumps the fence");
    }
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_stale_fence_cannot_move_a_checkpoint(pool: PgPool) {
    let (me, other) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "insert into wh_partition_leases (perspective, partition, owner, fence, expires_at)
         values ('p', 2, $1, 3, now() + interval '1 minute')",
    )
    .bind(me)
    .execute(&pool)
    .await
    .unwrap();

    assert!(
        !advance_checkpoint(&pool, "p", 2, me, 2, "100", 1)
            .await
            .unwrap(),
        "older fence"
    );
    assert!(
        !advance_checkpoint(&pool, "p", 2, other, 3, "100", 1)
            .await
            .unwrap(),
        "other owner"
    );
    assert_eq!(checkpoint(&pool, "p", 2).await, None);
    assert!(
        advance_checkpoint(&pool, "p", 2, me, 3, "100", 1)
            .await
            .unwrap(),
        "the holder"
    );
    assert_eq!(checkpoint(&pool, "p", 2).await, Some(("100".into(), 1)));

    // Another instance takes the lease over: the old holder is a zombie.
    sqlx::query("update wh_partition_leases set owner = $1, fence = fence + 1 where partition = 2")
        .bind(other)
        .execute(&pool)
        .await
        .unwrap();
    assert!(!advance_checkpoint(&pool, "p", 2, me, 3, "200", 9)
        .await
        .unwrap());
    assert_eq!(checkpoint(&pool, "p", 2).await, Some(("100".into(), 1)));
    // An expired lease cannot move it either, even for its last owner.
    sqlx::query("update wh_partition_leases set expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(!advance_checkpoint(&pool, "p", 2, other, 4, "200", 9)
        .await
        .unwrap());
    // Nor can a checkpoint move backwards.
    sqlx::query("update wh_partition_leases set expires_at = now() + interval '1 minute'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(!advance_checkpoint(&pool, "p", 2, other, 4, "50", 1)
        .await
        .unwrap());
    assert!(advance_checkpoint(&pool, "p", 2, other, 4, "200", 9)
        .await
        .unwrap());
    assert_eq!(checkpoint(&pool, "p", 2).await, Some(("200".into(), 9)));
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn an_apply_error_fails_that_cursor_only_and_retry_and_skip_recover_it(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime(&pg, registry_with::<Picky>());
    let (fine, retried, skipped) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    deposit(&rt, retried, 13).await;
    deposit(&rt, skipped, 13).await;
    deposit(&rt, fine, 1).await;
    deposit(&rt, fine, 2).await;
    assert_eq!(balance_with::<Picky>(&rt, fine, 2).await.cents, 3);

    // Waiters on a failed stream end Failed, with the message.
    let waited = bounded(
        rt.sync_awaiter()
            .wait::<Picky>(SyncFilter::for_stream(retried).with_timeout(Duration::from_secs(8))),
    )
    .await
    .unwrap();
    match waited.outcome {
        SyncOutcome::Failed {
            version, message, ..
        } => {
            assert_eq!(version, 1);
            assert!(message.contains("13 cents is unlucky"), "{message}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // Both failing streams are marked failed (the wait above awaited only
    // one of them: the other may be marked a moment later); the fine one is not.
    let mut expected = vec![retried, skipped];
    expected.sort();
    let failed: Vec<Uuid> = eventually("both failing streams are marked failed", || async {
        let failed: Vec<Uuid> = sqlx::query_scalar(
            "select model_key from wh_perspective_cursors
              where perspective = 'pg_runner.picky' and failed_version is not null
              order by model_key",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        (failed.len() >= 2).then_some(failed)
    })
    .await;
    assert_eq!(failed, expected);

    // Later events on the fine stream keep applying.
    deposit(&rt, fine, 4).await;
    assert_eq!(balance_with::<Picky>(&rt, fine, 3).await.cents, 7);

    // Skip the bad event on one stream; fix the cause and retry the other.
    let report = bounded(rt.skip_failed_event::<Picky>(skipped, "known bad deposit"))
        .await
        .unwrap();
    assert_eq!(report.version, 1);
    UNLUCKY.store(false, Ordering::SeqCst);
    bounded(rt.retry_perspective::<Picky>(retried))
        .await
        .unwrap();
    assert_eq!(balance_with::<Picky>(&rt, retried, 1).await.cents, 13);
    let cursors: Vec<(Uuid, i64, Option<i64>, i64)> = sqlx::query_as(
        "select model_key, version, failed_version, jsonb_array_length(skipped)::int8
           from wh_perspective_cursors where perspective = 'pg_runner.picky' and model_key = any($1)
          order by model_key",
    )
    .bind(vec![retried, skipped])
    .fetch_all(&pool)
    .await
    .unwrap();
    for (key, version, failed, skipped_count) in cursors {
        assert_eq!((version, failed), (1, None), "{key}");
        assert_eq!(skipped_count, i64::from(key == skipped), "{key}");
    }
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn bad_stored_events_fail_their_cursor_clearly_and_unknown_types_are_ignored(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime(&pg, registry_with::<Strict>());
    let (bad, mixed) = (Uuid::now_v7(), Uuid::now_v7());
    let mut conn = connection(&pool).await;
    // A payload that is JSON but not a `Deposited`.
    raw_append(
        &mut conn,
        bad,
        1,
        "pg_runner.deposited",
        r#"{"account": 42}"#,
    )
    .await;
    // A type nothing registers, then one the perspective handles.
    raw_append(
        &mut conn,
        mixed,
        1,
        "pg_runner.unheard_of",
        r#"{"whatever": true}"#,
    )
    .await;
    raw_append(
        &mut conn,
        mixed,
        2,
        "pg_runner.deposited",
        &format!(r#"{{"account":"{mixed}","cents":8}}"#),
    )
    .await;

    assert_eq!(balance_with::<Strict>(&rt, mixed, 1).await.cents, 8);
    let message: String = eventually("the bad event failed its cursor", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar(
                "select failure_message from wh_perspective_cursors
                  where perspective = 'pg_runner.strict' and model_key = $1
                    and failed_version = 1",
            )
            .bind(bad)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    assert!(message.contains("pg_runner.deposited"), "{message}");
    assert!(message.contains("does not decode"), "{message}");
    let mixed_cursor: (i64, Option<i64>) = sqlx::query_as(
        "select version, failed_version from wh_perspective_cursors
          where perspective = 'pg_runner.strict' and model_key = $1",
    )
    .bind(mixed)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        mixed_cursor,
        (2, None),
        "the unknown event was moved past, not failed"
    );
    conn.close().await.unwrap();
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_claim_held_past_the_lease_is_ended_by_the_server_and_its_late_commit_fails(
    pool: PgPool,
) {
    use whizbang_core::backend::{Checkpoint, PerspectiveStore};
    use whizbang_postgres::PgPerspectiveStore;

    // Two processes' pools; sessions end after 2 s idle in a transaction.
    let zombie_pg = backend(&pool, fast_options().runner(false)).await;
    let live_pg = backend(&pool, fast_options().runner(false)).await;
    let zombie_store = PgPerspectiveStore::new(zombie_pg.pool().clone());
    let live_store = PgPerspectiveStore::new(live_pg.pool().clone());
    let key = StreamId::from(Uuid::now_v7());

    // The zombie claims, then stops doing anything (as if SIGSTOPped).
    let zombie = bounded(zombie_store.claim("pg_runner.zombie", key))
        .await
        .unwrap();
    // Another process's claim waits only until the server ends the zombie's
    // session (one lease), then commits.
    let live = bounded(live_store.claim("pg_runner.zombie", key))
        .await
        .unwrap();
    let applied = Checkpoint {
        version: 2,
        ..Checkpoint::default()
    };
    bounded(live.commit(None, applied)).await.unwrap();

    // The zombie resumes and commits: it fails, and changes nothing.
    let late = Checkpoint {
        version: 1,
        ..Checkpoint::default()
    };
    let err = bounded(zombie.commit(None, late))
        .await
        .expect_err("the zombie's transaction was ended by the server");
    assert!(err.to_string().contains("pg_runner.zombie"), "{err}");
    let cursor = bounded(live_store.checkpoint("pg_runner.zombie", key))
        .await
        .unwrap();
    assert_eq!(cursor.version, 2);
    zombie_pg.close().await;
    live_pg.close().await;
}

/// The last event of `stream`: (transaction id, global position).
async fn last_event(pool: &PgPool, stream: Uuid) -> (String, i64) {
    sqlx::query_as(
        "select tx_id::text, global_position from wh_events
          where stream_id = $1 order by stream_version desc limit 1",
    )
    .bind(stream)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_checkpoint_riding_a_claim_moves_in_its_commit_only_while_the_lease_holds(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime(&pg, registry_with::<Ridden>());
    let account = Uuid::now_v7();
    let partition = partition_of(account.into());
    let (owner, fence): (Uuid, i64) = eventually("the partition is leased", || async {
        sqlx::query_as(
            "select owner, fence from wh_partition_leases
              where perspective = 'pg_runner.ridden' and partition = $1
                and owner is not null and expires_at > now()",
        )
        .bind(partition)
        .fetch_optional(&pool)
        .await
        .unwrap()
    })
    .await;
    let deposits = |rt: &Runtime| {
        let lens = rt.lens::<Ridden>();
        async move {
            lens.get_versioned(account.into())
                .await
                .unwrap()
                .map_or(0, |(b, _)| b.deposits)
        }
    };

    // A stale fence: the models commit (fenced on their cursors), the
    // checkpoint stays.
    deposit(&rt, account, 5).await;
    let (tx_id, position) = last_event(&pool, account).await;
    let (caught, moved) = with_checkpoint_ride(
        "pg_runner.ridden",
        owner,
        vec![(partition, fence - 1, tx_id.clone(), position)],
        rt.catch_up_together("pg_runner.ridden", &[account.into()]),
    )
    .await;
    assert_eq!(caught.unwrap().map(|r| r.len()), Some(1));
    assert_eq!(
        moved,
        Some(vec![]),
        "the commit took the move, the fence refused it"
    );
    assert_eq!(checkpoint(&pool, "pg_runner.ridden", partition).await, None);
    assert_eq!(deposits(&rt).await, 1);

    // The holder: the checkpoint moves with the models.
    deposit(&rt, account, 7).await;
    let (tx_id, position) = last_event(&pool, account).await;
    let (caught, moved) = with_checkpoint_ride(
        "pg_runner.ridden",
        owner,
        vec![(partition, fence, tx_id.clone(), position)],
        rt.catch_up_together("pg_runner.ridden", &[account.into()]),
    )
    .await;
    assert_eq!(caught.unwrap().map(|r| r.len()), Some(1));
    assert_eq!(moved, Some(vec![partition]));
    assert_eq!(
        checkpoint(&pool, "pg_runner.ridden", partition).await,
        Some((tx_id.clone(), position))
    );
    assert_eq!(deposits(&rt).await, 2);

    // Nothing to commit: no commit takes the move (the runner then moves
    // the checkpoint on its own).
    let (caught, moved) = with_checkpoint_ride(
        "pg_runner.ridden",
        owner,
        vec![(partition, fence, tx_id.clone(), position + 1)],
        rt.catch_up_together("pg_runner.ridden", &[account.into()]),
    )
    .await;
    assert_eq!(caught.unwrap().map(|r| r.len()), Some(0));
    assert_eq!(moved, None);
    assert_eq!(
        checkpoint(&pool, "pg_runner.ridden", partition).await,
        Some((tx_id, position))
    );
    shut_down(rt, pg).await;
}

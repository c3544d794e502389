//! Inline perspectives on PostgreSQL apply in the append's transaction: once
//! a send returns, its inline models and cursors already reflect its events
//! (written by the same transaction as the events), a failing perspective
//! marks its cursor failed there without undoing the append, a losing
//! concurrent append changes no model, a send dropped at any point leaves
//! events and models together or neither, concurrent sends and catch-ups
//! (and the runner) apply each event once, a lagging cursor is folded over
//! the older events in the append, a tombstone before a failing event of
//! the same append stands, and with a perspective-stage receptor
//! registered inline perspectives apply at completion instead.
//!
//! Every runtime here runs with the partitioned runner off and its in-process
//! runner paused, so nothing but the append (or an explicit flush, catch-up
//! or retry) applies a perspective.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{backend, bounded, fast_options, shut_down};
use uuid::Uuid;
use whizbang_core::{
    perspective, receptor, Command, Context, Error, Event, ExpectedVersion, Perspective, Receptor,
    Registry, Result, Runtime, StreamId, Tombstone,
};
use whizbang_postgres::Postgres;

// ---- messages -------------------------------------------------------------------------

#[derive(Command, Serialize, Deserialize)]
#[command(output = ())]
struct Deposit {
    account: Uuid,
    cents: i64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_inline.deposited")]
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

/// Every deposit in order, so a model that applied one twice or skipped
/// one differs from a fresh fold.
#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Ledger {
    cents: i64,
    deposits: Vec<i64>,
}

/// Closes an account between two deposits, all in one append.
#[derive(Command, Serialize, Deserialize)]
#[command(output = ())]
struct Churn {
    account: Uuid,
    /// The deposit after the close.
    then: i64,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "pg_inline.closed")]
struct Closed {
    #[stream_key]
    account: Uuid,
}

#[derive(Default)]
struct Churner;

#[receptor]
impl Receptor<Churn> for Churner {
    async fn handle(&self, cmd: Churn, cx: &mut Context) -> Result<()> {
        let account = cmd.account;
        cx.emit(Deposited { account, cents: 5 })?;
        cx.emit(Closed { account })?;
        cx.emit(Deposited {
            account,
            cents: cmd.then,
        })?;
        Ok(())
    }
}

// ---- perspectives ---------------------------------------------------------------------

/// Deletes the model on a close; a deposit of 13 cents always fails.
struct Closing;
#[perspective(model = Ledger, name = "pg_inline.closing", mode = inline)]
impl Closing {
    fn deposited(l: &mut Ledger, e: &Deposited) -> std::result::Result<(), String> {
        if e.cents == 13 {
            return Err("13 cents is unlucky".to_owned());
        }
        l.cents += e.cents;
        l.deposits.push(e.cents);
        Ok(())
    }
    fn closed(_: &mut Ledger, _: &Closed) -> Tombstone {
        Tombstone
    }
}

struct Balances;
#[perspective(model = Ledger, name = "pg_inline.balances", mode = inline)]
impl Balances {
    fn deposited(l: &mut Ledger, e: &Deposited) {
        l.cents += e.cents;
        l.deposits.push(e.cents);
    }
}

/// While set, a deposit of 13 cents fails to apply.
static UNLUCKY: AtomicBool = AtomicBool::new(true);

struct Picky;
#[perspective(model = Ledger, name = "pg_inline.picky", mode = inline)]
impl Picky {
    fn deposited(l: &mut Ledger, e: &Deposited) -> std::result::Result<(), String> {
        if e.cents == 13 && UNLUCKY.load(Ordering::SeqCst) {
            return Err("13 cents is unlucky".to_owned());
        }
        l.cents += e.cents;
        l.deposits.push(e.cents);
        Ok(())
    }
}

struct Second;
#[perspective(model = Ledger, name = "pg_inline.second", mode = inline)]
impl Second {
    fn deposited(l: &mut Ledger, e: &Deposited) {
        l.cents += e.cents;
        l.deposits.push(e.cents);
    }
}

struct Third;
#[perspective(model = Ledger, name = "pg_inline.third", mode = inline)]
impl Third {
    fn deposited(l: &mut Ledger, e: &Deposited) {
        l.cents += e.cents;
        l.deposits.push(e.cents);
    }
}

struct Fourth;
#[perspective(model = Ledger, name = "pg_inline.fourth", mode = inline)]
impl Fourth {
    fn deposited(l: &mut Ledger, e: &Deposited) {
        l.cents += e.cents;
        l.deposits.push(e.cents);
    }
}

static COUNTED: AtomicUsize = AtomicUsize::new(0);

struct Counted;
#[perspective(model = Ledger, name = "pg_inline.counted", mode = inline)]
impl Counted {
    fn deposited(l: &mut Ledger, e: &Deposited) {
        COUNTED.fetch_add(1, Ordering::SeqCst);
        l.cents += e.cents;
        l.deposits.push(e.cents);
    }
}

/// Deposits a perspective-stage receptor saw, in order.
static INSPECTED: std::sync::Mutex<Vec<i64>> = std::sync::Mutex::new(Vec::new());

/// Fires before the perspectives of each deposit: with it registered,
/// inline perspectives apply when the scope completes, around it.
#[derive(Default)]
struct Inspector;

#[receptor]
#[fire_at(PrePerspectiveInline)]
impl Receptor<Deposited> for Inspector {
    async fn handle(&self, e: Deposited, _: &mut Context) -> Result<()> {
        INSPECTED.lock().unwrap().push(e.cents);
        Ok(())
    }
}

// ---- helpers --------------------------------------------------------------------------

fn options() -> whizbang_postgres::PostgresOptions {
    fast_options().runner(false)
}

/// A runtime on `pg` with the teller and the given perspectives, its
/// in-process runner paused.
fn runtime(pg: &Postgres, registry: Registry) -> Runtime {
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .unwrap();
    rt.runner().pause();
    rt
}

/// The stored model of `P` for `account` (`None`: no row).
async fn model<P: Perspective<Model = Ledger>>(rt: &Runtime, account: Uuid) -> Option<Ledger> {
    rt.lens::<P>()
        .get_versioned(account.into())
        .await
        .unwrap()
        .map(|(m, _)| m)
}

/// `P`'s cursor on `account`: version, failed version, failure message.
async fn cursor(
    pool: &PgPool,
    perspective: &str,
    account: Uuid,
) -> Option<(i64, Option<i64>, Option<String>)> {
    sqlx::query_as(
        "select version, failed_version, failure_message from wh_perspective_cursors
          where perspective = $1 and model_key = $2",
    )
    .bind(perspective)
    .bind(account)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// The transaction that wrote the stream's last event, its inline model row
/// and its cursor row (`xmin` of each).
async fn writers(pool: &PgPool, perspective: &str, account: Uuid) -> (String, String, String) {
    sqlx::query_as(
        "select (select xmin::text from wh_events where stream_id = $2
                  order by stream_version desc limit 1),
                coalesce((select xmin::text from wh_perspective_rows
                           where perspective = $1 and model_key = $2), 'none'),
                (select xmin::text from wh_perspective_cursors
                  where perspective = $1 and model_key = $2)",
    )
    .bind(perspective)
    .bind(account)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Asserts that `P`'s stored model of `account` is a fresh fold of its
/// stored events and that its cursor is at the stream's version: no event
/// missing, none applied twice.
async fn assert_is_fresh_fold<P: Perspective<Model = Ledger>>(
    rt: &Runtime,
    pool: &PgPool,
    account: Uuid,
) {
    let folded = rt.aggregate::<P>(account).await.unwrap();
    let stored = model::<P>(rt, account).await;
    let version = rt
        .event_store()
        .stream_version(StreamId::from(account))
        .await
        .unwrap();
    if version == 0 {
        assert_eq!(stored, None, "{}: a model without events", P::NAME);
        return;
    }
    assert_eq!(
        stored.as_ref(),
        Some(&folded.model),
        "{}'s model of {account} is not a fresh fold of its {version} events",
        P::NAME
    );
    let (at, failed, _) = cursor(pool, P::NAME, account).await.expect("a cursor");
    assert_eq!((at as u64, failed), (version, None), "{}'s cursor", P::NAME);
}

fn registry(
    with: impl FnOnce(whizbang_core::RegistryBuilder) -> whizbang_core::RegistryBuilder,
) -> Registry {
    with(Registry::builder().receptors_of::<Teller>())
        .build()
        .unwrap()
}

// ---- tests ----------------------------------------------------------------------------

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_send_returns_with_its_inline_model_and_cursor_written_by_the_append(pool: PgPool) {
    let pg = backend(&pool, options()).await;
    let rt = runtime(&pg, registry(|r| r.perspective::<Balances>()));
    let account = Uuid::now_v7();
    let scope = rt.scope();
    for cents in [5, 7] {
        bounded(scope.send(Deposit { account, cents }))
            .await
            .unwrap();
        // Before complete(): already applied, by the append's own transaction.
        let (event, row, cur) = writers(&pool, "pg_inline.balances", account).await;
        assert_eq!(
            (&row, &cur),
            (&event, &event),
            "one transaction wrote all three"
        );
    }
    assert_eq!(
        model::<Balances>(&rt, account).await,
        Some(Ledger {
            cents: 12,
            deposits: vec![5, 7]
        })
    );
    assert_eq!(
        cursor(&pool, "pg_inline.balances", account).await,
        Some((2, None, None))
    );
    // complete() has nothing left to apply, and the flush claims nothing:
    // the cursor row is not written again.
    let (_, _, before) = writers(&pool, "pg_inline.balances", account).await;
    bounded(scope.complete()).await.unwrap();
    let (_, _, after) = writers(&pool, "pg_inline.balances", account).await;
    assert_eq!(before, after, "the flush wrote the cursor again");
    assert_is_fresh_fold::<Balances>(&rt, &pool, account).await;
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_failing_inline_apply_keeps_the_append_marks_its_cursor_failed_and_others_apply(
    pool: PgPool,
) {
    UNLUCKY.store(true, Ordering::SeqCst);
    let pg = backend(&pool, options()).await;
    let rt = runtime(
        &pg,
        registry(|r| r.perspective::<Picky>().perspective::<Balances>()),
    );
    let account = Uuid::now_v7();
    let scope = rt.scope();
    bounded(scope.send(Deposit { account, cents: 4 }))
        .await
        .unwrap();
    bounded(scope.send(Deposit { account, cents: 13 }))
        .await
        .unwrap();

    // The events are stored, and in the same transaction as the last one the
    // picky cursor was marked failed at it, keeping the model before it.
    let events = rt
        .event_store()
        .read_stream(StreamId::from(account), 0)
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    let (at, failed, message) = cursor(&pool, "pg_inline.picky", account).await.unwrap();
    assert_eq!((at, failed), (1, Some(2)));
    assert!(message.unwrap().contains("13 cents is unlucky"));
    let (event, _, cur) = writers(&pool, "pg_inline.picky", account).await;
    assert_eq!(
        cur, event,
        "the failure is written by the append's transaction"
    );
    assert_eq!(
        model::<Picky>(&rt, account).await,
        Some(Ledger {
            cents: 4,
            deposits: vec![4]
        })
    );
    // The other perspective applied both.
    assert_is_fresh_fold::<Balances>(&rt, &pool, account).await;

    // complete() reports the failure.
    match bounded(scope.complete()).await {
        Err(Error::PerspectiveFailed {
            perspective,
            version,
            message,
            ..
        }) => {
            assert_eq!((perspective, version), ("pg_inline.picky", 2));
            assert!(message.contains("13 cents is unlucky"));
        }
        other => panic!("expected PerspectiveFailed, got {other:?}"),
    }

    // Later sends are stored; the failed cursor stays where it is (a new
    // scope reports it too) until it is retried, which applies everything.
    let scope = rt.scope();
    bounded(scope.send(Deposit { account, cents: 1 }))
        .await
        .unwrap();
    assert!(matches!(
        bounded(scope.complete()).await,
        Err(Error::PerspectiveFailed { .. })
    ));
    assert_eq!(
        cursor(&pool, "pg_inline.picky", account).await.unwrap().0,
        1
    );
    UNLUCKY.store(false, Ordering::SeqCst);
    bounded(rt.retry_perspective::<Picky>(account))
        .await
        .unwrap();
    assert_is_fresh_fold::<Picky>(&rt, &pool, account).await;
    UNLUCKY.store(true, Ordering::SeqCst);
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_tombstone_before_a_failing_event_of_the_same_append_stands(pool: PgPool) {
    let pg = backend(&pool, options()).await;
    let rt = runtime(
        &pg,
        registry(|r| r.receptors_of::<Churner>().perspective::<Closing>()),
    );
    // `fresh`: no model before the append; `stored`: a model from an earlier one.
    let (fresh, stored) = (Uuid::now_v7(), Uuid::now_v7());
    let scope = rt.scope();
    bounded(scope.send(Deposit {
        account: stored,
        cents: 4,
    }))
    .await
    .unwrap();
    assert_eq!(
        model::<Closing>(&rt, stored).await,
        Some(Ledger {
            cents: 4,
            deposits: vec![4]
        })
    );
    bounded(scope.complete()).await.unwrap();

    for (account, before) in [(fresh, 0), (stored, 1)] {
        // One append: deposit 5, close (tombstone), deposit 13 (fails).
        let scope = rt.scope();
        bounded(scope.send(Churn { account, then: 13 }))
            .await
            .unwrap();
        let events = rt
            .event_store()
            .read_stream(StreamId::from(account), 0)
            .await
            .unwrap();
        assert_eq!(events.len(), before + 3, "the append stands");
        let appends: i64 = sqlx::query_scalar(
            "select count(distinct xmin::text) from wh_events
              where stream_id = $1 and stream_version > $2",
        )
        .bind(account)
        .bind(before as i64)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(appends, 1, "the three events are one append");
        // Deleted as of the close (no row, not a `Default` one), the cursor
        // after the close, failed at the deposit after it, all written by
        // the append's transaction.
        assert_eq!(model::<Closing>(&rt, account).await, None, "{account}");
        let row: Option<String> = sqlx::query_scalar(
            "select data::text from wh_perspective_rows
              where perspective = 'pg_inline.closing' and model_key = $1",
        )
        .bind(account)
        .fetch_optional(&pool)
        .await
        .unwrap();
        assert_eq!(row, None, "{account}: a row was left");
        let close = before as i64 + 2;
        let (at, failed, message) = cursor(&pool, "pg_inline.closing", account).await.unwrap();
        assert_eq!((at, failed), (close, Some(close + 1)), "{account}");
        assert!(message.unwrap().contains("13 cents is unlucky"));
        let (event, row, cur) = writers(&pool, "pg_inline.closing", account).await;
        assert_eq!((row.as_str(), cur), ("none", event));
        match bounded(scope.complete()).await {
            Err(Error::PerspectiveFailed {
                perspective,
                version,
                ..
            }) => assert_eq!(
                (perspective, version),
                ("pg_inline.closing", close as u64 + 1)
            ),
            other => panic!("expected PerspectiveFailed, got {other:?}"),
        }
    }
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn the_loser_of_two_appends_at_the_same_version_changes_no_model(pool: PgPool) {
    let pg = backend(&pool, options()).await;
    let rt = runtime(&pg, registry(|r| r.perspective::<Balances>()));
    for round in 0..10 {
        let account = Uuid::now_v7();
        let (a, b) = (rt.scope(), rt.scope());
        let deposit = |cents| Deposited { account, cents };
        let (ra, rb) = tokio::join!(
            bounded(a.publish_expecting(deposit(1), ExpectedVersion::NoStream)),
            bounded(b.publish_expecting(deposit(2), ExpectedVersion::NoStream)),
        );
        let won = match (&ra, &rb) {
            (Ok(_), Err(Error::Concurrency { .. })) => 1,
            (Err(Error::Concurrency { .. }), Ok(_)) => 2,
            other => panic!("round {round}: expected one winner, got {other:?}"),
        };
        assert_eq!(
            model::<Balances>(&rt, account).await,
            Some(Ledger {
                cents: won,
                deposits: vec![won]
            }),
            "round {round}"
        );
        assert_is_fresh_fold::<Balances>(&rt, &pool, account).await;
        bounded(a.complete()).await.unwrap();
        bounded(b.complete()).await.unwrap();
    }
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_send_dropped_at_any_await_leaves_events_and_models_together_or_neither(pool: PgPool) {
    let pg = backend(&pool, options()).await;
    let rt = runtime(
        &pg,
        registry(|r| r.perspective::<Balances>().perspective::<Second>()),
    );
    let accounts: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    // Kept open until the end, so no flush runs behind the check.
    let scope = rt.scope();
    let (mut finished, mut dropped) = (0, 0);
    for i in 0..120u64 {
        let account = accounts[(i % 3) as usize];
        // From "not even started" to "surely finished", in small steps; the
        // last step of each 40 has no real limit, so some finish however
        // slow the machine is.
        let budget = if i % 40 == 39 {
            Duration::from_secs(30)
        } else {
            Duration::from_micros((i % 40) * 150)
        };
        let send = scope.send(Deposit {
            account,
            cents: i as i64 + 1,
        });
        match tokio::time::timeout(budget, send).await {
            Ok(result) => {
                result.unwrap();
                finished += 1;
            }
            Err(_) => dropped += 1,
        }
    }
    assert!(
        finished > 0 && dropped > 0,
        "{finished} finished, {dropped} dropped"
    );
    // A dropped transaction's connection is rolled back before it is reused.
    for account in &accounts {
        assert_is_fresh_fold::<Balances>(&rt, &pool, *account).await;
        assert_is_fresh_fold::<Second>(&rt, &pool, *account).await;
    }
    bounded(scope.complete()).await.unwrap();
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn concurrent_sends_flushes_and_catch_ups_apply_every_event_exactly_once(pool: PgPool) {
    COUNTED.store(0, Ordering::SeqCst);
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime(&pg, registry(|r| r.perspective::<Counted>()));
    let accounts: Arc<Vec<Uuid>> = Arc::new((0..3).map(|_| Uuid::now_v7()).collect());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4i64 {
        let (rt, accounts) = (rt.clone(), Arc::clone(&accounts));
        tasks.spawn(async move {
            for i in 0..20i64 {
                let scope = rt.scope();
                let account = accounts[((t + i) % 3) as usize];
                scope
                    .send(Deposit {
                        account,
                        cents: t * 100 + i,
                    })
                    .await
                    .unwrap();
                scope.complete().await.unwrap();
            }
        });
    }
    // Meanwhile, explicit catch-ups claim the same cursors.
    {
        let (rt, accounts) = (rt.clone(), Arc::clone(&accounts));
        tasks.spawn(async move {
            for i in 0..60usize {
                let stream = StreamId::from(accounts[i % 3]);
                rt.catch_up("pg_inline.counted", stream).await.unwrap();
            }
        });
    }
    bounded(async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    })
    .await;
    // Counted before the checks: a fresh fold applies too.
    assert_eq!(
        COUNTED.load(Ordering::SeqCst),
        80,
        "each event applied once"
    );
    for account in accounts.iter() {
        assert_is_fresh_fold::<Counted>(&rt, &pool, *account).await;
    }
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn with_a_perspective_stage_receptor_inline_perspectives_apply_at_completion_around_it(
    pool: PgPool,
) {
    let pg = backend(&pool, options()).await;
    let rt = runtime(
        &pg,
        registry(|r| r.receptors_of::<Inspector>().perspective::<Third>()),
    );
    let account = Uuid::now_v7();
    let scope = rt.scope();
    bounded(scope.send(Deposit { account, cents: 9 }))
        .await
        .unwrap();
    // Not applied by the append: the stage must run first.
    assert_eq!(model::<Third>(&rt, account).await, None);
    assert!(!INSPECTED.lock().unwrap().contains(&9));
    bounded(scope.complete()).await.unwrap();
    assert!(INSPECTED.lock().unwrap().contains(&9));
    assert_is_fresh_fold::<Third>(&rt, &pool, account).await;
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn an_inline_perspective_added_later_folds_the_older_events_in_the_next_append(pool: PgPool) {
    let pg = backend(&pool, options()).await;
    // Events appended by a build without the perspective ..
    let before = runtime(&pg, registry(|r| r.perspective::<Balances>()));
    let account = Uuid::now_v7();
    for cents in [1, 2, 3] {
        let scope = before.scope();
        bounded(scope.send(Deposit { account, cents }))
            .await
            .unwrap();
        bounded(scope.complete()).await.unwrap();
    }
    assert_eq!(cursor(&pool, "pg_inline.fourth", account).await, None);
    // .. are folded, in order, by the first append of a build with it.
    let after = runtime(
        &pg,
        registry(|r| r.perspective::<Balances>().perspective::<Fourth>()),
    );
    let scope = after.scope();
    bounded(scope.send(Deposit { account, cents: 4 }))
        .await
        .unwrap();
    assert_eq!(
        model::<Fourth>(&after, account).await,
        Some(Ledger {
            cents: 10,
            deposits: vec![1, 2, 3, 4]
        })
    );
    assert_is_fresh_fold::<Fourth>(&after, &pool, account).await;
    bounded(scope.complete()).await.unwrap();
    drop(before);
    shut_down(after, pg).await;
}

/// An append's wake-ups reach the channels of the service's schema once
/// each when it commits: a listener that hears the applied notification of
/// an inline perspective already reads the model it names, and the events
/// notification names the stream's partition.
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn an_inline_append_wakes_the_schema_channels_once_each_at_commit(pool: PgPool) {
    let pg = backend(&pool, options().schema("ledger")).await;
    bounded(pg.migrate()).await.unwrap();
    let rt = runtime(&pg, registry(|r| r.perspective::<Balances>()));
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener
        .listen_all(["whizbang_events.ledger", "whizbang_applied.ledger"])
        .await
        .unwrap();
    let account = Uuid::now_v7();
    bounded(rt.scope().send(Deposit { account, cents: 9 }))
        .await
        .unwrap();
    let mut heard = Vec::new();
    for _ in 0..2 {
        let n = bounded(listener.recv()).await.unwrap();
        if n.channel() == "whizbang_applied.ledger" {
            // The model is committed before the wake-up is sent.
            assert_eq!(
                model::<Balances>(&rt, account).await,
                Some(Ledger {
                    cents: 9,
                    deposits: vec![9]
                })
            );
        }
        heard.push((n.channel().to_owned(), n.payload().to_owned()));
    }
    heard.sort();
    assert_eq!(heard.len(), 2);
    assert_eq!(heard[0].0, "whizbang_applied.ledger");
    assert_eq!(heard[0].1, format!("1 {account} pg_inline.balances"));
    assert_eq!(heard[1].0, "whizbang_events.ledger");
    let partition: i16 = sqlx::query_scalar("select partition from ledger.wh_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(heard[1].1, partition.to_string());
    // Nothing else on either channel for this one append.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv())
            .await
            .is_err(),
        "one notification per channel"
    );
    shut_down(rt, pg).await;
}

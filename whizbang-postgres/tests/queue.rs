//! The core's queue conformance suite on PostgreSQL: every contract of
//! `whizbang_core::queue` against `PgMessageQueue`, each in a fresh, migrated
//! database (`#[sqlx::test]`), on the database's clock; plus what only the
//! PostgreSQL queue shows (its schema, its statements' plans, many
//! connections racing).

mod support;

use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use support::bounded;
use whizbang_core::backend::conformance::queue::QueueUnderTest;
use whizbang_core::queue::{EnqueueOutcome, MessageQueue, QueueOptions, QueuedMessage};
use whizbang_core::{Error, InstanceId};
use whizbang_postgres::PgMessageQueue;

/// The contracts' unit of time on the database clock: well above what one
/// statement takes on a loaded machine, so "before expiry" stays before it.
const TICK: Duration = Duration::from_millis(400);

/// The retry backoff the contracts run with: well below a tick (short
/// leases expire in a tick). `a_failed_message_waits_its_backoff_on_the_database_clock`
/// tests the backoff itself.
fn contract_options() -> QueueOptions {
    QueueOptions::default().retry_backoff(Duration::from_millis(20), Duration::from_millis(40))
}

fn fixture(pool: PgPool) -> QueueUnderTest {
    QueueUnderTest::real_time(PgMessageQueue::with_options(pool, contract_options()), TICK)
}

macro_rules! pg_queue_contracts {
    (; $($contract:ident),* $(,)?) => {
        $(
            #[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
            async fn $contract(pool: PgPool) {
                let factory = move || {
                    let pool = pool.clone();
                    async move { fixture(pool) }
                };
                tokio::time::timeout(
                    Duration::from_secs(60),
                    whizbang_core::backend::conformance::queue::$contract(&factory),
                )
                .await
                .expect("the contract finished within 60 s");
            }
        )*
    };
}

whizbang_core::queue_contracts!(pg_queue_contracts!());

/// The attempt-limit contracts with a limit of one (every lease is the last).
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn the_attempt_limit_contracts_hold_with_a_limit_of_one(pool: PgPool) {
    use whizbang_core::backend::conformance::queue as contracts;
    // The two contracts share the database: each starts on empty tables.
    let factory = move || {
        let pool = pool.clone();
        async move {
            sqlx::query("truncate wh_message_queue, wh_processed_messages, wh_dead_letters")
                .execute(&pool)
                .await
                .expect("empty the queue tables");
            QueueUnderTest::real_time(
                PgMessageQueue::with_options(pool, contract_options().max_attempts(1)),
                TICK,
            )
        }
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        contracts::failing_at_the_attempt_limit_dead_letters_the_message_with_its_error(&factory)
            .await;
        contracts::expired_leases_count_as_attempts_and_dead_letter_at_the_limit(&factory).await;
    })
    .await
    .expect("the contracts finished within 60 s");
}

/// Many connections enqueueing the same ids and completing them at once:
/// every id is leased once and processed once, whatever interleaving the
/// server picks (the race `wh_enqueue_and_lease` closes).
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn redeliveries_racing_completes_never_lease_a_processed_id(pool: PgPool) {
    let queue = Arc::new(PgMessageQueue::new(pool));
    let messages: Vec<QueuedMessage> = (0..50)
        .map(|i| QueuedMessage::from_json("race.test", &format!("{{\"n\":{i}}}")).expect("JSON"))
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (queue, messages) = (Arc::clone(&queue), messages.clone());
        tasks.push(tokio::spawn(async move {
            let me = InstanceId::new();
            let mut handled = Vec::new();
            for m in messages {
                let id = m.id;
                match queue
                    .enqueue_and_lease(m, me, Duration::from_secs(60))
                    .await
                    .expect("enqueue")
                {
                    EnqueueOutcome::Leased(_) => {
                        queue.complete(id, me, "race").await.expect("complete");
                        handled.push(id);
                    }
                    EnqueueOutcome::AlreadyQueued | EnqueueOutcome::AlreadyProcessed => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            handled
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(bounded(t).await.expect("task"));
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "an id was leased and completed twice");
    assert_eq!(all.len(), messages.len(), "every id was handled once");
}

/// The schema: three tables, the leasable index on `available_at`, and the
/// next-leasable statement uses it.
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn the_queue_tables_and_the_leasable_index_exist(pool: PgPool) {
    let tables: Vec<String> = sqlx::query_scalar(
        "select tablename::text from pg_tables
          where tablename in ('wh_message_queue', 'wh_processed_messages', 'wh_dead_letters')
          order by 1",
    )
    .fetch_all(&pool)
    .await
    .expect("list tables");
    assert_eq!(
        tables,
        [
            "wh_dead_letters",
            "wh_message_queue",
            "wh_processed_messages"
        ]
    );
    let index: String =
        sqlx::query_scalar("select pg_get_indexdef('wh_message_queue_available_idx'::regclass)")
            .fetch_one(&pool)
            .await
            .expect("the index exists");
    assert!(index.contains("(available_at, message_id)"), "{index}");
    // With enough rows that a scan would cost more, the planner reads the index.
    sqlx::query(
        "insert into wh_message_queue
             (message_id, message_type, payload, correlation_id, enqueued_at, status,
              lease_owner, available_at, attempts)
         select gen_random_uuid(), 'plan.test', '{}', gen_random_uuid(), now(), 'leased',
                gen_random_uuid(), now() + interval '1 hour', 1
           from generate_series(1, 5000)",
    )
    .execute(&pool)
    .await
    .expect("seed");
    sqlx::query("analyze wh_message_queue")
        .execute(&pool)
        .await
        .expect("analyze");
    let plan: Vec<String> = sqlx::query_scalar(
        "explain select message_id from wh_message_queue where available_at <= now()
          order by available_at, message_id limit 10 for update skip locked",
    )
    .fetch_all(&pool)
    .await
    .expect("explain");
    let plan = plan.join("\n");
    assert!(
        plan.contains("wh_message_queue_available_idx"),
        "the next-leasable scan must use the index:\n{plan}"
    );
}

/// A payload PostgreSQL's jsonb refuses (a lone surrogate escape) is a typed
/// input error, and nothing is queued.
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_payload_jsonb_refuses_is_invalid_input(pool: PgPool) {
    let queue = PgMessageQueue::new(pool);
    let Ok(m) = QueuedMessage::from_json("surrogate.test", r#"{"s":"\ud800"}"#) else {
        return; // serde_json refused it first: also a typed error
    };
    let r = bounded(queue.enqueue_and_lease(m, InstanceId::new(), Duration::from_secs(5))).await;
    assert!(matches!(r, Err(Error::InvalidInput(_))), "{r:?}");
    let left = bounded(queue.lease_orphaned(InstanceId::new(), 10, Duration::from_secs(5)))
        .await
        .expect("lease");
    assert!(left.is_empty());
}

/// The backend hands out the queue on its pool.
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn the_backend_hands_out_its_queue(pool: PgPool) {
    let pg = support::backend(&pool, support::fast_options().runner(false)).await;
    let queue = pg.message_queue_with(QueueOptions::default().max_attempts(2));
    assert_eq!(queue.options().max_attempts, 2);
    let me = InstanceId::from(pg.instance_id());
    let m = QueuedMessage::from_json("backend.queue", "[1,2]").expect("JSON");
    let id = m.id;
    let r = bounded(queue.enqueue_and_lease(m, me, Duration::from_secs(5)))
        .await
        .expect("enqueue");
    assert!(matches!(r, EnqueueOutcome::Leased(_)));
    bounded(pg.message_queue().complete(id, me, "h"))
        .await
        .expect("complete through another handle");
    pg.close().await;
}

/// Waits (bounded) until some backend waits on a lock.
async fn until_a_backend_waits_on_a_lock(pool: &PgPool) {
    bounded(async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                  where datname = current_database() and wait_event_type = 'Lock'",
            )
            .fetch_one(pool)
            .await
            .expect("read pg_stat_activity");
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The race `wh_enqueue_and_lease` closes, made deterministic: a complete
/// (or a dead-lettering) of an id holds its transaction open; a redelivery
/// of the id blocks on the queue row; the complete commits. The redelivery
/// must answer AlreadyProcessed (DeadLettered), not lease the id again.
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_redelivery_blocked_on_a_committing_complete_is_refused(pool: PgPool) {
    let queue = Arc::new(PgMessageQueue::new(pool.clone()));
    let me = InstanceId::new();
    for (finish, expected) in [
        (
            "with done as (delete from wh_message_queue where message_id = $1 returning message_id)
             insert into wh_processed_messages (message_id, handler) select message_id, 'h' from done",
            EnqueueOutcome::AlreadyProcessed,
        ),
        (
            "with dead as (delete from wh_message_queue where message_id = $1 returning *)
             insert into wh_dead_letters (message_id, message_type, payload, correlation_id,
                                          causation_id, headers, enqueued_at, attempts, error)
             select message_id, message_type, payload, correlation_id, causation_id, headers,
                    enqueued_at, attempts, 'poison' from dead",
            EnqueueOutcome::DeadLettered,
        ),
    ] {
        let m = QueuedMessage::from_json("race.blocked", "{}").expect("JSON");
        let id = m.id;
        let first = bounded(queue.enqueue_and_lease(m.clone(), me, Duration::from_secs(60)))
            .await
            .expect("enqueue");
        assert!(matches!(first, EnqueueOutcome::Leased(_)));

        let mut tx = pool.begin().await.expect("begin");
        sqlx::query(finish)
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .expect("finish the message, uncommitted");
        let redelivery = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                queue
                    .enqueue_and_lease(m, InstanceId::new(), Duration::from_secs(60))
                    .await
            })
        };
        until_a_backend_waits_on_a_lock(&pool).await;
        tx.commit().await.expect("commit");
        let answer = bounded(redelivery)
            .await
            .expect("the task ran")
            .expect("enqueue");
        assert_eq!(
            answer, expected,
            "a redelivery that waited on the finishing transaction must see its outcome"
        );
        let queued: i64 =
            sqlx::query_scalar("select count(*) from wh_message_queue where message_id = $1")
                .bind(id.as_uuid())
                .fetch_one(&pool)
                .await
                .expect("count");
        assert_eq!(queued, 0, "the redelivery took its insert back");
    }
}

/// A failed attempt's message is not leasable before its backoff (base,
/// doubled per attempt, capped) on the database's clock, and is after it;
/// the tick's failures wait the same backoff.
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_failed_message_waits_its_backoff_on_the_database_clock(pool: PgPool) {
    use whizbang_core::queue::{FailOutcome, TickRequest};
    let base = Duration::from_millis(300);
    let options = QueueOptions::default()
        .max_attempts(10)
        .retry_backoff(base, Duration::from_millis(600));
    let queue = PgMessageQueue::with_options(pool, options);
    let me = InstanceId::new();
    let lease = Duration::from_secs(60);
    let m = QueuedMessage::from_json("pg_queue.flaky", "{}").unwrap();
    bounded(queue.enqueue_and_lease(m.clone(), me, lease))
        .await
        .unwrap();
    // Attempt 1 waits 300 ms, attempt 2 600 ms, attempt 3 the 600 ms cap;
    // attempt 3 fails through a tick.
    for (attempt, wait) in [(1u32, 300u64), (2, 600), (3, 600)] {
        let failed_at = std::time::Instant::now();
        if attempt < 3 {
            let outcome = bounded(queue.fail(m.id, me, "flaky")).await.unwrap();
            assert_eq!(outcome, FailOutcome::Retry { attempts: attempt });
        } else {
            let response =
                bounded(queue.tick(me, TickRequest::lease(0, lease).fail(m.id, "flaky")))
                    .await
                    .unwrap();
            assert_eq!(
                response.failed,
                [(m.id, FailOutcome::Retry { attempts: 3 })]
            );
        }
        let early = bounded(queue.lease_orphaned(me, 10, lease)).await.unwrap();
        assert!(
            early.is_empty() || failed_at.elapsed() >= Duration::from_millis(wait),
            "attempt {attempt}: leased again before its backoff of {wait} ms"
        );
        tokio::time::sleep(Duration::from_millis(wait + 50)).await;
        let again = bounded(queue.lease_orphaned(me, 10, lease)).await.unwrap();
        assert_eq!(
            again.len(),
            1,
            "attempt {attempt}: leasable after {wait} ms"
        );
        assert_eq!(again[0].attempt, attempt + 1);
        assert_eq!(again[0].last_error.as_deref(), Some("flaky"));
    }
}

/// One tick (one SQL call) completes, fails, renews, leases and measures the
/// lag; ids the instance does not hold come back lost, change nothing and do
/// not stop the rest.
#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_tick_does_a_workers_round_in_one_call_and_answers_lost_ids(pool: PgPool) {
    use whizbang_core::queue::{FailOutcome, TickRequest};
    let options = QueueOptions::default().max_attempts(2);
    let queue = PgMessageQueue::with_options(pool.clone(), options);
    let (me, other) = (InstanceId::new(), InstanceId::new());
    let lease = Duration::from_secs(60);
    let mut ids = Vec::new();
    for i in 0..5 {
        let m = QueuedMessage::from_json("pg_queue.tick", &format!("{{\"i\":{i}}}")).unwrap();
        ids.push(m.id);
        bounded(queue.enqueue_and_lease(m, me, lease))
            .await
            .unwrap();
    }
    // ids[4] is on its second (last) attempt: its failure dead-letters it.
    bounded(queue.release(&[ids[4]], me)).await.unwrap();
    sqlx::query("update wh_message_queue set attempts = 1 where message_id = $1")
        .bind(ids[4].as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    let taken = bounded(queue.lease_orphaned(me, 10, lease)).await.unwrap();
    assert_eq!(taken.len(), 1);
    let stranger = QueuedMessage::from_json("pg_queue.tick", "{}").unwrap();
    bounded(queue.enqueue_and_lease(stranger.clone(), other, lease))
        .await
        .unwrap();
    let waiting: Vec<QueuedMessage> = (0..3)
        .map(|i| QueuedMessage::from_json("pg_queue.tick", &format!("{{\"w\":{i}}}")).unwrap())
        .collect();
    for m in &waiting {
        bounded(queue.enqueue_and_lease(m.clone(), other, Duration::from_millis(1)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;

    let response = bounded(
        queue.tick(
            me,
            TickRequest::lease(2, lease)
                .complete(ids[0], "tick-handler")
                .fail(ids[1], "boom")
                .fail(ids[4], "poison")
                .renew([ids[2], ids[3], stranger.id])
                .measure_lag(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.completed, [ids[0]]);
    let mut failed = response.failed.clone();
    failed.sort_by_key(|(id, _)| *id);
    let mut want = vec![
        (ids[1], FailOutcome::Retry { attempts: 1 }),
        (ids[4], FailOutcome::DeadLettered { attempts: 2 }),
    ];
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(failed, want);
    assert_eq!(
        response.lost,
        [stranger.id],
        "a lease it does not hold is lost"
    );
    let mut renewed = response.renewed.clone();
    renewed.sort();
    let mut held = vec![ids[2], ids[3]];
    held.sort();
    assert_eq!(renewed, held, "the held leases are renewed anyway");
    assert!(response.renewed_until.is_some());
    assert_eq!(
        response.leased.len(),
        2,
        "two of the three expired leases are taken"
    );
    let lag = response.lag.expect("the lag was measured");
    assert_eq!(lag.depth, 1, "one expired lease is left leasable");
    assert!(
        lag.oldest > Duration::ZERO && lag.oldest < Duration::from_secs(30),
        "{lag:?}"
    );

    let record = bounded(queue.processed(ids[0])).await.unwrap().unwrap();
    assert_eq!(record.handler, "tick-handler");
    let dead = bounded(queue.dead_letters(10)).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].message.id, dead[0].error.as_str()),
        (ids[4], "poison")
    );
    let owner: Option<uuid::Uuid> =
        sqlx::query_scalar("select lease_owner from wh_message_queue where message_id = $1")
            .bind(stranger.id.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(owner, Some(other.as_uuid()), "the lost id was not changed");

    // Sent again (an earlier tick recorded it), a completion is lost; an idle
    // tick changes nothing and measures the lag.
    let again = bounded(queue.tick(me, TickRequest::lease(0, lease).complete(ids[0], "h")))
        .await
        .unwrap();
    assert_eq!(again.lost, [ids[0]]);
    let idle = bounded(queue.tick(
        InstanceId::new(),
        TickRequest::lease(0, lease).measure_lag(),
    ))
    .await
    .unwrap();
    assert_eq!(idle.lag.map(|l| l.depth), Some(1));
    assert!(idle.leased.is_empty() && idle.completed.is_empty());
    let lag = bounded(queue.lag()).await.unwrap().unwrap();
    assert_eq!(lag.depth, 1);
}

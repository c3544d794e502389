//! Two services, two processes, one database, no broker.
//!
//! `pg_service billing` and `pg_service orders` each keep their tables in
//! their own schema (`billing`, `orders`) of one fresh database. Orders'
//! command emits `orders.order_placed` (`#[event(publish)]`): its append
//! writes the outbox row in the same transaction; orders' outbox publisher
//! delivers it through the PostgreSQL transport into billing's inbox queue;
//! billing's inbox worker hands it to billing's receptor (which opens one
//! invoice, appended atomically with the received event) and billing's
//! `billing.receivables` perspective applies it. The caller in orders waits
//! for billing's perspective by the event id and gets `Synced`.
//!
//! The second case SIGKILLs orders' publisher process repeatedly while it
//! publishes (each publish is slowed after its delivery committed, so kills
//! land between "the broker accepted it" and "marked published"): every
//! event is delivered at least once and handled exactly once in effect.
//!
//! Both count what was lost (an order with no invoice, no processed record
//! or no receivable) and what was duplicated (an order with two invoices or
//! stored twice in billing); both must be zero.

use std::process::Command;
use std::time::{Duration, Instant};
use whizbang_tests::pg::cluster::Member;
use whizbang_tests::pg::db::FreshDb;
use whizbang_tests::process::field;

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(90);
const PROGRAM: &str = env!("CARGO_BIN_EXE_pg_service");

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

/// Runs `f` (which blocks on child processes) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    bounded(tokio::task::spawn_blocking(f))
        .await
        .expect("the blocking step panicked")
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(PROGRAM);
    cmd.args(args);
    cmd
}

/// Starts billing and waits until it is ready.
async fn start_billing(url: &str) -> Member {
    let url = url.to_owned();
    blocking(move || {
        let mut billing = Member::spawn(command(&["billing", &url]));
        billing
            .wait_line(|l| l == "ready", BOUND)
            .unwrap_or_else(|e| panic!("billing never got ready: {e}"));
        billing
    })
    .await
}

/// Stops billing cleanly (stdin closed) and checks it exited well.
async fn stop(mut member: Member) {
    blocking(move || {
        member.close_stdin();
        let status = member
            .wait_timeout(BOUND)
            .expect("it exits once stdin closes");
        assert!(status.success(), "exited with {status}");
    })
    .await;
}

/// What billing and orders hold at the end, counted per order.
#[derive(Debug, PartialEq, Eq)]
struct Tally {
    /// Outbound events orders stored.
    sent: i64,
    /// Of those, outbox rows marked published.
    published: i64,
    /// Orders billing stored (the received event), counting duplicates.
    received: i64,
    /// Distinct orders billing stored.
    received_distinct: i64,
    /// Invoices billing opened, and for how many distinct orders.
    invoices: i64,
    invoiced_distinct: i64,
    /// Processed records in billing's inbox.
    processed: i64,
    /// Orders in billing's receivables perspective (sum of its counts) and
    /// the amounts it summed against orders' own sum.
    receivable_orders: i64,
    amounts_match: bool,
    /// Orders sent that billing never stored.
    lost: i64,
    /// Publish attempts beyond one per row (rows taken over from a killed
    /// publisher, or published again after a kill before their mark).
    extra_attempts: i64,
}

async fn tally(db: &FreshDb) -> Tally {
    let extra_attempts: i64 = bounded(
        sqlx::query_scalar(
            "select coalesce(sum(attempts - 1), 0)::int8 from orders.wh_outbox where attempts > 0",
        )
        .fetch_one(&db.pool),
    )
    .await
    .unwrap();
    let row: (i64, i64, i64, i64, i64, i64, i64, i64, bool, i64) = bounded(
        sqlx::query_as(
            "select
                (select count(*) from orders.wh_events where event_type = 'orders.order_placed'),
                (select count(*) from orders.wh_outbox where status = 'published'),
                (select count(*) from billing.wh_events where event_type = 'orders.order_placed'),
                (select count(distinct stream_id) from billing.wh_events
                  where event_type = 'orders.order_placed'),
                (select count(*) from billing.wh_events where event_type = 'billing.invoice_opened'),
                (select count(distinct data->>'order') from billing.wh_events
                  where event_type = 'billing.invoice_opened'),
                (select count(*) from billing.wh_processed_messages),
                (select coalesce(sum((data->>'orders')::int8), 0)::int8
                   from billing.wh_perspective_rows where perspective = 'billing.receivables'),
                (select coalesce(sum((data->>'amount')::int8), 0) from billing.wh_perspective_rows
                  where perspective = 'billing.receivables')
                  = (select coalesce(sum((data->>'amount')::int8), 0) from orders.wh_events
                      where event_type = 'orders.order_placed'),
                (select count(*) from orders.wh_events o
                  where o.event_type = 'orders.order_placed'
                    and not exists (select 1 from billing.wh_events b where b.event_id = o.event_id))",
        )
        .fetch_one(&db.pool),
    )
    .await
    .unwrap();
    Tally {
        sent: row.0,
        published: row.1,
        received: row.2,
        received_distinct: row.3,
        invoices: row.4,
        invoiced_distinct: row.5,
        processed: row.6,
        receivable_orders: row.7,
        amounts_match: row.8,
        lost: row.9,
        extra_attempts,
    }
}

/// Every order sent was received, invoiced, recorded and applied exactly once.
fn assert_exactly_once(t: &Tally, n: i64) {
    assert_eq!(t.sent, n, "{t:?}");
    assert_eq!(t.lost, 0, "orders lost: {t:?}");
    assert_eq!(
        (t.received, t.received_distinct),
        (n, n),
        "stored once each in billing: {t:?}"
    );
    assert_eq!(
        (t.invoices, t.invoiced_distinct),
        (n, n),
        "one invoice per order (duplicated effects = {}): {t:?}",
        t.invoices - t.invoiced_distinct
    );
    assert_eq!(t.processed, n, "{t:?}");
    assert_eq!(t.receivable_orders, n, "{t:?}");
    assert!(t.amounts_match, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_command_leaves_through_the_outbox_billing_applies_it_and_orders_waits_for_it() {
    const N: i64 = 40;
    let db = bounded(FreshDb::create()).await;
    let billing = start_billing(&db.url).await;

    let url = db.url.clone();
    let lines = blocking(move || {
        let mut orders = Member::spawn(command(&["orders", &url, &N.to_string(), "yes"]));
        orders
            .wait_line(|l| l == "finished", BOUND)
            .unwrap_or_else(|e| panic!("orders never finished: {e}"));
        let status = orders.wait_timeout(BOUND).expect("orders exits");
        assert!(status.success(), "orders exited with {status}");
        orders.lines().to_vec()
    })
    .await;

    // Every wait in orders for billing's perspective ended Synced.
    let synced: Vec<&String> = lines.iter().filter(|l| l.starts_with("synced ")).collect();
    assert_eq!(synced.len(), N as usize, "{lines:?}");
    for line in &synced {
        assert!(line.contains("outcome=Synced"), "{line}");
    }
    let mut elapsed: Vec<u64> = synced.iter().map(|l| field(l, "elapsed_ms")).collect();
    elapsed.sort_unstable();
    eprintln!(
        "wait for billing's perspective: p50 {} ms, max {} ms",
        elapsed[elapsed.len() / 2],
        elapsed[elapsed.len() - 1]
    );

    stop(billing).await;
    let t = tally(&db).await;
    assert_exactly_once(&t, N);
    assert_eq!(t.published, N, "{t:?}");
    assert_eq!(t.extra_attempts, 0, "nothing was published twice: {t:?}");
    bounded(db.drop_now()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_publishers_lose_nothing_and_billing_handles_each_event_once() {
    const N: i64 = 150;
    const KILLS: usize = 6;
    let db = bounded(FreshDb::create()).await;
    let billing = start_billing(&db.url).await;

    // Orders appends N outbound events (no publisher in this process).
    let url = db.url.clone();
    blocking(move || {
        let mut orders = Member::spawn(command(&["orders", &url, &N.to_string(), "no"]));
        orders
            .wait_line(|l| l == "finished", BOUND)
            .unwrap_or_else(|e| panic!("orders never finished: {e}"));
        let status = orders.wait_timeout(BOUND).expect("orders exits");
        assert!(status.success(), "orders exited with {status}");
    })
    .await;

    // Publisher processes, each SIGKILLed a while after it started, mid-publish.
    let url = db.url.clone();
    let kills = blocking(move || {
        let mut kills = 0;
        let started = Instant::now();
        while kills < KILLS {
            let mut publisher = Member::spawn(command(&["publisher", &url, "15"]));
            publisher
                .wait_line(|l| l == "ready", BOUND)
                .unwrap_or_else(|e| panic!("publisher never got ready: {e}"));
            // Between 100 and 350 ms of publishing (each publish takes 15 ms+).
            let pause = 100 + (kills as u64 * 53) % 250;
            std::thread::sleep(Duration::from_millis(pause));
            publisher.kill();
            publisher
                .wait_timeout(BOUND)
                .expect("a killed publisher is reaped");
            kills += 1;
            assert!(started.elapsed() < BOUND, "the kill loop took too long");
        }
        kills
    })
    .await;
    assert_eq!(kills, KILLS);
    let before_last = tally(&db).await;
    assert!(
        before_last.published < N,
        "the kills landed before everything was published: {before_last:?}"
    );

    // A last publisher finishes the work (after the killed ones' leases expire).
    let url = db.url.clone();
    blocking(move || {
        let mut publisher = Member::spawn(command(&["publisher", &url, "0"]));
        publisher
            .wait_line(|l| l == "idle", BOUND)
            .unwrap_or_else(|e| panic!("the last publisher never drained the outbox: {e}"));
        publisher.close_stdin();
        let status = publisher.wait_timeout(BOUND).expect("it exits");
        assert!(status.success(), "the last publisher exited with {status}");
    })
    .await;

    // Billing catches up on what was delivered.
    let deadline = Instant::now() + BOUND;
    loop {
        let t = tally(&db).await;
        if t.processed >= N && t.receivable_orders >= N {
            break;
        }
        assert!(Instant::now() < deadline, "billing never caught up: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(billing).await;
    let t = tally(&db).await;
    eprintln!("after {KILLS} kills: {t:?}");
    assert_exactly_once(&t, N);
    assert_eq!(t.published, N, "{t:?}");
    assert!(
        t.extra_attempts > 0,
        "the kills forced publishes to be taken over: {t:?}"
    );
    bounded(db.drop_now()).await.unwrap();
}

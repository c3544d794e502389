//! SIGKILL runner processes of a keyed perspective, again and again, while
//! orders keep flowing; then every customer's model is a fresh fold of its
//! events, and a wait on the perspective ends Synced only once the model
//! reflects the awaited event.
//!
//! Two `pg_keyed_runner` children (1 s leases, feed batches of 50) apply
//! `pg_keyed_totals!`'s `KeyedTotals` (customer totals, one cursor over the
//! store's global order) while the test appends from its own process (which
//! applies nothing): every 100 ms a round of 80 orders spread over 400 order
//! streams of 100 customers, 20 streams per transaction, each event with an
//! amount no other event has. The test kills one runner at a time with
//! SIGKILL once it reported a few commits and stored events lie beyond the
//! cursor (work in hand), 10 times, alternating, and starts a new one in its
//! place.
//!
//! Read-your-writes, from a third runtime in the test process (runner off,
//! in-process runner paused): an order of a probe customer nobody else
//! orders for, published before any runner starts, times out and its model
//! is absent; once the runners run, the same wait ends Synced and the model
//! holds the order. After every third kill another probe order is published
//! and awaited: Synced, and the model already holds every probe order.
//!
//! At the end (appends stopped, a last probe Synced, the cursor on the last
//! event of the order, runners stopped cleanly): every stored event is in
//! the global order once, the cursor is not failed, every customer's stored
//! model equals a fresh fold of its events (count, sum and sum of squares of
//! unique amounts: nothing lost, nothing applied twice), and no event id was
//! reported by two commits, counting the killed runners' lines too.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::backend::{EventStore as _, StreamAppend};
use whizbang_core::perspective::KEYED_CURSOR;
use whizbang_core::{ExpectedVersion, Registry, Runtime, StreamId, SyncFilter, SyncOutcome};
use whizbang_postgres::{PgEventStore, Postgres, PostgresOptions};
use whizbang_tests::pg::cluster::{Cluster, WaitError};
use whizbang_tests::pg::db::FreshDb;

whizbang_tests::pg_keyed_totals!();

/// No step of this test may take longer than this (the snapshot horizon is
/// the server's: another test's open transaction holds events back).
const BOUND: Duration = Duration::from_secs(60);
const RUNNERS: usize = 2;
const CUSTOMERS: usize = 100;
const ORDERS: usize = 400;
const PER_ROUND: usize = 80;
const PER_TX: usize = 20;
/// Between append rounds.
const PACE: Duration = Duration::from_millis(100);
/// Rounds appended at most (the backlog stays bounded). Generous: while
/// another test's transaction holds the server's horizon back, nothing is
/// numbered or applied but the rounds go on (20 s of that were seen).
const MAX_ROUNDS: u64 = 1500;
const KILLS: usize = 10;
const LEASE: Duration = Duration::from_secs(1);
const BATCH: u32 = 50;
/// Probe amounts start here, far above the appender's.
const PROBE_BASE: u64 = 1_000_000_000;
const PROGRAM: &str = env!("CARGO_BIN_EXE_pg_keyed_runner");

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("finished within the bound")
}

/// Orders appended in the background, round after round, until stopped.
struct Appender {
    running: Arc<AtomicBool>,
    /// Events appended (acknowledged) so far.
    appended: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl Appender {
    fn start(store: PgEventStore, customers: Vec<Uuid>) -> Appender {
        let running = Arc::new(AtomicBool::new(true));
        let appended = Arc::new(AtomicU64::new(0));
        let (go, count) = (running.clone(), appended.clone());
        let task = tokio::spawn(async move {
            // Order i belongs to customer i % CUSTOMERS; its head version.
            let orders: Vec<(Uuid, Uuid)> = (0..ORDERS)
                .map(|i| (Uuid::now_v7(), customers[i % CUSTOMERS]))
                .collect();
            let mut heads = vec![0u64; ORDERS];
            let mut amount = 0u64;
            let mut rounds = 0;
            while go.load(Ordering::SeqCst) && rounds < MAX_ROUNDS {
                let first = usize::try_from(rounds).expect("fits") * PER_ROUND % ORDERS;
                let picked: Vec<usize> = (0..PER_ROUND).map(|k| (first + k) % ORDERS).collect();
                for chunk in picked.chunks(PER_TX) {
                    let appends = chunk
                        .iter()
                        .map(|&i| {
                            amount += 1;
                            let (order, customer) = orders[i];
                            StreamAppend {
                                stream_id: StreamId::from(order),
                                expected: match heads[i] {
                                    0 => ExpectedVersion::NoStream,
                                    v => ExpectedVersion::Exact(v),
                                },
                                events: vec![order_placed(order, customer, amount)],
                            }
                        })
                        .collect();
                    tokio::time::timeout(BOUND, store.append(appends))
                        .await
                        .expect("an append finished within the bound")
                        .unwrap_or_else(|e| panic!("append round {}: {e}", rounds + 1));
                    for &i in chunk {
                        heads[i] += 1;
                    }
                    count.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
                rounds += 1;
                tokio::time::sleep(PACE).await;
            }
            rounds
        });
        Appender {
            running,
            appended,
            task,
        }
    }

    /// Stops after the round in flight; the events appended.
    async fn stop(self) -> u64 {
        self.running.store(false, Ordering::SeqCst);
        let rounds = bounded(self.task).await.expect("the appender panicked");
        assert!(
            rounds < MAX_ROUNDS,
            "the orders stopped flowing before the kills were over"
        );
        self.appended.load(Ordering::SeqCst)
    }
}

/// The test's own runtime: it publishes probe orders and waits on them; it
/// applies nothing (runner off, in-process runner paused).
struct Prober {
    rt: Runtime,
    customer: Uuid,
    /// Probe orders published so far.
    sent: u64,
}

impl Prober {
    /// The model the probe customer must have once every probe is applied.
    fn expected(&self) -> CustomerTotals {
        let mut m = CustomerTotals::default();
        for k in 1..=self.sent {
            m.add(PROBE_BASE + k);
        }
        m
    }

    async fn model(&self) -> Option<CustomerTotals> {
        self.rt
            .lens::<KeyedTotals>()
            .get_by_key(self.customer)
            .await
            .expect("the lens reads")
    }

    /// Publishes the next probe order and waits on it for `timeout`: the
    /// outcome, and the probe customer's model read right after.
    async fn probe(&mut self, timeout: Duration) -> (SyncOutcome, Option<CustomerTotals>) {
        self.sent += 1;
        let scope = self.rt.scope();
        bounded(scope.publish(OrderPlaced {
            order: Uuid::now_v7(),
            customer: self.customer,
            amount: PROBE_BASE + self.sent,
        }))
        .await
        .expect("the probe order is stored");
        let waited = bounded(
            scope
                .sync_awaiter()
                .wait::<KeyedTotals>(SyncFilter::current_scope().with_timeout(timeout)),
        )
        .await
        .expect("the wait answers");
        let model = self.model().await;
        bounded(scope.complete())
            .await
            .expect("the scope completes");
        (waited.outcome, model)
    }

    /// A probe that must end Synced with the model reflecting it.
    async fn read_your_writes(&mut self, when: &str) {
        let (outcome, model) = self.probe(BOUND).await;
        assert_eq!(outcome, SyncOutcome::Synced, "{when}");
        assert_eq!(
            model,
            Some(self.expected()),
            "{when}: the wait ended Synced, so the model reflects every probe order"
        );
    }
}

/// The keyed cursor's position and failure, and how many events are stored
/// and numbered in the global order.
async fn progress(pool: &sqlx::PgPool) -> Result<(i64, Option<String>, i64, i64), sqlx::Error> {
    let cursor: Option<(i64, Option<String>)> = sqlx::query_as(
        "select version, failure_message from wh_perspective_cursors
          where perspective = $1 and model_key = $2",
    )
    .bind(KEYED_TOTALS)
    .bind(KEYED_CURSOR.as_uuid())
    .fetch_optional(pool)
    .await?;
    let (stored, numbered): (i64, i64) = sqlx::query_as(
        "select (select count(*) from wh_events), (select count(*) from wh_event_order)",
    )
    .fetch_one(pool)
    .await?;
    let (at, failure) = cursor.unwrap_or((0, None));
    Ok((at, failure, stored, numbered))
}

/// The command that starts a runner child.
fn runner(url: &str) -> std::process::Command {
    let mut cmd = Cluster::command(PROGRAM);
    cmd.arg(url)
        .arg(LEASE.as_millis().to_string())
        .arg(BATCH.to_string());
    cmd
}

/// What the kill loop saw.
struct Kills {
    cluster: Cluster,
    labels: Vec<String>,
    /// The killed runners' lines, by label (`runner <i>#<generation>`).
    lines: Vec<(String, Vec<String>)>,
    /// Just after each kill: events stored (orders and probes), and the
    /// cursor's position.
    backlog: Vec<(i64, i64)>,
}

/// Starts the runners (ending the first probe's wait) and kills one
/// `KILLS` times, respawning it each time, probing every third kill.
/// Blocking: runs on its own thread, with `rt` for the async steps.
fn kill_loop(
    rt: &tokio::runtime::Handle,
    pool: &sqlx::PgPool,
    url: &str,
    prober: &mut Prober,
) -> Kills {
    let mut cluster = Cluster::spawn(RUNNERS, |_| runner(url));
    let ready = |cluster: &mut Cluster, i: usize| {
        cluster[i]
            .wait_line(|l| l.starts_with("ready "), BOUND)
            .unwrap_or_else(|e| panic!("runner {i} never started: {e}"));
    };
    for i in 0..RUNNERS {
        ready(&mut cluster, i);
    }
    rt.block_on(prober.read_your_writes("the first probe, once the runners run"));
    let mut generation = [0usize; RUNNERS];
    let mut lines = Vec::new();
    let mut backlog = Vec::new();
    for k in 0..KILLS {
        let i = k % RUNNERS;
        // A varying number of reported commits first: 1 to 9.
        let wanted = 1 + (k * 7) % 9;
        let mut commits = 0;
        while commits < wanted {
            match cluster[i].next_line(BOUND) {
                Ok(line) if line.starts_with("applied ") => commits += 1,
                Ok(line) if line.starts_with("failed ") => panic!("runner {i}: {line}"),
                Ok(_) => {}
                Err(WaitError::Closed { lines }) => {
                    let status = cluster[i].wait_timeout(BOUND);
                    panic!("runner {i} exited ({status:?}); lines: {lines:?}");
                }
                Err(e) => panic!("runner {i} applied nothing: {e}"),
            }
        }
        // Then, so that the kill lands with work in hand, wait until stored
        // events lie beyond the cursor (the appender keeps adding them).
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let (at, failure, stored, _) = rt
                .block_on(progress(pool))
                .expect("the progress query runs");
            assert_eq!(failure, None, "the keyed cursor failed");
            if at < stored {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "runner {i} kept up with every append for {BOUND:?}: no kill with work in hand"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        cluster[i].kill();
        let status = cluster[i]
            .wait_timeout(BOUND)
            .expect("the killed runner exits");
        assert_eq!(status.signal(), Some(9), "runner {i}: {status}");
        let (at, failure, stored, _) = rt
            .block_on(progress(pool))
            .expect("the progress query runs");
        assert_eq!(failure, None, "the keyed cursor failed");
        backlog.push((stored, at));
        let seen = cluster[i]
            .read_to_end(BOUND)
            .expect("stdout closes")
            .to_vec();
        lines.push((format!("runner {i}#{}", generation[i]), seen));
        generation[i] += 1;
        cluster.respawn(i, runner(url));
        ready(&mut cluster, i);
        if k % 3 == 2 {
            rt.block_on(prober.read_your_writes(&format!("the probe after kill {}", k + 1)));
        }
    }
    Kills {
        cluster,
        labels: (0..RUNNERS)
            .map(|i| format!("runner {i}#{}", generation[i]))
            .collect(),
        lines,
        backlog,
    }
}

/// Every event id an `applied` line names, with the processes that
/// reported it (once per line); and the `failed` lines.
fn reported(lines: &[(String, Vec<String>)]) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut failures = Vec::new();
    for (process, lines) in lines {
        for line in lines {
            if line.starts_with("failed ") {
                failures.push(format!("{process}: {line}"));
            }
            let Some(rest) = line.strip_prefix("applied ") else {
                continue;
            };
            let Some((_, ids)) = rest.split_once(' ') else {
                failures.push(format!("{process}: unreadable line {line:?}"));
                continue;
            };
            for id in ids.split(',') {
                seen.entry(id.to_owned()).or_default().push(process.clone());
            }
        }
    }
    (seen, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_keyed_runners_loses_no_order_applies_none_twice_and_waits_see_their_writes() {
    let db = bounded(FreshDb::create()).await;
    let customers: Vec<Uuid> = (0..CUSTOMERS).map(|_| Uuid::now_v7()).collect();

    // The prober: nothing runs the perspective yet, so its wait times out
    // and the model is absent.
    let pg = bounded(Postgres::connect_with(
        &db.url,
        PostgresOptions::default().pool_size(4).runner(false),
    ))
    .await
    .expect("connect");
    let rt = Runtime::builder()
        .registry(Arc::new(
            Registry::builder()
                .perspective::<KeyedTotals>()
                .build()
                .expect("registry"),
        ))
        .backend(pg.clone())
        .build()
        .expect("runtime");
    rt.runner().pause();
    let mut prober = Prober {
        rt,
        customer: Uuid::now_v7(),
        sent: 0,
    };
    let (outcome, model) = prober.probe(Duration::from_millis(300)).await;
    assert_eq!(outcome, SyncOutcome::TimedOut, "nobody applies it yet");
    assert_eq!(model, None, "nobody applied it");
    // The runners start in the kill loop; that wait is asked again there
    // (the probe customer's model must then hold both probe orders).

    let appender = Appender::start(PgEventStore::new(db.pool.clone()), customers.clone());
    let (pool, url) = (db.pool.clone(), db.url.clone());
    let handle = tokio::runtime::Handle::current();
    let started = std::time::Instant::now();
    let (kills, prober) = tokio::time::timeout(
        BOUND * 5,
        tokio::task::spawn_blocking(move || {
            let kills = kill_loop(&handle, &pool, &url, &mut prober);
            (kills, prober)
        }),
    )
    .await
    .expect("the kills finished within their bound")
    .expect("the kill loop panicked");
    let mut prober = prober;
    let appended = appender.stop().await;

    // A last probe after the appends: Synced means the cursor passed it,
    // and with it every order appended before.
    prober
        .read_your_writes("the last probe, after the appends")
        .await;
    let deadline = tokio::time::Instant::now() + BOUND;
    let (at, stored) = loop {
        let (at, failure, stored, numbered) = progress(&db.pool).await.expect("progress");
        assert_eq!(failure, None, "the keyed cursor failed");
        if at == stored && numbered == stored {
            break (at, stored);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not applied within {BOUND:?}: cursor at {at}, {numbered} of {stored} numbered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        u64::try_from(stored).expect("a count"),
        appended + prober.sent,
        "every order appended and every probe is stored once"
    );
    eprintln!(
        "{KILLS} kills while {appended} orders were appended (stored, cursor at each kill: \
         {:?}); all {stored} applied after {:?}",
        kills.backlog,
        started.elapsed()
    );
    assert!(
        kills.backlog.first().map(|b| b.0) < kills.backlog.last().map(|b| b.0),
        "orders kept flowing during the kills"
    );
    assert!(
        kills.backlog.iter().any(|&(stored, at)| at < stored),
        "no kill left orders unapplied behind it: the runners had no work in hand"
    );

    let Kills {
        cluster,
        labels,
        mut lines,
        ..
    } = kills;
    let last = bounded(tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        for i in 0..RUNNERS {
            cluster[i].close_stdin();
        }
        let statuses = cluster
            .wait_all(BOUND)
            .unwrap_or_else(|running| panic!("runners {running:?} did not stop"));
        assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
        (0..RUNNERS)
            .map(|i| {
                cluster[i]
                    .read_to_end(BOUND)
                    .expect("stdout closes")
                    .to_vec()
            })
            .collect::<Vec<_>>()
    }))
    .await
    .expect("stopping the runners panicked");
    lines.extend(labels.into_iter().zip(last));

    // Every order in the global order once, the cursor on the last.
    let (once, distinct): (i64, i64) = sqlx::query_as(
        "select count(*), count(distinct o.event_id)
           from wh_event_order o join wh_events e on e.event_id = o.event_id",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count the order");
    assert_eq!((once, distinct), (stored, stored));
    assert_eq!(at, stored);

    // Every customer's model equals a fresh fold of its events.
    let rows: Vec<(String,)> = sqlx::query_as(
        "select data::text from wh_events where event_type = 'pg_keyed.order_placed'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("read the events");
    let mut expected: BTreeMap<Uuid, CustomerTotals> = BTreeMap::new();
    for (data,) in rows {
        fold_customer(
            &mut expected,
            &serde_json::from_str(&data).expect("stored data is JSON"),
        );
    }
    let models: Vec<(Uuid, String)> = sqlx::query_as(
        "select model_key, data::text from wh_perspective_rows where perspective = $1",
    )
    .bind(KEYED_TOTALS)
    .fetch_all(&db.pool)
    .await
    .expect("read the models");
    let stored_models: BTreeMap<Uuid, CustomerTotals> = models
        .into_iter()
        .map(|(key, data)| {
            (
                key,
                serde_json::from_str(&data).expect("a stored model decodes"),
            )
        })
        .collect();
    assert_eq!(
        expected.len(),
        CUSTOMERS + 1,
        "every customer and the probe"
    );
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(key, want)| stored_models.get(*key) != Some(*want))
        .map(|(key, want)| format!("{key}: stored {:?}, fold {want:?}", stored_models.get(key)))
        .collect();
    assert!(wrong.is_empty(), "models unlike a fresh fold: {wrong:?}");
    assert_eq!(
        stored_models.len(),
        expected.len(),
        "no model without events"
    );

    // The reports: no event reported by two commits. (A killed runner may
    // take the line of a commit it made with it.)
    let (seen, failures) = reported(&lines);
    assert!(failures.is_empty(), "{failures:?}");
    let twice: Vec<String> = seen
        .iter()
        .filter(|(_, ps)| ps.len() > 1)
        .map(|(id, ps)| format!("{id} by {ps:?}"))
        .collect();
    assert!(twice.is_empty(), "applied twice: {twice:?}");
    let mut by_process: BTreeMap<&str, usize> = BTreeMap::new();
    for ps in seen.values() {
        for p in ps {
            *by_process.entry(p.as_str()).or_default() += 1;
        }
    }
    eprintln!(
        "reports: {} of {stored} events reported applied (the rest were \
         committed by runners killed before they printed every line of the commit); per runner: {by_process:?}",
        seen.len()
    );
    drop(prober);
    bounded(pg.close()).await;
}

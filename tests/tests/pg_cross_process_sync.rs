//! Read-your-writes across processes: process A appends and waits, process
//! B runs the runner.
//!
//! B is `pg_appender runner` (the partitioned runner, no appends). A is
//! `pg_appender sync`: its backend's runner is off and its runtime's
//! in-process runner paused, so nothing A appends is applied in A. A's
//! `send_and_sync` and its scope's awaiter end `Synced` once B's runner has
//! applied the events (B's commit NOTIFY wakes A's waiter); a wait on an id
//! never appended, and a wait on a perspective only A registers (B lacks
//! it), end `TimedOut` after their timeout. The database then shows that B
//! applied the events (B reported each commit), that the perspective B
//! lacks was applied by no one, and that A never registered as a runner.
//!
//! Two more cases use `pg_appender wait` (A appends one event and waits on
//! it, with a 30 s timeout): a wait begun before any runner process exists
//! ends `Synced` once one starts (it finds the work in the database), and a
//! wait whose runner froze holding every lease and was then killed ends
//! `Synced` once a new runner process takes the expired leases over.

use std::time::Duration;
use uuid::Uuid;
use whizbang_tests::pg::cluster::Member;
use whizbang_tests::pg::db::FreshDb;
use whizbang_tests::pg::ledger;
use whizbang_tests::pg::runners::{self, AppliedLog};
use whizbang_tests::process::field;

whizbang_tests::pg_totals!();

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(60);
/// The timeout of the waits that cannot succeed.
const MISS: Duration = Duration::from_millis(1500);
/// How late after its timeout a wait may end (a loaded machine).
const LATE: Duration = Duration::from_secs(5);
const PROGRAM: &str = env!("CARGO_BIN_EXE_pg_appender");

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

/// The line of `lines` that starts with `prefix`.
fn line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in {lines:?}"))
}

/// The value after `name=` in `line`.
fn word<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// A wait that cannot succeed ended `TimedOut`, not before its timeout
/// and not long after.
fn assert_timed_out(line: &str) {
    assert_eq!(word(line, "outcome"), "TimedOut", "{line}");
    let elapsed = Duration::from_millis(field(line, "elapsed_ms"));
    assert!(elapsed >= MISS, "ended before its timeout: {line}");
    assert!(
        elapsed <= MISS + LATE,
        "ended long after its timeout: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appending_process_is_synced_by_another_processes_runner_and_times_out_on_what_none_applies(
) {
    let db = bounded(FreshDb::create()).await;
    let url = db.url.clone();
    let (mut b, b_id) = blocking(move || {
        let mut b = Member::spawn(runners::runner_command(
            PROGRAM,
            &url,
            Duration::from_secs(2),
            100,
        ));
        let ready = b
            .wait_line(|l| l.starts_with("ready "), BOUND)
            .unwrap_or_else(|e| panic!("runner B never started: {e}"));
        let id = runners::ready_instance(&ready).expect("ready carries the instance id");
        (b, id)
    })
    .await;

    let url = db.url.clone();
    let mut a = blocking(move || {
        let mut cmd = std::process::Command::new(PROGRAM);
        cmd.arg("sync").arg(&url).arg(MISS.as_millis().to_string());
        let mut a = Member::spawn(cmd);
        a.wait_line(|l| l == "finished", BOUND)
            .unwrap_or_else(|e| panic!("process A never finished: {e}"));
        let status = a.wait_timeout(BOUND).expect("A exits");
        assert!(status.success(), "A exited with {status}");
        a
    })
    .await;
    let a_lines = a.lines().to_vec();
    eprintln!("A: {a_lines:?}");

    // A's waits on what B applies end Synced; the others time out.
    let sent = line(&a_lines, "sent ");
    assert_eq!(word(sent, "totals"), "Synced", "{sent}");
    assert_eq!(word(sent, "audit"), "TimedOut", "{sent}");
    assert_eq!(
        word(line(&a_lines, "awaited "), "outcome"),
        "Synced",
        "{a_lines:?}"
    );
    assert_timed_out(line(&a_lines, "unknown-id "));
    assert_timed_out(line(&a_lines, "lacking "));
    let account: Uuid = line(&a_lines, "account ")["account ".len()..]
        .parse()
        .expect("A names its stream");

    // B is the only runner instance; A never registered as one.
    let instances: Vec<Uuid> =
        bounded(sqlx::query_scalar("select instance_id from wh_instances").fetch_all(&db.pool))
            .await
            .unwrap();
    assert_eq!(instances, [b_id], "A ran no runner");

    // B applied both events, in order; the perspective B lacks has no cursor
    // and no model anywhere (A applied nothing).
    let check = bounded(ledger::fresh_fold(&db.pool, TOTALS, account, fold_totals))
        .await
        .unwrap();
    assert!(check.matches(), "{check}");
    assert_eq!(check.events, 2);
    let audit: i64 = bounded(
        sqlx::query_scalar(
            "select (select count(*) from wh_perspective_cursors where perspective = $1)
                  + (select count(*) from wh_perspective_rows where perspective = $1)",
        )
        .bind("pg_appender.audit")
        .fetch_one(&db.pool),
    )
    .await
    .unwrap();
    assert_eq!(audit, 0, "nobody runs the audit perspective");

    let b_lines = blocking(move || {
        b.close_stdin();
        b.wait_line(|l| l == "stopped", BOUND)
            .unwrap_or_else(|e| panic!("runner B did not stop: {e}"));
        let status = b.wait_timeout(BOUND).expect("B exits");
        assert!(status.success(), "B exited with {status}");
        b.lines().to_vec()
    })
    .await;
    let mut log = AppliedLog::new();
    log.record("B", &b_lines);
    assert!(log.failures().is_empty(), "{:?}", log.failures());
    log.tally([format!("{account}:1"), format!("{account}:2")])
        .assert_exact();

    // B released its leases and left.
    let owners = bounded(runners::lease_owners(&db.pool, TOTALS))
        .await
        .unwrap();
    assert!(owners.is_empty(), "leases still held: {owners:?}");
}

/// The timeout of the waits that succeed once a runner applies.
const LONG: Duration = Duration::from_secs(30);

/// Process A in the `wait` role: it appends one event and waits on it with
/// its runner off. Returns A once it printed `appended`, and its stream.
fn spawn_waiter(url: &str) -> (Member, Uuid) {
    let mut cmd = std::process::Command::new(PROGRAM);
    cmd.arg("wait").arg(url).arg(LONG.as_millis().to_string());
    let mut a = Member::spawn(cmd);
    let line = a
        .wait_line(|l| l.starts_with("appended "), BOUND)
        .unwrap_or_else(|e| panic!("process A never appended: {e}"));
    let stream = line["appended ".len()..]
        .parse()
        .expect("A names its stream");
    (a, stream)
}

/// Waits for A's outcome and for it to exit; the `awaited` line.
fn awaited(a: &mut Member) -> String {
    let line = a
        .wait_line(|l| l.starts_with("awaited "), BOUND)
        .unwrap_or_else(|e| panic!("process A's wait never ended: {e}"));
    a.wait_line(|l| l == "finished", BOUND)
        .unwrap_or_else(|e| panic!("process A never finished: {e}"));
    let status = a.wait_timeout(BOUND).expect("A exits");
    assert!(status.success(), "A exited with {status}");
    line
}

/// Stops a runner cleanly and returns its lines.
fn stop_runner(mut runner: Member) -> Vec<String> {
    runner.close_stdin();
    runner
        .wait_line(|l| l == "stopped", BOUND)
        .unwrap_or_else(|e| panic!("the runner did not stop: {e}"));
    let status = runner.wait_timeout(BOUND).expect("the runner exits");
    assert!(status.success(), "the runner exited with {status}");
    runner.lines().to_vec()
}

/// A runner child, once it printed `ready`, and its instance id.
fn spawn_runner(url: &str) -> (Member, Uuid) {
    let mut runner = Member::spawn(runners::runner_command(
        PROGRAM,
        url,
        Duration::from_secs(2),
        100,
    ));
    let ready = runner
        .wait_line(|l| l.starts_with("ready "), BOUND)
        .unwrap_or_else(|e| panic!("the runner never started: {e}"));
    let id = runners::ready_instance(&ready).expect("ready carries the instance id");
    (runner, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_begun_before_any_runner_runs_ends_synced_once_a_runner_process_starts() {
    let db = bounded(FreshDb::create()).await;
    let url = db.url.clone();
    let (a, stream) = blocking(move || spawn_waiter(&url)).await;

    // Nothing applies A's event yet: no process runs the runner.
    let cursors: i64 = bounded(
        sqlx::query_scalar("select count(*) from wh_perspective_cursors").fetch_one(&db.pool),
    )
    .await
    .unwrap();
    assert_eq!(cursors, 0, "nothing applied before a runner started");

    let url = db.url.clone();
    let (outcome, b_lines) = blocking(move || {
        let mut a = a;
        let (b, _) = spawn_runner(&url);
        let outcome = awaited(&mut a);
        (outcome, stop_runner(b))
    })
    .await;
    assert_eq!(word(&outcome, "outcome"), "Synced", "{outcome}");
    let mut log = AppliedLog::new();
    log.record("B", &b_lines);
    log.tally([format!("{stream}:1")]).assert_exact();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_ends_synced_when_its_runner_process_dies_and_another_takes_over() {
    let db = bounded(FreshDb::create()).await;
    let url = db.url.clone();
    let pool = db.pool.clone();
    let handle = tokio::runtime::Handle::current();
    let (outcome, stream, b1_lines, b2_lines) = blocking(move || {
        // B1 leases every partition, then freezes: it can apply nothing.
        let (mut b1, b1_id) = spawn_runner(&url);
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let owners = handle
                .block_on(runners::lease_owners(&pool, TOTALS))
                .unwrap();
            if owners.get(&b1_id) == Some(&16) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "B1 never leased the partitions: {owners:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b1.stop();
        let (mut a, stream) = spawn_waiter(&url);
        // B1 dies holding the leases; B2 takes them over once they expire.
        b1.kill();
        b1.wait_timeout(BOUND).expect("B1 exits");
        let b1_lines = b1.read_to_end(BOUND).expect("stdout closes").to_vec();
        let (b2, _) = spawn_runner(&url);
        let outcome = awaited(&mut a);
        (outcome, stream, b1_lines, stop_runner(b2))
    })
    .await;
    assert_eq!(word(&outcome, "outcome"), "Synced", "{outcome}");
    let mut log = AppliedLog::new();
    log.record("B1", &b1_lines);
    assert!(log.is_empty(), "the frozen runner applied: {b1_lines:?}");
    log.record("B2", &b2_lines);
    log.tally([format!("{stream}:1")]).assert_exact();
}

//! Perspective sync (read-your-writes) costs, each against a same-run baseline.
//!
//! Run: `cargo bench -p whizbang-core --bench sync` (add `-- --quick` for a
//! short run, `-- --only 3` to run case 3 alone). Everything runs on a 2-worker multi-thread tokio runtime.
//!
//! 1. Wake latency: a waiter sleeps on one event of an inline perspective; the
//!    scope completes (apply, commit, notify). The apply function stamps an
//!    `Instant` (just before the commit); the waiter stamps one when `wait`
//!    returns. Reported: apply→return (an upper bound on commit→return, since
//!    the commit itself is inside it), and complete()-start→return, with the
//!    duration of `complete()` alone as the baseline.
//! 2. `send_and_sync` on an async perspective vs plain `send` (+ `complete`) of
//!    the same command: rounds interleaved, ratio of the median per-op times.
//! 3. 10,000 concurrent waiters, one per scope/stream, on one async perspective:
//!    RSS growth while they are registered, per waiter (measure it with
//!    `-- --only 3`: after cases 1 and 2 the waiters reuse freed heap and RSS
//!    understates them); then the runner resumes
//!    and each waiter's return is compared with its event's apply stamp.
//! 4. A million events through publish → async apply → wait, in batches of
//!    1,000: tracker entries and waiter registrations left, and RSS (the
//!    in-memory event store keeps every event, so RSS grows with it).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use uuid::Uuid;
use whizbang_core::{
    perspective, receptor, Command, Context, Event, PerspectiveSyncOptions, Receptor, Result,
    Runtime, SyncFilter, SyncOutcome,
};

// ------------------------------------------------------------- messages

#[derive(Event, Serialize, Deserialize, Clone)]
#[event(name = "bench.woken")]
struct Woken {
    #[stream_key]
    stream: Uuid,
}

#[derive(Event, Serialize, Deserialize, Clone)]
#[event(name = "bench.placed")]
struct Placed {
    #[stream_key]
    order: Uuid,
    cents: i64,
}

#[derive(Command, Serialize, Deserialize, Clone)]
#[command(output = i64)]
struct Place {
    order: Uuid,
    cents: i64,
}

#[derive(Default)]
struct Desk;

#[receptor]
impl Receptor<Place> for Desk {
    async fn handle(&self, cmd: Place, cx: &mut Context) -> Result<i64> {
        cx.emit(Placed {
            order: cmd.order,
            cents: cmd.cents,
        })?;
        Ok(cmd.cents)
    }
}

#[derive(Event, Serialize, Deserialize, Clone)]
#[event(name = "bench.fanned")]
struct Fanned {
    #[stream_key]
    stream: Uuid,
}

#[derive(Event, Serialize, Deserialize, Clone)]
#[event(name = "bench.bulk")]
struct Bulk {
    #[stream_key]
    stream: Uuid,
    n: u64,
}

// --------------------------------------------------------- perspectives

#[derive(Default, Clone, Serialize, Deserialize)]
struct Count {
    n: u64,
}

/// When the wake perspective last applied (stamped just before its commit).
static WOKEN_APPLIED: Mutex<Option<Instant>> = Mutex::new(None);
/// When the fan-out perspective applied each stream.
static FANNED_APPLIED: OnceLock<Mutex<HashMap<Uuid, Instant>>> = OnceLock::new();

struct WakeView;

#[perspective(model = Count, name = "bench.wake", mode = inline)]
impl WakeView {
    fn woken(c: &mut Count, _: &Woken) {
        c.n += 1;
        *WOKEN_APPLIED.lock().unwrap() = Some(Instant::now());
    }
}

struct OrdersView;

#[perspective(model = Count, name = "bench.orders")]
impl OrdersView {
    fn placed(c: &mut Count, e: &Placed) {
        c.n += u64::try_from(e.cents).unwrap_or(0);
    }
}

struct FanView;

#[perspective(model = Count, name = "bench.fan")]
impl FanView {
    fn fanned(c: &mut Count, e: &Fanned) {
        c.n += 1;
        FANNED_APPLIED
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .insert(e.stream, Instant::now());
    }
}

struct BulkView;

#[perspective(model = Count, name = "bench.bulk")]
impl BulkView {
    fn bulk(c: &mut Count, e: &Bulk) {
        c.n += e.n;
    }
}

// -------------------------------------------------------------- helpers

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn page_size() -> u64 {
    std::process::Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// Resident set size in bytes, from /proc/self/statm.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

async fn until(mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("condition never held");
}

struct Row {
    what: String,
    value: String,
    goal: &'static str,
}

fn row(rows: &mut Vec<Row>, what: impl Into<String>, value: impl Into<String>, goal: &'static str) {
    rows.push(Row {
        what: what.into(),
        value: value.into(),
        goal,
    });
}

// ---------------------------------------------------------- 1. wake latency

async fn wake_latency(rt: &Runtime, samples: usize, rows: &mut Vec<Row>) {
    let mut from_apply = Vec::with_capacity(samples);
    let mut from_complete = Vec::with_capacity(samples);
    let mut complete_alone = Vec::with_capacity(samples);
    let options = SyncFilter::all().with_timeout(Duration::from_secs(10));
    for i in 0..=samples {
        let stream = Uuid::now_v7();
        let scope = rt.scope();
        scope.publish(Woken { stream }).await.unwrap();
        let aw = rt.sync_awaiter();
        let opts =
            PerspectiveSyncOptions::new(SyncFilter::for_stream(stream)).timeout(options.timeout);
        let waiter = tokio::spawn(async move {
            let r = aw.wait::<WakeView>(opts).await.unwrap();
            (r.outcome, Instant::now())
        });
        until(|| rt.sync_tracker().waiter_count() > 0).await;
        tokio::time::sleep(Duration::from_millis(1)).await; // asleep in `notified()` by now
        let t0 = Instant::now();
        scope.complete().await.unwrap();
        let t1 = Instant::now();
        let (outcome, woke) = waiter.await.unwrap();
        assert_eq!(outcome, SyncOutcome::Synced);
        let applied = WOKEN_APPLIED.lock().unwrap().take().unwrap();
        if i == 0 {
            continue; // warm-up
        }
        from_apply.push(us(woke.saturating_duration_since(applied)));
        from_complete.push(us(woke.saturating_duration_since(t0)));
        complete_alone.push(us(t1 - t0));
    }
    let (a, c, b) = (
        sorted(from_apply),
        sorted(from_complete),
        sorted(complete_alone),
    );
    row(
        rows,
        "1. wake: apply stamp -> wait returns, p50 / p99",
        format!("{:.1} / {:.1} us", pct(&a, 0.5), pct(&a, 0.99)),
        "p50 < 50 us",
    );
    row(
        rows,
        "1. wake: complete() start -> wait returns, p50 / p99",
        format!("{:.1} / {:.1} us", pct(&c, 0.5), pct(&c, 0.99)),
        "",
    );
    row(
        rows,
        "1. baseline: complete() alone (apply+commit+notify), p50 / p99",
        format!("{:.1} / {:.1} us", pct(&b, 0.5), pct(&b, 0.99)),
        "",
    );
}

// ------------------------------------------- 2. send_and_sync vs send

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Send,
    SendThenIdle,
    SendAndSync,
}

async fn send_round(rt: &Runtime, n: usize, mode: Mode) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let cmd = Place {
            order: Uuid::now_v7(),
            cents: i as i64,
        };
        let scope = rt.scope();
        let out = if mode == Mode::SendAndSync {
            scope.send_and_sync(cmd).await.unwrap().into_output()
        } else {
            scope.send(cmd).await.unwrap()
        };
        black_box(out);
        scope.complete().await.unwrap();
        if mode == Mode::SendThenIdle {
            rt.wait_idle().await;
        }
    }
    let per_op = start.elapsed().as_nanos() as f64 / n as f64;
    rt.wait_idle().await; // the plain rounds' applies finish outside the timing
    per_op
}

async fn send_vs_send_and_sync(rt: &Runtime, rounds: usize, n: usize, rows: &mut Vec<Row>) {
    let (mut plain, mut idle, mut synced) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=rounds {
        let p = send_round(rt, n, Mode::Send).await;
        let s = send_round(rt, n, Mode::SendAndSync).await;
        let i = send_round(rt, n, Mode::SendThenIdle).await;
        if round > 0 {
            plain.push(p);
            synced.push(s);
            idle.push(i);
        }
    }
    let (p, s, i) = (sorted(plain), sorted(synced), sorted(idle));
    let (pm, sm, im) = (pct(&p, 0.5), pct(&s, 0.5), pct(&i, 0.5));
    row(
        rows,
        "2. baseline: send + complete (async apply not awaited), median",
        format!("{:.2} us/op", pm / 1e3),
        "",
    );
    row(
        rows,
        "2. send_and_sync + complete (waits for the async apply), median",
        format!("{:.2} us/op", sm / 1e3),
        "",
    );
    row(
        rows,
        "2. ratio send_and_sync / send",
        format!("{:.2}x", sm / pm),
        "<= 3x",
    );
    row(
        rows,
        "2. context: send + complete + wait_idle (apply awaited crudely)",
        format!("{:.2} us/op ({:.2}x send)", im / 1e3, im / pm),
        "",
    );
}

// -------------------------------------------- 3. 10,000 concurrent waiters

async fn many_waiters(rt: &Runtime, n: usize, alone: bool, rows: &mut Vec<Row>) {
    rt.runner().pause();
    let mut scopes = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = Uuid::now_v7();
        let scope = rt.scope();
        scope.publish(Fanned { stream }).await.unwrap();
        // Flush now (signals the paused runner) so the runner's queued work is
        // not counted as waiter memory below.
        let aw = scope.sync_awaiter();
        assert!(!aw
            .is_caught_up::<FanView>(SyncFilter::current_scope())
            .await
            .unwrap());
        scopes.push((stream, scope, aw));
    }
    let before = rss();
    let mut waiters = Vec::with_capacity(n);
    for (stream, _, aw) in &scopes {
        let (aw, stream) = (aw.clone(), *stream);
        waiters.push(tokio::spawn(async move {
            let r = aw
                .wait::<FanView>(SyncFilter::current_scope().with_timeout(Duration::from_secs(60)))
                .await
                .unwrap();
            (stream, r.outcome, Instant::now())
        }));
    }
    until(|| rt.sync_tracker().waiter_count() >= n).await;
    let after = rss();
    let future_size = {
        let aw = &scopes[0].2;
        std::mem::size_of_val(&aw.wait::<FanView>(SyncFilter::current_scope()))
    };
    let per_waiter = after.saturating_sub(before) as f64 / n as f64;

    let started = Instant::now();
    rt.runner().resume();
    let mut delays = Vec::with_capacity(n);
    let mut results = Vec::with_capacity(n);
    for w in waiters {
        results.push(w.await.unwrap());
    }
    let all_woken = started.elapsed();
    let mut synced = 0;
    {
        let applied = FANNED_APPLIED.get_or_init(Default::default).lock().unwrap();
        for (stream, outcome, woke) in results {
            synced += usize::from(outcome == SyncOutcome::Synced);
            delays.push(us(woke.saturating_duration_since(applied[&stream])) / 1e3);
        }
    }
    for (_, scope, _) in scopes {
        scope.complete().await.unwrap();
    }
    let d = sorted(delays);
    row(
        rows,
        if alone {
            format!("3. {n} waiters: RSS while registered, per waiter")
        } else {
            // Cases 1 and 2 leave freed heap behind that the waiters reuse:
            // RSS then grows by less than they take.
            format!("3. {n} waiters: RSS per waiter (after cases 1-2: understated, run --only 3)")
        },
        format!(
            "{per_waiter:.0} B ({:.1} MiB -> {:.1} MiB)",
            mib(before),
            mib(after)
        ),
        "<= 1 KiB",
    );
    row(
        rows,
        "3. context: size of one `wait` future (before it is polled)",
        format!("{future_size} B"),
        "",
    );
    row(
        rows,
        format!("3. {n} waiters: apply stamp -> return, p50 / p99 / max"),
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            pct(&d, 0.5),
            pct(&d, 0.99),
            d[d.len() - 1]
        ),
        "max <= 10 ms",
    );
    row(
        rows,
        format!("3. {n} waiters: synced, and resume -> last return"),
        format!("{synced}/{n}, {:.1} ms", all_woken.as_secs_f64() * 1e3),
        "",
    );
}

// ---------------------------------------------- 4. a million events

async fn million(rt: &Runtime, total: usize, rows: &mut Vec<Row>) {
    const BATCH: usize = 1_000;
    let streams: Vec<Uuid> = (0..1_000).map(|_| Uuid::now_v7()).collect();
    let (tracked0, rss0) = (rt.sync_tracker().tracked_count(), rss());
    let started = Instant::now();
    let mut max_tracked = 0;
    let mut mid = (0, 0);
    for b in 0..total / BATCH {
        let scope = rt.scope();
        for i in 0..BATCH {
            scope
                .publish(Bulk {
                    stream: streams[(b * BATCH + i) % streams.len()],
                    n: 1,
                })
                .await
                .unwrap();
        }
        max_tracked = max_tracked.max(rt.sync_tracker().tracked_count());
        let r = scope
            .sync_awaiter()
            .wait::<BulkView>(SyncFilter::current_scope().with_timeout(Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(r.outcome, SyncOutcome::Synced);
        scope.complete().await.unwrap();
        if b == total / BATCH / 2 {
            mid = (rt.sync_tracker().tracked_count(), rss());
        }
    }
    rt.wait_idle().await;
    let took = started.elapsed();
    let (tracked1, rss1) = (rt.sync_tracker().tracked_count(), rss());
    row(
        rows,
        format!("4. {total} events: tracked before / peak in batch / mid / after"),
        format!("{tracked0} / {max_tracked} / {} / {tracked1}", mid.0),
        "after = 0",
    );
    row(
        rows,
        format!("4. {total} events: waiter registrations after"),
        rt.sync_tracker().waiter_count().to_string(),
        "0",
    );
    row(
        rows,
        format!("4. {total} events: RSS before / mid / after (store keeps events)"),
        format!(
            "{:.1} / {:.1} / {:.1} MiB ({:.0} B/event)",
            mib(rss0),
            mib(mid.1),
            mib(rss1),
            rss1.saturating_sub(rss0) as f64 / total as f64
        ),
        "",
    );
    row(
        rows,
        format!("4. {total} events: throughput (publish + async apply + wait)"),
        format!("{:.0} events/s", total as f64 / took.as_secs_f64()),
        "",
    );
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this runs as a
    // smoke test (a few iterations, unoptimised): its figures are not measurements.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only N` runs case N alone (1 to 4), e.g. `-- --only 3` for the waiters' memory.
    let args: Vec<String> = std::env::args().collect();
    let only: Option<u32> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    let runs = |case: u32| only.is_none_or(|n| n == case);
    if smoke {
        println!("sync bench: smoke run (not under `cargo bench`): figures are not measurements");
    }
    let (samples, rounds, per_round, waiters, events) = if smoke {
        (20, 1, 20, 100, 2_000)
    } else if quick {
        (200, 5, 200, 2_000, 100_000)
    } else {
        (2_000, 21, 1_000, 10_000, 1_000_000)
    };
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    tokio.block_on(async {
        if runs(1) {
            let rt = Runtime::in_memory().unwrap();
            wake_latency(&rt, samples, &mut rows).await;
        }
        if runs(2) {
            let rt = Runtime::in_memory().unwrap();
            send_vs_send_and_sync(&rt, rounds, per_round, &mut rows).await;
        }
        if runs(3) {
            let rt = Runtime::in_memory().unwrap();
            many_waiters(&rt, waiters, only == Some(3), &mut rows).await;
        }
        if runs(4) {
            let rt = Runtime::in_memory().unwrap();
            million(&rt, events, &mut rows).await;
        }
    });

    println!(
        "whizbang sync bench ({}; 2-worker tokio runtime; in-memory stores)",
        if quick { "--quick" } else { "full" }
    );
    let w0 = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
    println!("{:w0$}  {:w1$}  goal", "measure", "value");
    println!("{}", "-".repeat(w0 + w1 + 16));
    for r in &rows {
        println!("{:w0$}  {:w1$}  {}", r.what, r.value, r.goal);
    }
    println!(
        "\nMethod: (1) waiter sleeps on an inline perspective's event; the apply fn stamps \
         Instant::now() just before the commit, the waiter stamps on return; complete() alone \
         is the same-run baseline. (2) rounds of {per_round} ops alternate plain send and \
         send_and_sync; ratio of medians. (3) RSS from /proc/self/statm before/after {waiters} \
         waiter tasks register; wake delay = return stamp - apply stamp per stream. (4) batches \
         of 1,000 events, each batch awaited with current_scope()."
    );
}

//! Debugger-aware timeouts tell a freeze from CPU starvation, in real
//! processes. A child waiting with a 1 s timeout is SIGSTOPped for 2 s: the
//! frozen time does not count and its wait still syncs once applied. A child
//! waiting 500 ms next to a CPU hog (one busy thread per core plus one) counts
//! the time it was starved: its wait ends within its timeout plus the slack
//! documented on `PerspectiveSyncOptions::debugger_aware` (the scheduling delay
//! of its last wake-up, bounded here at 1 s). Signals are sent with `kill`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use whizbang_tests::process::{self, field, BOUND};

/// The hog would starve the frozen child too: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn a_wait_frozen_for_longer_than_its_timeout_still_waits() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // 1 s timeout; the runner applies 300 ms after the parent says "continued".
    let mut guard = process::spawn(env!("CARGO_BIN_EXE_sync_child"), &["aware", "1000", "300"]);
    let pid = guard.id();
    let mut stdin = guard.0.stdin.take().unwrap();
    let lines = process::lines_of(&mut guard);
    assert_eq!(
        lines.recv_timeout(BOUND).expect("child never waited"),
        "waiting"
    );

    process::freeze(pid, Duration::from_secs(2));
    writeln!(stdin, "continued").unwrap();
    stdin.flush().unwrap();

    let line = lines.recv_timeout(BOUND).expect("child never reported");
    process::wait_exit(&mut guard);
    assert!(
        line.starts_with("outcome=Synced "),
        "the 2 s freeze must not time out a 1 s wait: {line}"
    );
    assert!(field(&line, "elapsed_ms") < 1_000, "{line}");
}

#[test]
fn a_wait_starved_of_cpu_counts_the_starved_time_and_ends_within_its_timeout_plus_slack() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..=cores)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let result = std::panic::catch_unwind(|| {
        let mut guard = process::spawn(env!("CARGO_BIN_EXE_sync_starved_child"), &["500"]);
        let lines = process::lines_of(&mut guard);
        let line = lines.recv_timeout(BOUND).expect("child never reported");
        process::wait_exit(&mut guard);
        line
    });
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        let _ = h.join();
    }
    let line = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(line.starts_with("outcome=TimedOut "), "{line}");
    let (active, wall) = (field(&line, "elapsed_ms"), field(&line, "wall_ms"));
    assert!(active >= 500, "{line}");
    assert!(
        wall <= 500 + 1_000,
        "a starved 500 ms wait must end within its timeout plus slack: {line}"
    );
}

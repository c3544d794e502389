//! Debugger-aware sync timeouts in real processes: a child waits with a 2 s
//! timeout, is frozen with SIGSTOP for 4 s, continued, and its perspective
//! applies 500 ms later. Only the active time counts when debugger-aware, so
//! the wait is `Synced`; with awareness off the frozen 4 s count and it is
//! `TimedOut`. Signals are sent with the `kill` binary.

use std::io::Write;
use std::time::Duration;
use whizbang_tests::process::{self, field, BOUND};

const FREEZE: Duration = Duration::from_secs(4);

/// Runs the child through wait → freeze → continue; returns its outcome line.
fn freeze_child_during_wait(mode: &str) -> String {
    let mut guard = process::spawn(env!("CARGO_BIN_EXE_sync_child"), &[mode]);
    let pid = guard.id();
    let mut stdin = guard.0.stdin.take().unwrap();
    let lines = process::lines_of(&mut guard);

    let first = lines
        .recv_timeout(BOUND)
        .expect("child never said it was waiting");
    assert_eq!(first, "waiting");

    process::freeze(pid, FREEZE);
    writeln!(stdin, "continued").unwrap();
    stdin.flush().unwrap();

    let outcome = lines
        .recv_timeout(BOUND)
        .expect("child never reported an outcome");
    process::wait_exit(&mut guard);
    outcome
}

#[test]
fn a_debugger_aware_wait_does_not_count_the_time_the_process_was_stopped() {
    let line = freeze_child_during_wait("aware");
    assert!(line.starts_with("outcome=Synced "), "{line}");
    let ms = field(&line, "elapsed_ms");
    assert!(
        ms < 2_000,
        "active time {ms} ms must leave out the 4 s freeze"
    );
}

#[test]
fn a_wait_without_debugger_awareness_counts_the_stopped_time_and_times_out() {
    let line = freeze_child_during_wait("unaware");
    assert!(line.starts_with("outcome=TimedOut "), "{line}");
    let ms = field(&line, "elapsed_ms");
    assert!(ms >= 4_000, "the 4 s freeze counts: {ms} ms");
}

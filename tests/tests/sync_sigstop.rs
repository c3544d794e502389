//! Debugger-aware sync timeouts in real processes: a child waits with a 2 s
//! timeout, is frozen with SIGSTOP for 4 s, continued, and its perspective
//! applies 500 ms later. Only the active time counts when debugger-aware, so
//! the wait is `Synced`; with awareness off the frozen 4 s count and it is
//! `TimedOut`. Signals are sent with the `kill` binary.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FREEZE: Duration = Duration::from_secs(4);
/// No step of the test may take longer than this.
const BOUND: Duration = Duration::from_secs(30);

/// Kills the child (SIGCONT first, in case it is stopped) if the test fails.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = signal("-CONT", self.0.id());
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(sig: &str, pid: u32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    assert!(status.success(), "kill {sig} {pid} failed: {status}");
    Ok(())
}

/// The process state letter from /proc/<pid>/stat ('T' when stopped).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.trim_start().chars().next()
}

fn wait_for_state(pid: u32, want: impl Fn(char) -> bool) {
    let deadline = Instant::now() + BOUND;
    while !state(pid).is_some_and(&want) {
        assert!(
            Instant::now() < deadline,
            "child {pid} never reached the state"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs the child through wait → freeze → continue; returns its outcome line.
fn freeze_child_during_wait(mode: &str) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_sync_child"))
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sync_child");
    let mut guard = Guard(child);
    let pid = guard.0.id();
    let mut stdin: ChildStdin = guard.0.stdin.take().unwrap();
    let stdout = guard.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let first = lines
        .recv_timeout(BOUND)
        .expect("child never said it was waiting");
    assert_eq!(first, "waiting");

    signal("-STOP", pid).unwrap();
    wait_for_state(pid, |s| s == 'T');
    std::thread::sleep(FREEZE); // the freeze itself is what is under test
    signal("-CONT", pid).unwrap();
    wait_for_state(pid, |s| s != 'T');
    writeln!(stdin, "continued").unwrap();
    stdin.flush().unwrap();

    let outcome = lines
        .recv_timeout(BOUND)
        .expect("child never reported an outcome");
    let deadline = Instant::now() + BOUND;
    loop {
        match guard.0.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "child exited with {status}");
                break;
            }
            None => {
                assert!(Instant::now() < deadline, "child never exited");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    outcome
}

fn elapsed_ms(line: &str) -> u64 {
    line.split_once("elapsed_ms=")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no elapsed_ms in {line:?}"))
}

#[test]
fn a_debugger_aware_wait_does_not_count_the_time_the_process_was_stopped() {
    let line = freeze_child_during_wait("aware");
    assert!(line.starts_with("outcome=Synced "), "{line}");
    let ms = elapsed_ms(&line);
    assert!(
        ms < 2_000,
        "active time {ms} ms must leave out the 4 s freeze"
    );
}

#[test]
fn a_wait_without_debugger_awareness_counts_the_stopped_time_and_times_out() {
    let line = freeze_child_during_wait("unaware");
    assert!(line.starts_with("outcome=TimedOut "), "{line}");
    let ms = elapsed_ms(&line);
    assert!(ms >= 4_000, "the 4 s freeze counts: {ms} ms");
}

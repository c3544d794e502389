//! Debugger-aware timeouts tell a freeze from CPU starvation, in real
//! processes. A child waiting with a 1 s timeout is SIGSTOPped for 2 s: the
//! frozen time does not count and its wait still syncs once applied. A child
//! waiting 500 ms next to a CPU hog (one busy thread per core plus one) counts
//! the time it was starved: its wait ends within its timeout plus the slack
//! documented on `PerspectiveSyncOptions::debugger_aware` (the scheduling delay
//! of its last wake-up, bounded here at 1 s). Signals are sent with `kill`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// No step of the test may take longer than this.
const BOUND: Duration = Duration::from_secs(60);
/// The hog would starve the frozen child too: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

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

/// The child's stdout, line by line, on a channel.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

fn wait_exit(guard: &mut Guard) {
    let deadline = Instant::now() + BOUND;
    loop {
        match guard.0.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "child exited with {status}");
                return;
            }
            None => {
                assert!(Instant::now() < deadline, "child never exited");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

#[test]
fn a_wait_frozen_for_longer_than_its_timeout_still_waits() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // 1 s timeout; the runner applies 300 ms after the parent says "continued".
    let child = Command::new(env!("CARGO_BIN_EXE_sync_child"))
        .args(["aware", "1000", "300"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sync_child");
    let mut guard = Guard(child);
    let pid = guard.0.id();
    let mut stdin = guard.0.stdin.take().unwrap();
    let lines = lines_of(&mut guard.0);
    assert_eq!(
        lines.recv_timeout(BOUND).expect("child never waited"),
        "waiting"
    );

    signal("-STOP", pid).unwrap();
    wait_for_state(pid, |s| s == 'T');
    std::thread::sleep(Duration::from_secs(2)); // the freeze itself is under test
    signal("-CONT", pid).unwrap();
    wait_for_state(pid, |s| s != 'T');
    writeln!(stdin, "continued").unwrap();
    stdin.flush().unwrap();

    let line = lines.recv_timeout(BOUND).expect("child never reported");
    wait_exit(&mut guard);
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
        let child = Command::new(env!("CARGO_BIN_EXE_sync_starved_child"))
            .arg("500")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sync_starved_child");
        let mut guard = Guard(child);
        let lines = lines_of(&mut guard.0);
        let line = lines.recv_timeout(BOUND).expect("child never reported");
        wait_exit(&mut guard);
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

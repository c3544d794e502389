//! N child processes of one binary: spawn with args and environment, send
//! SIGKILL, SIGSTOP and SIGCONT (with the `kill` command), wait with a
//! timeout, and collect what they print, line by line.
//!
//! A child's stdin is a pipe the test holds: a child that runs until told
//! to stop (a runner) reads it and stops cleanly at end of file, which
//! [`Member::close_stdin`] sends (and which also comes when the test process
//! dies, so no such child outlives it).
//!
//! Every child is killed when its [`Member`] (or the [`Cluster`]) is dropped,
//! so a failing test leaves no process behind.
//!
//! ```no_run
//! use std::time::Duration;
//! use whizbang_tests::pg::cluster::Cluster;
//!
//! // In a test: env!("CARGO_BIN_EXE_pg_child").
//! let program = "target/debug/pg_child";
//! let mut cluster = Cluster::spawn(2, |i| {
//!     let mut cmd = Cluster::command(program);
//!     cmd.arg("sleep").env("CHILD", i.to_string());
//!     cmd
//! });
//! cluster[0].wait_line(|l| l == "ready", Duration::from_secs(10)).unwrap();
//! cluster[0].kill();
//! let status = cluster[0].wait_timeout(Duration::from_secs(10)).unwrap();
//! assert!(!status.success());
//! ```

use crate::process::{self, Guard};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// One child: its process, and its stdout lines as they arrive.
#[derive(Debug)]
pub struct Member {
    guard: Guard,
    lines: Receiver<String>,
    seen: Vec<String>,
    status: Option<ExitStatus>,
}

/// What went wrong waiting on a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// The bound passed first.
    TimedOut {
        /// What was being waited for.
        waiting_for: String,
        /// The lines the child had printed.
        lines: Vec<String>,
    },
    /// The child closed its stdout (it exited) before printing the line.
    Closed {
        /// The lines the child had printed.
        lines: Vec<String>,
    },
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitError::TimedOut { waiting_for, lines } => {
                write!(
                    f,
                    "timed out waiting for {waiting_for}; lines so far: {lines:?}"
                )
            }
            WaitError::Closed { lines } => {
                write!(f, "the child closed its stdout first; lines: {lines:?}")
            }
        }
    }
}

impl std::error::Error for WaitError {}

impl Member {
    /// Spawns `cmd` with stdin and stdout piped (stderr inherited).
    ///
    /// # Panics
    /// If the program cannot be started.
    pub fn spawn(mut cmd: Command) -> Member {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let mut guard = Guard(child);
        let lines = process::lines_of(&mut guard);
        Member {
            guard,
            lines,
            seen: Vec::new(),
            status: None,
        }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.guard.id()
    }

    /// Closes its stdin: a child that reads stdin sees end of file (the
    /// runner child then stops cleanly). Closing twice does nothing.
    pub fn close_stdin(&mut self) {
        drop(self.guard.0.stdin.take());
    }

    /// SIGKILL: it dies at once, mid-whatever. Reap it with
    /// [`wait_timeout`](Self::wait_timeout).
    pub fn kill(&mut self) {
        if self.status.is_none() {
            // A stopped process dies of SIGKILL too; no SIGCONT needed.
            let _ = self.guard.0.kill();
        }
    }

    /// SIGSTOP, returning once the kernel reports it stopped.
    ///
    /// # Panics
    /// If `kill` fails or the state does not change within [`process::BOUND`].
    pub fn stop(&self) {
        process::signal("-STOP", self.id()).expect("run kill -STOP");
        process::wait_for_state(self.id(), |s| s == 'T');
    }

    /// SIGCONT, returning once the kernel reports it running again.
    ///
    /// # Panics
    /// As [`stop`](Self::stop).
    pub fn cont(&self) {
        process::signal("-CONT", self.id()).expect("run kill -CONT");
        process::wait_for_state(self.id(), |s| s != 'T');
    }

    /// Waits for it to exit and reaps it; `None` if it is still running after
    /// `bound`.
    pub fn wait_timeout(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.status {
                return Some(status);
            }
            match self.guard.0.try_wait() {
                Ok(Some(status)) => self.status = Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Whether it has exited (and is reaped).
    pub fn has_exited(&mut self) -> bool {
        self.wait_timeout(Duration::ZERO).is_some()
    }

    /// The next line it prints, within `bound`.
    ///
    /// # Errors
    /// [`WaitError`] when the bound passes or stdout closes first.
    pub fn next_line(&mut self, bound: Duration) -> Result<String, WaitError> {
        match self.lines.recv_timeout(bound) {
            Ok(line) => {
                self.seen.push(line.clone());
                Ok(line)
            }
            Err(RecvTimeoutError::Timeout) => Err(WaitError::TimedOut {
                waiting_for: "a line".to_owned(),
                lines: self.seen.clone(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(WaitError::Closed {
                lines: self.seen.clone(),
            }),
        }
    }

    /// Reads lines until one satisfies `want` and returns it; all lines read
    /// are kept in [`lines`](Self::lines).
    ///
    /// # Errors
    /// [`WaitError`] when `bound` passes or stdout closes first.
    pub fn wait_line(
        &mut self,
        want: impl Fn(&str) -> bool,
        bound: Duration,
    ) -> Result<String, WaitError> {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Ok(line) if want(&line) => return Ok(line),
                Ok(_) => {}
                Err(WaitError::TimedOut { lines, .. }) => {
                    return Err(WaitError::TimedOut {
                        waiting_for: "a matching line".to_owned(),
                        lines,
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads every line it prints until it closes its stdout (it exited, or
    /// was killed: its last lines are read from the pipe), within `bound`;
    /// all of them, as [`lines`](Self::lines).
    ///
    /// # Errors
    /// [`WaitError::TimedOut`] when it keeps stdout open past `bound`.
    pub fn read_to_end(&mut self, bound: Duration) -> Result<&[String], WaitError> {
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Ok(_) => {}
                Err(WaitError::Closed { .. }) => return Ok(&self.seen),
                Err(WaitError::TimedOut { lines, .. }) => {
                    return Err(WaitError::TimedOut {
                        waiting_for: "stdout to close".to_owned(),
                        lines,
                    })
                }
            }
        }
    }

    /// Every line received so far (also those that arrived and were not yet
    /// read: this drains what is waiting, without blocking).
    pub fn lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }
}

/// N children of one binary, indexable by their number.
#[derive(Debug)]
pub struct Cluster {
    members: Vec<Member>,
}

impl Cluster {
    /// A command for `program` (use `env!("CARGO_BIN_EXE_<name>")`), to give
    /// args and env to in [`spawn`](Self::spawn).
    pub fn command(program: &str) -> Command {
        Command::new(program)
    }

    /// Spawns `n` children, child `i` from the command `build(i)` returns.
    ///
    /// # Panics
    /// If a child cannot be started (those already started are killed).
    pub fn spawn(n: usize, mut build: impl FnMut(usize) -> Command) -> Cluster {
        Cluster {
            members: (0..n).map(|i| Member::spawn(build(i))).collect(),
        }
    }

    /// How many children it has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Replaces child `i` (killed and reaped first) with a new one from `cmd`:
    /// how a test restarts a process it killed.
    pub fn respawn(&mut self, i: usize, cmd: Command) {
        let old = &mut self.members[i];
        old.kill();
        let _ = old.wait_timeout(process::BOUND);
        self.members[i] = Member::spawn(cmd);
    }

    /// The children.
    pub fn members(&mut self) -> &mut [Member] {
        &mut self.members
    }

    /// Waits for every child to exit, within `bound` in all; their statuses
    /// in order, or the numbers of those still running.
    ///
    /// # Errors
    /// The indexes of the children that did not exit in time.
    pub fn wait_all(&mut self, bound: Duration) -> Result<Vec<ExitStatus>, Vec<usize>> {
        let deadline = Instant::now() + bound;
        let statuses: Vec<Option<ExitStatus>> = self
            .members
            .iter_mut()
            .map(|m| m.wait_timeout(deadline.saturating_duration_since(Instant::now())))
            .collect();
        let running: Vec<usize> = statuses
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.is_none().then_some(i))
            .collect();
        if running.is_empty() {
            Ok(statuses.into_iter().flatten().collect())
        } else {
            Err(running)
        }
    }
}

impl std::ops::Index<usize> for Cluster {
    type Output = Member;
    fn index(&self, i: usize) -> &Member {
        &self.members[i]
    }
}

impl std::ops::IndexMut<usize> for Cluster {
    fn index_mut(&mut self, i: usize) -> &mut Member {
        &mut self.members[i]
    }
}

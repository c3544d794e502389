//! Cross-crate integration tests live in `tests/tests/`. This library holds what
//! the process tests share: [`process`] for the parent side (spawn a child,
//! freeze it with SIGSTOP, read its lines, wait for it to exit) and [`child`]
//! for the helper binaries in `src/bin` (report a line, name an outcome).
//!
//! ```no_run
//! use whizbang_tests::process::{self, Guard};
//!
//! let mut child: Guard = process::spawn("sync_child", &["aware"]);
//! let lines = process::lines_of(&mut child);
//! let waiting = lines.recv_timeout(process::BOUND).expect("child never waited");
//! assert_eq!(waiting, "waiting");
//! process::freeze(child.id(), std::time::Duration::from_secs(1));
//! ```
//!
//! [`pg`] holds what the PostgreSQL tests share: fresh databases, a private
//! server to restart, clusters of child processes, and the ledger and fold
//! checks that count lost and duplicated work.

pub mod pg;

pub mod process {
    //! The parent side of a process test. Every wait is bounded by [`BOUND`];
    //! a step that takes longer fails the test.

    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// No step of a process test may take longer than this.
    pub const BOUND: Duration = Duration::from_secs(60);

    /// A spawned child that is killed (SIGCONT first, in case it is stopped)
    /// when dropped before it exited, so a failing test leaves no process.
    #[derive(Debug)]
    pub struct Guard(pub Child);

    impl Guard {
        /// The child's process id.
        pub fn id(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            if matches!(self.0.try_wait(), Ok(None)) {
                let _ = signal("-CONT", self.0.id());
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }

    /// Spawns `program` with `args`, stdin and stdout piped, stderr inherited.
    ///
    /// # Panics
    /// If the program cannot be started.
    pub fn spawn(program: &str, args: &[&str]) -> Guard {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Guard(child)
    }

    /// Sends `sig` (such as `-STOP`) to `pid` with the `kill` binary.
    ///
    /// # Panics
    /// If `kill` runs but fails.
    pub fn signal(sig: &str, pid: u32) -> std::io::Result<()> {
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()?;
        assert!(status.success(), "kill {sig} {pid} failed: {status}");
        Ok(())
    }

    /// The process state letter from `/proc/<pid>/stat` ('T' when stopped).
    pub fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after_name = stat.rsplit_once(')')?.1;
        after_name.trim_start().chars().next()
    }

    /// Polls until the state of `pid` satisfies `want`.
    ///
    /// # Panics
    /// If that takes longer than [`BOUND`].
    pub fn wait_for_state(pid: u32, want: impl Fn(char) -> bool) {
        let deadline = Instant::now() + BOUND;
        while !state(pid).is_some_and(&want) {
            assert!(
                Instant::now() < deadline,
                "child {pid} never reached the state"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops `pid` (SIGSTOP), keeps it stopped for `period`, and continues it
    /// (SIGCONT), each time waiting until the kernel reports the new state.
    ///
    /// # Panics
    /// If a signal fails or a state change takes longer than [`BOUND`].
    pub fn freeze(pid: u32, period: Duration) {
        signal("-STOP", pid).unwrap();
        wait_for_state(pid, |s| s == 'T');
        std::thread::sleep(period); // the freeze itself is what is under test
        signal("-CONT", pid).unwrap();
        wait_for_state(pid, |s| s != 'T');
    }

    /// The child's stdout, line by line, on a channel.
    ///
    /// # Panics
    /// If the child's stdout was not piped or was already taken.
    pub fn lines_of(child: &mut Guard) -> mpsc::Receiver<String> {
        let stdout = child.0.stdout.take().expect("the child's stdout is piped");
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

    /// Waits for the child to exit and asserts that it succeeded.
    ///
    /// # Panics
    /// If it fails, or does not exit within [`BOUND`].
    pub fn wait_exit(guard: &mut Guard) {
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

    /// The number after `name=` in a child's report line.
    ///
    /// ```
    /// let line = "outcome=Synced elapsed_ms=12 wall_ms=40";
    /// assert_eq!(whizbang_tests::process::field(line, "wall_ms"), 40);
    /// ```
    ///
    /// # Panics
    /// If the line has no such field.
    pub fn field(line: &str, name: &str) -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    }
}

pub mod child {
    //! The child side of a process test: the helper binaries in `src/bin`.

    use std::io::Write;
    use whizbang_core::SyncOutcome;

    /// Declares, in the calling binary, the `Ticked` event (keyed by `clock`),
    /// the async `Ticks` perspective counting it (model `TickCount`) that each
    /// child waits on, and `one_unapplied_tick()`: a runtime with its runner
    /// paused and a scope that published one tick. A macro, not items here, so
    /// that the registration lands in the child binary itself.
    #[macro_export]
    macro_rules! child_ticks {
        () => {
            #[derive(
                ::whizbang_core::Event, ::serde::Serialize, ::serde::Deserialize, Debug, Clone,
            )]
            #[event(name = "child.ticked")]
            struct Ticked {
                #[stream_key]
                clock: ::uuid::Uuid,
            }

            #[derive(Default, Clone, ::serde::Serialize, ::serde::Deserialize)]
            struct TickCount {
                n: u64,
            }

            struct Ticks;

            #[::whizbang_core::perspective(model = TickCount, name = "child.ticks")]
            impl Ticks {
                fn ticked(c: &mut TickCount, _: &Ticked) {
                    c.n += 1;
                }
            }

            /// A runtime whose runner is paused and a scope that published one
            /// tick: a wait on `Ticks` ends only once the runner resumes.
            async fn one_unapplied_tick(
            ) -> ::std::result::Result<(::whizbang_core::Runtime, ::whizbang_core::Scope), String> {
                let rt = ::whizbang_core::Runtime::in_memory().map_err(|e| e.to_string())?;
                rt.runner().pause();
                let scope = rt.scope();
                scope
                    .publish(Ticked {
                        clock: ::uuid::Uuid::now_v7(),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((rt, scope))
            }
        };
    }

    /// Writes `line` to stdout and flushes it, so the parent reads it at once.
    pub fn say(line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// The outcome as the parent matches it: `Synced`, `TimedOut`,
    /// `NoPendingEvents`, `Failed(<message>)`, or its debug form.
    ///
    /// ```
    /// use whizbang_core::SyncOutcome;
    /// assert_eq!(whizbang_tests::child::outcome_label(&SyncOutcome::Synced), "Synced");
    /// ```
    pub fn outcome_label(outcome: &SyncOutcome) -> String {
        match outcome {
            SyncOutcome::Synced => "Synced".to_owned(),
            SyncOutcome::TimedOut => "TimedOut".to_owned(),
            SyncOutcome::NoPendingEvents => "NoPendingEvents".to_owned(),
            SyncOutcome::Failed { message, .. } => format!("Failed({message})"),
            other => format!("{other:?}"),
        }
    }
}

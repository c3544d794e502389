//! A private PostgreSQL server for tests that stop or restart it.
//!
//! [`PgServer::start`] finds the installed binaries
//! (`/usr/lib/postgresql/<newest>/bin/{initdb,pg_ctl}`), runs `initdb` into a
//! temporary directory (trust auth, user `postgres`), and starts the server on
//! a free port of 127.0.0.1 with its unix socket in that directory too.
//! [`stop`](PgServer::stop) (fast shutdown), [`start_again`](PgServer::start_again),
//! [`restart`](PgServer::restart) and [`crash_restart`](PgServer::crash_restart)
//! (immediate shutdown, then crash recovery) keep the port and the data.
//! Dropping it stops the server (immediate) and removes the directory.
//!
//! PostgreSQL refuses to run as root: when the test runs as root, every
//! command runs as the `postgres` OS user (`runuser -u postgres --`), which
//! then owns the directory. The shared server is never touched.
//!
//! The methods block (they wait for `pg_ctl`); from async code call them
//! through `tokio::task::spawn_blocking`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The prefix of the temporary directories made here.
const DIR_PREFIX: &str = "wh_pg_";

/// How long `pg_ctl` may wait for a start or a stop, in seconds.
const PG_CTL_WAIT_SECS: &str = "60";

/// A PostgreSQL server of the test's own, in a temporary directory.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// Why the private server could not be set up.
#[derive(Debug)]
pub struct ServerError(pub String);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerError {}

impl PgServer {
    /// Initialises and starts a private server.
    ///
    /// # Errors
    /// When no PostgreSQL binaries are installed, or `initdb` or the first
    /// start fails (the message carries the command's output and the log).
    pub fn start() -> Result<PgServer, ServerError> {
        let bin = find_bin()?;
        let as_postgres = running_as_root();
        clean_leftovers(&bin, as_postgres);
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}_{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir(&dir)
            .map_err(|e| ServerError(format!("create {}: {e}", dir.display())))?;
        let mut server = PgServer {
            bin,
            dir,
            port: 0,
            as_postgres,
        };
        if as_postgres {
            server.run(
                Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(&server.dir),
                "chown the server directory to postgres",
            )?;
        }
        let initdb = server.pg("initdb");
        let mut cmd = server.command(&initdb);
        cmd.arg("-D").arg(server.data()).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        server.run(&mut cmd, "initdb")?;

        // A port can be taken between finding it free and binding it: try a few.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.start_again() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ServerError("the server never started".to_owned())))
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its temporary directory (data in `data/`, the unix socket, `log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A URL for database `postgres` as user `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it with a fast shutdown (open sessions are ended, committed work
    /// is kept) and waits until it is down.
    ///
    /// # Errors
    /// When `pg_ctl stop` fails.
    pub fn stop(&self) -> Result<(), ServerError> {
        self.pg_ctl(&["stop", "-m", "fast"])
    }

    /// Starts it again on the same port and data directory and waits until it
    /// accepts connections.
    ///
    /// # Errors
    /// When `pg_ctl start` fails.
    pub fn start_again(&self) -> Result<(), ServerError> {
        let log = self.dir.join("log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=60",
            self.port,
            self.dir.display()
        );
        let log = log.to_string_lossy().into_owned();
        self.pg_ctl(&["start", "-l", &log, "-o", &opts])
    }

    /// `pg_ctl restart -m fast`: every open session ends, committed work is
    /// kept, and it waits until the server accepts connections again.
    ///
    /// # Errors
    /// When `pg_ctl restart` fails.
    pub fn restart(&self) -> Result<(), ServerError> {
        // `restart` reuses the options of the last start (postmaster.opts);
        // the log keeps the server's output off our pipes.
        let log = self.dir.join("log").to_string_lossy().into_owned();
        self.pg_ctl(&["restart", "-m", "fast", "-l", &log])
    }

    /// A crash and a restart: `pg_ctl stop -m immediate` (every server
    /// process quits at once, no checkpoint, as if the server died), then a
    /// start, which replays the write-ahead log. Committed work is kept
    /// (`fsync` is off, but the machine does not crash, so the OS still holds
    /// every write).
    ///
    /// # Errors
    /// When the stop or the start fails.
    pub fn crash_restart(&self) -> Result<(), ServerError> {
        self.pg_ctl(&["stop", "-m", "immediate"])?;
        self.start_again()
    }

    /// Whether the server is running (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        let pg_ctl = self.pg("pg_ctl");
        let mut cmd = self.command(&pg_ctl);
        cmd.arg("status").arg("-D").arg(self.data());
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), ServerError> {
        let pg_ctl = self.pg("pg_ctl");
        let mut cmd = self.command(&pg_ctl);
        cmd.args(args)
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", PG_CTL_WAIT_SECS]);
        self.run(&mut cmd, &format!("pg_ctl {}", args[0]))
    }

    /// A command for `program`, run as `postgres` when we are root.
    fn command(&self, program: &Path) -> Command {
        command_as(program, self.as_postgres)
    }

    fn run(&self, cmd: &mut Command, what: &str) -> Result<(), ServerError> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ServerError(format!("{what}: cannot run {cmd:?}: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        Err(ServerError(format!(
            "{what} failed ({}): {}\nserver log:\n{}",
            out.status,
            output_text(&out),
            self.log()
        )))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` as a command, through `runuser -u postgres --` when `as_postgres`.
fn command_as(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb` and `pg_ctl`.
fn find_bin() -> Result<PathBuf, ServerError> {
    let root = Path::new("/usr/lib/postgresql");
    let entries = std::fs::read_dir(root).map_err(|e| {
        ServerError(format!(
            "no PostgreSQL server binaries: cannot read {}: {e}. Install the PostgreSQL \
             server package (initdb and pg_ctl)",
            root.display()
        ))
    })?;
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        ServerError(format!(
            "no {}/<version>/bin holds initdb and pg_ctl: install the PostgreSQL server package",
            root.display()
        ))
    })
}

/// Whether this process runs as root (uid 0), read from `/proc/self/status`.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            let effective = line.split_whitespace().nth(2)?;
            Some(effective == "0")
        })
        .unwrap_or(false)
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, ServerError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ServerError(format!("find a free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| ServerError(format!("find a free port: {e}")))
}

/// Stops and removes the servers of earlier test processes that are no longer
/// running (killed before their `Drop` ran); their directory names carry the
/// process id.
fn clean_leftovers(bin: &Path, as_postgres: bool) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let pid = rest.split('_').next().unwrap_or_default();
        if pid.is_empty() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let data = entry.path().join("data");
        if data.join("postmaster.pid").exists() {
            let _ = command_as(&bin.join("pg_ctl"), as_postgres)
                .args(["stop", "-m", "immediate", "-w", "-t", "10", "-D"])
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

//! A TCP proxy in front of PostgreSQL that can lose the answer to a COMMIT.
//!
//! [`CommitCutter::start`] listens on a free port of 127.0.0.1 and relays
//! every connection to the server. After [`cut_next_commit`](CommitCutter::cut_next_commit),
//! the next `COMMIT` a client sends (a simple-query message, which is how
//! sqlx commits) is relayed to the server; the server's answer is read and
//! thrown away, and both sides of that connection are closed. The server
//! committed, the client saw its connection die while committing: exactly
//! the case a store must report as "may or may not have been stored".
//!
//! Plain threads and std sockets: no async runtime needed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A simple-query message carrying exactly `COMMIT`: type `Q`, length 11
/// (itself and the NUL-terminated text), `COMMIT\0`.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

/// A relay to a PostgreSQL server that cuts connections at a COMMIT on request.
#[derive(Debug)]
pub struct CommitCutter {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// How many COMMITs still to cut.
    armed: AtomicUsize,
    /// How many were cut.
    cut: AtomicUsize,
    /// Set when the cutter is dropped: the accept loop ends.
    closed: AtomicBool,
}

impl CommitCutter {
    /// Starts relaying to `server` (host:port of PostgreSQL).
    ///
    /// # Errors
    /// When no local port can be bound.
    pub fn start(server: SocketAddr) -> std::io::Result<CommitCutter> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept_shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accept_shared.closed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let shared = Arc::clone(&accept_shared);
                std::thread::spawn(move || relay(client, server, &shared));
            }
        });
        Ok(CommitCutter { addr, shared })
    }

    /// The address clients connect to instead of the server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the connection that sends the next COMMIT, after the server has
    /// committed and answered.
    pub fn cut_next_commit(&self) {
        self.shared.armed.fetch_add(1, Ordering::SeqCst);
    }

    /// How many COMMITs were cut so far.
    pub fn cut(&self) -> usize {
        self.shared.cut.load(Ordering::SeqCst)
    }
}

impl Drop for CommitCutter {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `closed`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Relays one client connection until either side closes.
fn relay(client: TcpStream, server: SocketAddr, shared: &Arc<Shared>) {
    let Ok(upstream) = TcpStream::connect(server) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(client_read), Ok(upstream_write)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let doomed = Arc::new(AtomicBool::new(false));

    // Client to server: watch for COMMIT.
    let to_server = {
        let (shared, doomed) = (Arc::clone(shared), Arc::clone(&doomed));
        std::thread::spawn(move || {
            let (mut from, mut to) = (client_read, upstream_write);
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                if contains(chunk, COMMIT) && take_one(&shared.armed) {
                    doomed.store(true, Ordering::SeqCst);
                }
                if to.write_all(chunk).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        })
    };

    // Server to client: once doomed, swallow the answer and close both.
    let (mut from, mut to) = (upstream, client);
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if doomed.load(Ordering::SeqCst) {
            shared.cut.fetch_add(1, Ordering::SeqCst);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to_server.join();
}

/// Takes one from `armed` if it is above zero.
fn take_one(armed: &AtomicUsize) -> bool {
    armed
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

//! Helpers shared by the integration test binaries (`mod common;`).
//!
//! Nothing here registers a message, receptor or perspective: every binary
//! that includes this module keeps only the handlers it declares itself.
#![allow(dead_code)] // each binary uses a different subset

pub(crate) mod spans;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
// The backend seam, not the modules behind it (which may move).
use whizbang_core::backend::{
    BoxFuture, MemoryEventStore, MemoryPerspectiveStore, StoreSyncBackend, SyncBackend,
    SyncInquiry, SyncInquiryResult,
};
use whizbang_core::{
    Error, Perspective, PerspectiveSyncOptions, Runtime, Scope, StreamId, SyncOutcome, SyncResult,
};

/// No awaited step of a test may take longer than this.
pub(crate) const BOUND: Duration = Duration::from_secs(30);

/// Awaits `f`, failing the test if it takes longer than [`BOUND`].
pub(crate) async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("a bounded wait elapsed: something never woke up")
}

/// Yields until `cond` holds, within [`BOUND`] (for states with no signal,
/// such as "a waiter registered").
pub(crate) async fn until(mut cond: impl FnMut() -> bool) {
    bounded(async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// `n` milliseconds.
pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How many events the runtime's store holds on `stream`.
pub(crate) async fn stream_len(rt: &Runtime, stream: impl Into<StreamId>) -> u64 {
    rt.event_store()
        .stream_version(stream.into())
        .await
        .unwrap()
}

/// The sentence of an [`Error::InvalidInput`]; fails the test on any other error.
pub(crate) fn invalid_input(err: &Error) -> &str {
    match err {
        Error::InvalidInput(message) => message,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// The failed event (stream, version) and the failure's message of a
/// [`SyncOutcome::Failed`]; fails the test on any other outcome.
pub(crate) fn failed(outcome: &SyncOutcome) -> (StreamId, u64, &str) {
    match outcome {
        SyncOutcome::Failed {
            stream,
            version,
            message,
        } => (*stream, *version, message),
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// Asserts that a value (an error, an outcome) matches a pattern, printing it
/// if not: `assert_matches!(err, Error::UnknownPerspective { .. })`, guards
/// allowed. The value is matched by reference.
#[macro_export]
macro_rules! assert_matches {
    ($err:expr, $($pattern:tt)+) => {{
        let err = &$err;
        assert!(
            matches!(err, $($pattern)+),
            "expected {}, got {err:?}",
            stringify!($($pattern)+)
        );
    }};
}

/// An in-memory runtime whose runner is paused: async perspectives apply only
/// once the test calls `rt.runner().resume()`.
pub(crate) fn paused_runtime() -> Runtime {
    let rt = Runtime::in_memory().unwrap();
    rt.runner().pause();
    rt
}

/// A sync backend over the memory stores that counts the inquiries it forwards.
struct Counting {
    inner: StoreSyncBackend,
    calls: Arc<AtomicUsize>,
}

impl SyncBackend for Counting {
    fn inquire<'a>(
        &'a self,
        inquiries: &'a [SyncInquiry],
    ) -> BoxFuture<'a, whizbang_core::Result<Vec<SyncInquiryResult>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.inquire(inquiries)
    }
}

/// An in-memory runtime whose sync backend counts its inquiries (batches of
/// waiters asked about), and that count.
pub(crate) fn counting_runtime() -> (Runtime, Arc<AtomicUsize>) {
    let events = MemoryEventStore::new();
    let perspectives = MemoryPerspectiveStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let rt = Runtime::builder()
        .event_store(events.clone())
        .perspective_store(perspectives.clone())
        .sync_backend(Counting {
            inner: StoreSyncBackend::new(Arc::new(events), Arc::new(perspectives)),
            calls: Arc::clone(&calls),
        })
        .build()
        .unwrap();
    (rt, calls)
}

/// Waits, bounded, on `P` through the scope's own awaiter and unwraps the
/// result (an error fails the test; timeouts and failures are outcomes).
pub(crate) async fn scope_wait<P: Perspective>(
    scope: &Scope,
    options: impl Into<PerspectiveSyncOptions>,
) -> SyncResult {
    bounded(scope.sync_awaiter().wait::<P>(options))
        .await
        .unwrap()
}

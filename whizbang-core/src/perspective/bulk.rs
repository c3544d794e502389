//! The bulk apply hook: a perspective may see each batch of models its
//! events changed, all at once, before the batch commits (for bulk upserts
//! into a search index, a cache or a table of its own).
//!
//! Declared with the perspective: `#[perspective(model = M, bulk = on_batch)]`
//! names an `async fn on_batch(batch: BulkBatch<'_, M>) -> Result<(), E>`
//! (or returning `()`) of the same impl. Every path that commits models of
//! the perspective calls it, once per commit, with the models as they are
//! about to be written: the runner's batches (a `batch(n, ..)` strategy's
//! run is one call with up to n events' models), a stream caught up alone
//! (a batch of one), explicit syncs, keyed batches, and a rebuild's chunks
//! ([`BulkBatch::is_rebuild`]). Models the batch did not change are not in it.
//!
//! **Failure:** an error or a panic from the hook commits nothing of the
//! batch, as if the model did not serialise. The models are tried again one
//! by one; a model whose hook fails on its own has its cursor marked failed
//! at the first event of its batch with the hook's message, and its waiters
//! wake with that failure. Retry (or skip) recovers it like any apply
//! failure. So the hook sees every committed change at least once; it may
//! see a change again after a failure or a crash before the commit, so make
//! its writes idempotent (upserts keyed by [`BulkItem::key`]).
//!
//! Inline perspectives cannot have a bulk hook: they apply inside the
//! append's transaction, where no user future may run.

use super::bulk_batch::{BulkBatch, BulkItem};
use super::ApplyError;
use crate::store::{AnyModel, BoxFuture, ModelKey, StoredEvent};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What a bulk hook's call returns: a `Send` future whose output is `()` or
/// `Result<(), E: Display>`. Used by generated code; not part of the public
/// API.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a bulk hook must be an `async fn` returning `()` or `Result<(), E>` with `E: Display`, whose future is `Send`",
    label = "this call is not such a future",
    note = "declare it `async fn hook(batch: BulkBatch<'_, Model>) -> Result<(), MyError>`"
)]
pub trait BulkHookFuture: Future<Output = Self::Done> + Send {
    /// The hook's output.
    type Done: super::ApplyOutput;
}

impl<F> BulkHookFuture for F
where
    F: Future + Send,
    F::Output: super::ApplyOutput,
{
    type Done = F::Output;
}

/// A bulk hook's call as the erased future a registration keeps, checked
/// at compile time with a message that says what a hook must be. Used by
/// generated code.
#[doc(hidden)]
pub fn bulk_hook<'a, F: BulkHookFuture + 'a>(call: F) -> BoxFuture<'a, Result<(), ApplyError>> {
    Box::pin(async move { super::ApplyOutput::into_apply_result(call.await) })
}

/// One changed model, erased, as the engine hands it to a registration.
pub(crate) struct Change<'a> {
    pub(crate) key: ModelKey,
    /// `None`: deleted.
    pub(crate) model: Option<&'a dyn AnyModel>,
    pub(crate) events: Vec<&'a StoredEvent>,
}

/// A registration's erased hook.
pub(crate) type BulkFn =
    for<'a> fn(&'static str, &'a [Change<'a>], bool) -> BoxFuture<'a, Result<(), ApplyError>>;

/// The erased hook of perspective `P`: the typed batch, then `P::bulk`.
pub(crate) fn erased_bulk<'a, P: super::Perspective>(
    perspective: &'static str,
    changes: &'a [Change<'a>],
    rebuild: bool,
) -> BoxFuture<'a, Result<(), ApplyError>> {
    let mut items = Vec::with_capacity(changes.len());
    for change in changes {
        let model = match change.model {
            None => None,
            Some(m) => match m.as_any().downcast_ref::<P::Model>() {
                Some(m) => Some(m),
                None => {
                    return Box::pin(std::future::ready(Err(ApplyError(format!(
                        "perspective {perspective}'s bulk hook was handed a model of another type"
                    )))))
                }
            },
        };
        items.push(BulkItem::new(change.key, model, change.events.clone()));
    }
    P::bulk(BulkBatch::new(perspective, items, rebuild))
}

/// The message for a panic in the hook.
fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    match crate::util::panic_text(panic) {
        Some(text) => format!("the bulk hook panicked: {text}"),
        None => "the bulk hook panicked".to_owned(),
    }
}

/// Polls a future with a panic turned into an error message.
struct CatchUnwind<F>(F);

impl<F: Future<Output = Result<(), ApplyError>> + Unpin> Future for CatchUnwind<F> {
    type Output = Result<(), ApplyError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => Poll::Ready(Err(ApplyError(panicked(&*panic)))),
        }
    }
}

/// Runs `hook` over `changes` (skipped when there are none), a panic
/// contained: `Err` is the sentence recorded as the cursor's failure.
pub(crate) async fn run_hook(
    hook: BulkFn,
    perspective: &'static str,
    changes: &[Change<'_>],
    rebuild: bool,
) -> Result<(), String> {
    if changes.is_empty() {
        return Ok(());
    }
    let started =
        std::panic::catch_unwind(AssertUnwindSafe(|| hook(perspective, changes, rebuild)))
            .map_err(|panic| panicked(&*panic))?;
    let span = tracing::debug_span!(
        "whizbang.perspective.bulk",
        perspective,
        models = changes.len(),
        rebuild
    );
    tracing::Instrument::instrument(CatchUnwind(started), span)
        .await
        .map_err(|e| {
            tracing::warn!(perspective, error = %e, "bulk hook failed; nothing of its batch was committed");
            format!(
                "the bulk hook of perspective `{perspective}` failed ({e}); nothing of this \
                 batch was committed. Fix the cause, then retry the perspective"
            )
        })
}

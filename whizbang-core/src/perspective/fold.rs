//! The live fold: a perspective's apply functions run over one stream's events
//! on demand, with nothing stored (Marten's `AggregateStream`; cqrs-es and esrs
//! load aggregates the same way). A receptor decides from the state it folds and
//! appends with [`ExpectedVersion::Exact`](crate::ExpectedVersion::Exact) of the
//! version it folded, so a concurrent writer makes the append fail instead of
//! deciding on stale state.
//!
//! This module owns [`Versioned`], a model with its id and the stream version it
//! reflects (also what [`LensQuery::list`](crate::LensQuery::list) returns), and
//! the fold. It reads the event store only: it never claims, commits or marks a
//! cursor failed.

use crate::error::{Error, Result};
use crate::message::StreamId;
use crate::perspective::engine::panic_message;
use crate::perspective::{ModelOp, Perspective};
use crate::store::EventStore;
use serde::{Deserialize, Serialize};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A read model with its id and the stream version it reflects.
///
/// Dereferences to the model, so `list.iter().map(|m| m.field)` reads the
/// model's fields directly. Serializes as `{"id", "version", "model"}` (an
/// HTTP handler can return it as it is, the version serving as an ETag).
///
/// ```
/// use whizbang_core::{StreamId, Versioned};
///
/// let v = Versioned { id: StreamId::from(uuid::Uuid::nil()), version: 3, model: 7_u32 };
/// assert_eq!(*v + 1, 8); // reads the model
/// assert_eq!(v.version, 3);
/// assert_eq!(
///     serde_json::to_string(&v).unwrap(),
///     r#"{"id":"00000000-0000-0000-0000-000000000000","version":3,"model":7}"#
/// );
/// assert_eq!(v.into_inner(), 7);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Versioned<M> {
    /// The model's id (its stream).
    pub id: StreamId,
    /// The stream version the model reflects (0: no event yet, the model is its `Default`).
    pub version: u64,
    /// The model.
    pub model: M,
}

impl<M> Versioned<M> {
    /// The model, without its id and version.
    #[must_use]
    pub fn into_inner(self) -> M {
        self.model
    }
}

impl<M> std::ops::Deref for Versioned<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.model
    }
}

impl<M> std::ops::DerefMut for Versioned<M> {
    fn deref_mut(&mut self) -> &mut M {
        &mut self.model
    }
}

/// Folds `P`'s apply functions over every event of `stream`, from its `Default`.
///
/// Events `P` does not handle are passed over (the version still counts them:
/// it is the stream's version, the one to expect when appending). User code
/// (`Default`, decoding, apply) runs under `catch_unwind`: an error or a panic is
/// [`Error::FoldFailed`], naming the perspective, the stream and the version.
pub(crate) async fn fold<P: Perspective>(
    events: &dyn EventStore,
    stream: StreamId,
) -> Result<Versioned<P::Model>> {
    if P::KEYED {
        return Err(Error::InvalidInput(format!(
            "perspective `{}` is keyed (`key = ..`): its models gather events of many streams, \
             so a fold of one stream is not one of them; read the model with \
             `Lens::get_by_key` instead",
            P::NAME
        )));
    }
    let stored = events.read_stream(stream, 0).await?;
    let failed = |version: u64, message: String| Error::FoldFailed {
        perspective: P::NAME,
        stream,
        version,
        message,
    };
    let mut model = catch_unwind(P::Model::default).map_err(|p| {
        failed(
            0,
            panic_message("constructing the model (its `Default`)", &*p),
        )
    })?;
    let mut version = 0;
    for ev in &stored {
        match catch_unwind(AssertUnwindSafe(|| P::apply_op(&mut model, ev))) {
            // A tombstone: a later event starts from a fresh model.
            Ok(Ok(Some(ModelOp::Delete))) => {
                model = catch_unwind(P::Model::default).map_err(|p| {
                    failed(
                        ev.stream_version,
                        panic_message("constructing the model (its `Default`)", &*p),
                    )
                })?;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(failed(ev.stream_version, e.0)),
            Err(p) => return Err(failed(ev.stream_version, panic_message("apply", &*p))),
        }
        version = ev.stream_version;
    }
    Ok(Versioned {
        id: stream,
        version,
        model,
    })
}

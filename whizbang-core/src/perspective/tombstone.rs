//! Tombstones: an apply method that deletes its model.
//!
//! The types an apply method returns to delete its model; see [`Tombstone`].

use super::{ApplyError, ApplyOutput, ModelOp};

/// An apply method returns [`Tombstone`] (or `Result<Tombstone, E>`, or a
/// [`ModelOp`] when it decides at run time) to delete the model of its
/// stream. The fold records the deletion; the store removes the model but
/// keeps the cursor, so later events are not applied again and waiters stay
/// exact; a lens `get` returns `None` afterwards. A later event on the same
/// stream starts a fresh model from `Default`, as for a new stream (an event
/// the perspective does not handle keeps the model deleted when it is
/// applied in the same batch as the tombstone; alone, in a later batch, it
/// stores a `Default` model, as a new stream's first unhandled event does).
///
/// ```
/// use whizbang_core::{perspective, Event, ModelOp, Tombstone};
/// # #[derive(Event, serde::Serialize, serde::Deserialize)]
/// # #[event(name = "doc.tomb.opened")] struct Opened { #[stream_key] id: uuid::Uuid }
/// # #[derive(Event, serde::Serialize, serde::Deserialize)]
/// # #[event(name = "doc.tomb.closed")] struct Closed { #[stream_key] id: uuid::Uuid, purge: bool }
/// struct OpenCarts;
/// #[perspective(model = u32, name = "doc.tomb.carts")]
/// impl OpenCarts {
///     fn opened(n: &mut u32, _: &Opened) { *n += 1; }
///     fn closed(_: &mut u32, e: &Closed) -> ModelOp {
///         if e.purge { ModelOp::Delete } else { ModelOp::Keep }
///     }
/// }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tombstone;

impl ApplyOutput for Tombstone {
    fn into_apply_result(self) -> Result<(), ApplyError> {
        Ok(())
    }
    fn into_model_op(self) -> Result<ModelOp, ApplyError> {
        Ok(ModelOp::Delete)
    }
}

impl ApplyOutput for ModelOp {
    fn into_apply_result(self) -> Result<(), ApplyError> {
        Ok(())
    }
    fn into_model_op(self) -> Result<ModelOp, ApplyError> {
        Ok(self)
    }
}

impl<E: std::fmt::Display> ApplyOutput for Result<Tombstone, E> {
    fn into_apply_result(self) -> Result<(), ApplyError> {
        self.map(|_| ()).map_err(|e| ApplyError(e.to_string()))
    }
    fn into_model_op(self) -> Result<ModelOp, ApplyError> {
        self.map(|_| ModelOp::Delete)
            .map_err(|e| ApplyError(e.to_string()))
    }
}

impl<E: std::fmt::Display> ApplyOutput for Result<ModelOp, E> {
    fn into_apply_result(self) -> Result<(), ApplyError> {
        self.map(|_| ()).map_err(|e| ApplyError(e.to_string()))
    }
    fn into_model_op(self) -> Result<ModelOp, ApplyError> {
        self.map_err(|e| ApplyError(e.to_string()))
    }
}

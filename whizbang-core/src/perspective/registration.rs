//! A perspective as `#[perspective]` registers it: its name, mode, event
//! types and the erased functions the engine calls (new model, decode, apply).
//! The registry collects these; this file imports nothing of it.

use super::{ApplyError, ModelOp, Perspective, PerspectiveMode};
use crate::store::{AnyModel, ModelKey, StoredEvent};
use serde_json::value::RawValue;
use std::any::TypeId;

/// The key of the model an event folds into, for a keyed perspective.
pub(crate) type KeyOf = fn(&StoredEvent) -> Result<Option<ModelKey>, ApplyError>;

/// A perspective, as registered by `#[perspective]`.
#[derive(Debug)]
pub struct PerspectiveRegistration {
    /// The perspective's name.
    pub name: &'static str,
    /// The perspective type, as written.
    pub type_name: &'static str,
    /// The module it was declared in.
    pub module_path: &'static str,
    /// Inline or async.
    pub mode: PerspectiveMode,
    /// When its runner applies pending events (see [`strategy`](super::strategy)).
    pub strategy: &'static dyn super::strategy::SyncStrategy,
    /// Wire names of the event types it handles.
    pub event_types: &'static [&'static str],
    /// The version of its apply code ([`Perspective::VERSION`]).
    pub version: u32,
    /// The `TypeId` of the perspective type.
    pub perspective_type: fn() -> TypeId,
    /// Whether its apply code reads events' metadata ([`Perspective::READS_METADATA`]).
    pub reads_metadata: bool,
    pub(crate) new_model: fn() -> Box<dyn AnyModel>,
    pub(crate) decode_model: fn(&RawValue) -> Result<Box<dyn AnyModel>, serde_json::Error>,
    pub(crate) apply: fn(&mut dyn AnyModel, &StoredEvent) -> Result<Option<ModelOp>, ApplyError>,
    /// For a keyed perspective: the key of the model an event folds into.
    pub(crate) key_of: Option<KeyOf>,
    /// Its bulk apply hook, when it has one.
    pub(crate) bulk: Option<super::bulk::BulkFn>,
}

fn new_model<P: Perspective>() -> Box<dyn AnyModel> {
    Box::new(P::Model::default())
}

fn decode_model<P: Perspective>(raw: &RawValue) -> Result<Box<dyn AnyModel>, serde_json::Error> {
    Ok(Box::new(serde_json::from_str::<P::Model>(raw.get())?))
}

fn erased_apply<P: Perspective>(
    model: &mut dyn AnyModel,
    event: &StoredEvent,
) -> Result<Option<ModelOp>, ApplyError> {
    match model.as_any_mut().downcast_mut::<P::Model>() {
        Some(m) => P::apply_op(m, event),
        None => Err(ApplyError(format!(
            "perspective {} was handed a model of another type",
            P::NAME
        ))),
    }
}

impl PerspectiveRegistration {
    /// The registration of perspective `P`. For generated code.
    #[doc(hidden)]
    #[must_use]
    pub const fn of<P: Perspective>(type_name: &'static str, module_path: &'static str) -> Self {
        PerspectiveRegistration {
            name: P::NAME,
            type_name,
            module_path,
            mode: P::MODE,
            strategy: P::STRATEGY,
            event_types: P::EVENT_TYPES,
            version: P::VERSION,
            perspective_type: TypeId::of::<P>,
            reads_metadata: P::READS_METADATA,
            new_model: new_model::<P>,
            decode_model: decode_model::<P>,
            apply: erased_apply::<P>,
            key_of: if P::KEYED { Some(P::model_key) } else { None },
            bulk: if P::BULK {
                Some(super::bulk::erased_bulk::<P>)
            } else {
                None
            },
        }
    }

    /// Whether its models are keyed by a value taken from each event (one
    /// cursor for the perspective, in the store's global order) rather than
    /// by stream.
    #[must_use]
    pub fn is_keyed(&self) -> bool {
        self.key_of.is_some()
    }

    /// Whether it has a bulk apply hook (see [`BulkBatch`](super::BulkBatch)).
    #[must_use]
    pub fn has_bulk_hook(&self) -> bool {
        self.bulk.is_some()
    }

    /// Whether it handles events with this wire name.
    #[must_use]
    pub fn handles(&self, event_type: &str) -> bool {
        self.event_types.contains(&event_type)
    }
}

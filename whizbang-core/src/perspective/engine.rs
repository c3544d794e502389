//! Brings one (perspective, stream) up to date. Shared by the inline flush and
//! the async runner so both have the same exactly-once, in-order semantics.

use crate::error::{Error, Result};
use crate::message::{EventId, StreamId};
use crate::registry::PerspectiveRegistration;
use crate::store::{Checkpoint, CheckpointFailure, EventStore, ModelValue, PerspectiveStore};
use std::sync::Arc;
use tracing::Instrument;

/// What one catch-up committed: handed to listeners (the sync tracker) after commit.
#[derive(Clone, Debug)]
pub struct ApplyReport {
    /// The perspective.
    pub perspective: &'static str,
    /// The stream.
    pub stream: StreamId,
    /// The cursor after the commit.
    pub version: u64,
    /// The events now applied (including ones the perspective does not handle, which
    /// the cursor moved past), in order.
    pub applied: Vec<EventId>,
    /// Set when the perspective failed on this stream.
    pub failure: Option<CheckpointFailure>,
}

/// Something that wants to hear about committed applies (the sync tracker).
pub(crate) trait ApplyListener: Send + Sync {
    fn on_apply(&self, report: &ApplyReport);
}

#[derive(Clone)]
pub(crate) struct Engine {
    pub(crate) events: Arc<dyn EventStore>,
    pub(crate) perspectives: Arc<dyn PerspectiveStore>,
    pub(crate) listeners: Arc<std::sync::RwLock<Vec<Arc<dyn ApplyListener>>>>,
}

/// Applies one event, turning an error or a panic into its message.
fn apply_guarded(
    reg: &'static PerspectiveRegistration,
    model: &mut dyn crate::perspective::AnyModel,
    ev: &crate::store::StoredEvent,
) -> std::result::Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (reg.apply)(model, ev))) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.0),
        Err(panic) => Err(panic_message(&*panic)),
    }
}

fn decode(
    reg: &'static PerspectiveRegistration,
    raw: &serde_json::value::RawValue,
) -> Result<Box<dyn crate::perspective::AnyModel>> {
    (reg.decode_model)(raw).map_err(|source| Error::Deserialization {
        type_name: format!("model of perspective {}", reg.name),
        source,
    })
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("apply panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("apply panicked: {s}")
    } else {
        "apply panicked".to_owned()
    }
}

impl Engine {
    /// Applies every event of `stream` after the cursor. Returns the report of what
    /// was committed (`None` when there was nothing to do).
    pub(crate) async fn catch_up(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
    ) -> Result<Option<ApplyReport>> {
        self.catch_up_to(reg, stream, u64::MAX).await
    }

    /// Like [`catch_up`](Self::catch_up), applying only events up to stream version `upto`.
    pub(crate) async fn catch_up_to(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        upto: u64,
    ) -> Result<Option<ApplyReport>> {
        let span = tracing::debug_span!(
            "whizbang.perspective.apply",
            perspective = reg.name,
            stream = %stream,
        );
        self.catch_up_inner(reg, stream, upto)
            .instrument(span)
            .await
    }

    async fn catch_up_inner(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        upto: u64,
    ) -> Result<Option<ApplyReport>> {
        let mut unit = self.perspectives.claim(reg.name, stream).await?;
        let checkpoint = unit.checkpoint().clone();
        if let Some(f) = &checkpoint.failure {
            return Err(Error::PerspectiveFailed {
                perspective: reg.name,
                stream,
                version: f.version,
                message: f.message.clone(),
            });
        }
        let mut events = self.events.read_stream(stream, checkpoint.version).await?;
        events.retain(|e| e.stream_version <= upto);
        let Some(last) = events.last() else {
            return Ok(None);
        };
        let last_version = last.stream_version;
        let mut model = match unit.take_model() {
            Some(ModelValue::Typed(m)) => m,
            Some(ModelValue::Json(j)) => decode(reg, &j)?,
            None => (reg.new_model)(),
        };
        let mut applied = Vec::with_capacity(events.len());
        let mut version = checkpoint.version;
        for ev in &events {
            if let Err(message) = apply_guarded(reg, &mut *model, ev) {
                tracing::error!(
                    event_id = %ev.event_id, version = ev.stream_version, error = %message,
                    "perspective apply failed; its cursor on this stream is marked failed"
                );
                // The model may be half-mutated. Apply functions are pure, so the
                // state "everything before the failing event" is rebuilt by replaying
                // the stream from the start: no copy is paid on the hot path.
                let good = self.rebuild(reg, stream, version).await?;
                let failure = CheckpointFailure {
                    version: ev.stream_version,
                    message: message.clone(),
                };
                unit.commit(
                    good.map(ModelValue::Typed),
                    Checkpoint {
                        version,
                        failure: Some(failure.clone()),
                    },
                )
                .await?;
                let report = ApplyReport {
                    perspective: reg.name,
                    stream,
                    version,
                    applied,
                    failure: Some(failure),
                };
                self.notify(&report);
                return Err(Error::PerspectiveFailed {
                    perspective: reg.name,
                    stream,
                    version: ev.stream_version,
                    message,
                });
            }
            applied.push(ev.event_id);
            version = ev.stream_version;
        }
        debug_assert_eq!(version, last_version);
        unit.commit(
            Some(ModelValue::Typed(model)),
            Checkpoint {
                version,
                failure: None,
            },
        )
        .await?;
        let report = ApplyReport {
            perspective: reg.name,
            stream,
            version,
            applied,
            failure: None,
        };
        self.notify(&report);
        Ok(Some(report))
    }

    /// The model as of stream version `upto`, by replaying from the start
    /// (`None` when `upto` is 0). Used only after a failed apply.
    async fn rebuild(
        &self,
        reg: &'static PerspectiveRegistration,
        stream: StreamId,
        upto: u64,
    ) -> Result<Option<Box<dyn crate::perspective::AnyModel>>> {
        if upto == 0 {
            return Ok(None);
        }
        let mut model = (reg.new_model)();
        for ev in self.events.read_stream(stream, 0).await? {
            if ev.stream_version > upto {
                break;
            }
            if let Err(message) = apply_guarded(reg, &mut *model, &ev) {
                // Only an impure apply fails on replay what it applied before.
                tracing::error!(event_id = %ev.event_id, error = %message, "replay after a failure failed too");
                break;
            }
        }
        Ok(Some(model))
    }

    fn notify(&self, report: &ApplyReport) {
        // Listeners are quick and never call back into the engine: no copy needed.
        let listeners = self
            .listeners
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for l in listeners.iter() {
            l.on_apply(report);
        }
    }
}

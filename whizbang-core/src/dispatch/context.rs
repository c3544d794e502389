use super::scope::ScopeShared;
use crate::error::{Error, Result};
use crate::lens::Lens;
use crate::message::{Event, EventId, ExpectedVersion, Message, MessageId, Metadata, StreamId};
use crate::perspective::Perspective;
use crate::services::Services;
use crate::store::{EventMetadata, NewEvent, StreamAppend};
use crate::sync::SyncResult;
use std::sync::Arc;
use std::time::SystemTime;

/// What a receptor sees of the world while it handles one message: the ids of
/// that message, the runtime's services, and a buffer for the events it emits.
///
/// Emitted events are appended only when the receptor returns `Ok`.
pub struct Context {
    pub(crate) scope: Arc<ScopeShared>,
    pub(crate) message_id: MessageId,
    pub(crate) message_type: &'static str,
    pub(crate) correlation_id: MessageId,
    pub(crate) causation_id: Option<MessageId>,
    pub(crate) metadata: Metadata,
    pub(crate) pending: Vec<StreamAppend>,
    pub(crate) sync_results: Vec<SyncResult>,
    /// The receptor this context runs (none for a scope's own publish).
    pub(crate) receptor: Option<&'static crate::registry::ReceptorRegistration>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("message_id", &self.message_id)
            .field("message_type", &self.message_type)
            .field("correlation_id", &self.correlation_id)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Emits an event, appended (whatever the stream's version) when the receptor returns `Ok`.
    ///
    /// # Errors
    /// [`Error::Serialization`] when the event cannot be serialized, or
    /// [`Error::EventRoundTrip`] when it does not decode back; nothing is
    /// buffered and the context stays usable.
    pub fn emit<E: Event>(&mut self, event: E) -> Result<EventId> {
        self.emit_expecting(event, ExpectedVersion::Any)
    }

    /// Emits an event that requires its stream to be at `expected` when appended.
    /// A mismatch fails the whole append with [`Error::Concurrency`].
    ///
    /// The event is serialized, and what in-process consumers (perspectives,
    /// event receptors) see is that payload decoded back: exactly what another
    /// process reads from the store.
    ///
    /// # Errors
    /// [`Error::Serialization`] when the event cannot be serialized;
    /// [`Error::EventRoundTrip`] when its payload does not decode back into
    /// the event. Nothing is buffered then.
    pub fn emit_expecting<E: Event>(
        &mut self,
        event: E,
        expected: ExpectedVersion,
    ) -> Result<EventId> {
        let data =
            serde_json::value::to_raw_value(&event).map_err(|source| Error::Serialization {
                type_name: E::NAME,
                source,
            })?;
        // In-process consumers see exactly what another process would decode
        // from the store (a `#[serde(skip)]` field reads as its default): keep
        // the decoded value, not the one passed in.
        let decoded: E =
            serde_json::from_str(data.get()).map_err(|source| Error::EventRoundTrip {
                event_type: E::NAME,
                source,
            })?;
        let stream_id = event.stream_id();
        let event_id = EventId::new();
        let new = NewEvent {
            event_id,
            stream_id,
            event_type: E::NAME,
            data,
            metadata: EventMetadata {
                correlation_id: self.correlation_id,
                causation_id: Some(self.message_id),
                timestamp: SystemTime::now(),
                extra: self.metadata.clone(),
            },
            typed: Some(Arc::new(decoded)),
        };
        match self.pending.last_mut() {
            Some(last) if last.stream_id == stream_id && expected == ExpectedVersion::Any => {
                last.events.push(new);
            }
            _ => self.pending.push(StreamAppend {
                stream_id,
                expected,
                events: vec![new],
            }),
        }
        Ok(event_id)
    }

    /// Events emitted so far in this call and not yet appended.
    #[must_use]
    pub fn pending_count(&self) -> usize {
        self.pending.iter().map(|s| s.events.len()).sum()
    }

    /// The outcomes of this receptor's `#[await_perspective_sync]` waits, in
    /// declaration order (read them with `fire = always`).
    #[must_use]
    pub fn sync_results(&self) -> &[SyncResult] {
        &self.sync_results
    }

    /// The outcome of the wait on perspective `P`, if this receptor awaited it.
    #[must_use]
    pub fn sync_result<P: Perspective>(&self) -> Option<&SyncResult> {
        self.sync_results.iter().find(|r| r.perspective == P::NAME)
    }

    /// The id of the message being handled.
    #[must_use]
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }

    /// The wire name of the message being handled.
    #[must_use]
    pub fn message_type(&self) -> &'static str {
        self.message_type
    }

    /// The conversation's correlation id.
    #[must_use]
    pub fn correlation_id(&self) -> MessageId {
        self.correlation_id
    }

    /// The message that caused this one, if any.
    #[must_use]
    pub fn causation_id(&self) -> Option<MessageId> {
        self.causation_id
    }

    /// Metadata carried with the message (copied onto emitted events).
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Metadata, to add to before emitting.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// The runtime's services.
    #[must_use]
    pub fn services(&self) -> &Services {
        self.scope.runtime.services()
    }

    /// A lens over perspective `P`'s read models.
    #[must_use]
    pub fn lens<P: Perspective>(&self) -> Lens<P> {
        self.services().lens::<P>()
    }

    /// The current version of a stream (0 when it has no events), for
    /// [`emit_expecting`](Self::emit_expecting).
    ///
    /// # Errors
    /// A backend error.
    pub async fn stream_version(&self, stream: StreamId) -> Result<u64> {
        self.services().event_store().stream_version(stream).await
    }

    pub(crate) fn for_message<M: Message>(
        scope: Arc<ScopeShared>,
        message_id: MessageId,
        correlation_id: MessageId,
        causation_id: Option<MessageId>,
        metadata: Metadata,
    ) -> Self {
        Context {
            scope,
            message_id,
            message_type: M::NAME,
            correlation_id,
            causation_id,
            metadata,
            pending: Vec::new(),
            sync_results: Vec::new(),
            receptor: None,
        }
    }

    /// An awaiter on this receptor's scope, to wait ad hoc for perspectives
    /// (`current_scope()` is the scope the receptor runs in: for a detached
    /// receptor, the scope that appended its event). The same rule as
    /// `#[await_perspective_sync]`: an event receptor at a detached stage may
    /// wait, one at an inline stage may not (waiting there would stall the
    /// flush that applies what it waits for). A command receptor runs inline in
    /// its send and may wait on what its scope flushed before it.
    ///
    /// ```
    /// # use whizbang_core::{fire_at, perspective, receptor, Context, Event, Receptor, Result, Runtime, SyncFilter};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Event, Serialize, Deserialize, Clone)] #[event(name = "doc_cx.placed")]
    /// # struct Placed { #[stream_key] order: uuid::Uuid }
    /// # #[derive(Default, Clone, Serialize, Deserialize)] struct Count { n: u32 }
    /// # struct Orders;
    /// # #[perspective(model = Count, name = "doc_cx.orders")]
    /// # impl Orders { fn placed(c: &mut Count, _: &Placed) { c.n += 1; } }
    /// #[derive(Default)]
    /// struct Mailer;
    ///
    /// #[receptor]
    /// #[fire_at(PostDistributeDetached)]
    /// impl Receptor<Placed> for Mailer {
    ///     async fn handle(&self, e: Placed, cx: &mut Context) -> Result<()> {
    ///         let synced = cx
    ///             .sync_awaiter()?
    ///             .wait::<Orders>(SyncFilter::for_stream(e.order))
    ///             .await?;
    ///         if synced.is_synced() {
    ///             // read the order's model and mail it
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// # fn main() {}
    /// ```
    ///
    /// # Errors
    /// [`Error::InlineStageWait`] from an event receptor at an inline stage:
    /// fire it at the stage's Detached variant.
    pub fn sync_awaiter(&self) -> Result<crate::sync::PerspectiveSyncAwaiter> {
        if let Some(reg) = self.receptor {
            let stage = reg.effective_stage();
            if reg.message_kind == crate::message::MessageKind::Event && stage.is_inline() {
                return Err(Error::InlineStageWait {
                    receptor: reg.path(),
                    stage,
                });
            }
        }
        Ok(crate::sync::PerspectiveSyncAwaiter::new(
            self.scope.runtime.clone(),
            Some(Arc::clone(&self.scope)),
        ))
    }
}

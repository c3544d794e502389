use super::scope::ScopeShared;
use crate::error::{Error, Result};
use crate::lens::Lens;
use crate::message::{Event, EventId, ExpectedVersion, Message, MessageId, Metadata, StreamId};
use crate::perspective::fold::fold;
use crate::perspective::{Perspective, Versioned};
use crate::services::Services;
use crate::store::{EventMetadata, NewEvent, StreamAppend};
use crate::sync::SyncResult;
use serde_json::value::RawValue;
use std::any::Any;
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
        let metadata = self.event_metadata();
        let new = encode_event(event, metadata)?;
        Ok(self.push_emitted(new, expected))
    }

    /// The metadata of an event emitted now (non-generic).
    #[inline(never)]
    fn event_metadata(&self) -> EventMetadata {
        EventMetadata {
            correlation_id: self.correlation_id,
            causation_id: Some(self.message_id),
            timestamp: SystemTime::now(),
            extra: self.metadata.clone(),
        }
    }

    /// Buffers one encoded event (the non-generic part of `emit_expecting`).
    #[inline(never)]
    fn push_emitted(&mut self, new: NewEvent, expected: ExpectedVersion) -> EventId {
        let (stream_id, event_id) = (new.stream_id, new.event_id);
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
        event_id
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

    /// Folds perspective `P`'s apply functions over every event of `stream`,
    /// now, and returns the model with the stream's version: the live state of an
    /// aggregate, without a stored read model. Decide from it, then append with
    /// [`emit_expecting`](Self::emit_expecting)`(.., ExpectedVersion::Exact(version))`:
    /// if another writer appended in between, the send fails with
    /// [`Error::Concurrency`] and nothing is stored.
    ///
    /// `P` need not be applied by this runtime (it is not looked up in the
    /// registry); events it does not handle are passed over but counted in the
    /// version. The fold reads the event store: events emitted in this call and
    /// not yet appended are not in it.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use uuid::Uuid;
    /// use whizbang_core::{perspective, receptor, Command, Context, Error, Event, ExpectedVersion, Receptor, Result};
    ///
    /// #[derive(Event, Serialize, Deserialize)]
    /// struct Deposited { #[stream_key] account: Uuid, cents: i64 }
    ///
    /// #[derive(Command, Serialize, Deserialize)]
    /// struct Withdraw { account: Uuid, cents: i64 }
    ///
    /// #[derive(Event, Serialize, Deserialize)]
    /// struct Withdrawn { #[stream_key] account: Uuid, cents: i64 }
    ///
    /// #[derive(Default, Clone, Serialize, Deserialize)]
    /// struct Balance { cents: i64 }
    ///
    /// struct Balances;
    ///
    /// #[perspective(model = Balance)]
    /// impl Balances {
    ///     fn deposited(b: &mut Balance, e: &Deposited) { b.cents += e.cents; }
    ///     fn withdrawn(b: &mut Balance, e: &Withdrawn) { b.cents -= e.cents; }
    /// }
    ///
    /// #[derive(Default)]
    /// struct Teller;
    ///
    /// #[receptor]
    /// impl Receptor<Withdraw> for Teller {
    ///     async fn handle(&self, cmd: Withdraw, cx: &mut Context) -> Result<()> {
    ///         let balance = cx.aggregate::<Balances>(cmd.account).await?;
    ///         if balance.cents < cmd.cents {
    ///             return Err(Error::rejected("insufficient funds"));
    ///         }
    ///         let withdrawn = Withdrawn { account: cmd.account, cents: cmd.cents };
    ///         cx.emit_expecting(withdrawn, ExpectedVersion::Exact(balance.version))?;
    ///         Ok(())
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    /// [`Error::FoldFailed`] when the model's `Default` or an apply function
    /// fails or panics, or a stored event does not decode (naming the version);
    /// a backend error.
    pub async fn aggregate<P: Perspective>(
        &self,
        stream: impl Into<StreamId>,
    ) -> Result<Versioned<P::Model>> {
        fold::<P>(&**self.services().event_store(), stream.into()).await
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
        Ok(self.scope.sync_awaiter())
    }
}

/// Serializes `event` into a [`NewEvent`] with a fresh id. What in-process
/// consumers (perspectives, event receptors) see is that payload decoded back:
/// exactly what another process reads from the store (a `#[serde(skip)]` field
/// reads as its default).
///
/// Build cost: this is instantiated per event type in users' crates, so only
/// the serialize and decode are generic; the rest is in [`new_event`].
pub(crate) fn encode_event<E: Event>(event: E, metadata: EventMetadata) -> Result<NewEvent> {
    let data = match serde_json::value::to_raw_value(&event) {
        Ok(data) => data,
        Err(source) => return Err(serialization_error(E::NAME, source)),
    };
    let decoded: E = match serde_json::from_str(data.get()) {
        Ok(decoded) => decoded,
        Err(source) => return Err(round_trip_error(E::NAME, source)),
    };
    Ok(new_event(
        event.stream_id(),
        E::NAME,
        data,
        Arc::new(decoded),
        metadata,
        E::PUBLISH,
    ))
}

#[inline(never)]
fn new_event(
    stream_id: StreamId,
    event_type: &'static str,
    data: Box<RawValue>,
    typed: Arc<dyn Any + Send + Sync>,
    metadata: EventMetadata,
    outbound: bool,
) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        stream_id,
        event_type,
        data,
        metadata,
        typed: Some(typed),
        outbound,
    }
}

#[inline(never)]
fn serialization_error(type_name: &'static str, source: serde_json::Error) -> Error {
    Error::Serialization { type_name, source }
}

#[inline(never)]
fn round_trip_error(event_type: &'static str, source: serde_json::Error) -> Error {
    Error::EventRoundTrip { event_type, source }
}

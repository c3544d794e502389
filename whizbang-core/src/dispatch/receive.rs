//! Receiving an event from another process: the inbox stages around the
//! same path a local publish takes (inline cascade, one append, the scope's
//! flush to perspectives).

use super::context::encode_event;
use super::scope::Scope;
use crate::error::{Error, Result};
use crate::message::ExpectedVersion;
use crate::message::{Envelope, Event, EventId};
use crate::stage::LifecycleStage;
use crate::store::{EventMetadata, StoredEvent, StreamAppend};
use std::sync::Arc;
use tracing::Instrument;

impl Scope {
    /// Fires the receptors of a stored `event` at `stages` (the outbox
    /// publisher's `PreOutbox`/`PostOutbox`): inline ones each in a child
    /// scope completed before this returns, detached ones on their own tasks.
    pub(crate) async fn fire_stages(
        &self,
        event: &Arc<StoredEvent>,
        stages: &[LifecycleStage],
    ) -> Result<()> {
        self.shared.log.ensure_open()?;
        self.shared.fire_in_child(event, stages).await
    }

    /// Handles an event received from another process (an inbox delivery),
    /// through the same path as [`publish`](Self::publish), with the inbox
    /// stages around it:
    ///
    /// 1. `PreInboxInline` receptors run on the event as it will be stored;
    ///    what they emit is appended with it, or nothing is when one fails.
    /// 2. The event is appended with its envelope's id as its event id (a
    ///    second delivery that got this far is refused by the store with
    ///    [`Error::DuplicateEventId`]), its correlation, causation and
    ///    metadata, after the usual distribute cascade; it is queued for the
    ///    scope's perspectives. It is not published again: its append writes
    ///    no outbox row, even for an `#[event(publish)]` type.
    /// 3. `PreInboxDetached` receptors start; then `PostInboxInline`
    ///    receptors run (each in a child scope completed before this returns)
    ///    and `PostInboxDetached` ones start.
    ///
    /// Complete the scope afterwards to apply the event's perspectives.
    ///
    /// # Errors
    /// [`Error::Serialization`] or [`Error::EventRoundTrip`] for an event
    /// that does not encode; [`Error::ScopeCompleted`]; [`Error::CascadeFailed`]
    /// naming a failed inline inbox or cascade receptor; a store error. When
    /// the append fails nothing is stored.
    pub async fn receive<E: Event>(&self, envelope: Envelope<E>) -> Result<EventId> {
        self.shared.log.ensure_open()?;
        let Envelope {
            message_id,
            correlation_id,
            causation_id,
            timestamp,
            metadata,
            message,
        } = envelope;
        let event_id: EventId = message_id.into();
        let span = tracing::info_span!(
            "whizbang.receive",
            message_type = E::NAME,
            message_id = %message_id,
            correlation_id = %correlation_id,
            causation_id = causation_id.map(tracing::field::display),
            scope = %self.shared.scope_id,
        );
        async move {
            let mut new = encode_event(
                message,
                EventMetadata {
                    correlation_id,
                    causation_id,
                    timestamp,
                    extra: metadata,
                },
            )?;
            new.event_id = event_id;
            // A received event was published by the service it came from:
            // storing it here writes no outbox row (no echo, no loop between
            // services that deliver to each other).
            new.outbound = false;
            // 1. PreInboxInline, on the event as it will be stored.
            let provisional = Arc::new(StoredEvent {
                position: 0,
                event_id,
                stream_id: new.stream_id,
                stream_version: 0,
                event_type: std::borrow::Cow::Borrowed(new.event_type),
                data: new.data.clone(),
                metadata: new.metadata.clone(),
                typed: new.typed.clone(),
            });
            let mut pending = vec![StreamAppend {
                stream_id: new.stream_id,
                expected: ExpectedVersion::Any,
                events: vec![new],
            }];
            let routes: Vec<_> = self
                .shared
                .routes(&provisional, LifecycleStage::PreInboxInline)
                .cloned()
                .collect();
            for route in routes {
                match self.shared.run_receptor(&route, &provisional).await {
                    Ok(emitted) => pending.extend(emitted),
                    Err(source) => {
                        return Err(Error::CascadeFailed {
                            receptor: route.1.path(),
                            event_type: E::NAME.to_owned(),
                            event_id,
                            discarded: pending.iter().map(|a| a.events.len()).sum(),
                            source: Box::new(source),
                        })
                    }
                }
            }
            // 2. The append, through the same commit as a local publish.
            let stored = self.shared.commit(pending).await?;
            let Some(ev) = stored.iter().find(|e| e.event_id == event_id).cloned() else {
                return Err(Error::Invariant(format!(
                    "received `{}` {event_id} was not among the events its append stored",
                    E::NAME
                )));
            };
            // 3. The detached pre-inbox and the post-inbox receptors.
            self.shared
                .fire_in_child(
                    &ev,
                    &[
                        LifecycleStage::PreInboxDetached,
                        LifecycleStage::PostInboxInline,
                        LifecycleStage::PostInboxDetached,
                    ],
                )
                .await?;
            Ok(event_id)
        }
        .instrument(span)
        .await
    }
}

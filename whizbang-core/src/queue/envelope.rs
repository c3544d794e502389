//! The envelope of a queued message: what travels between services and waits
//! in a queue, with its payload already serialised.

use super::limits::{check_payload, check_type_name};
use crate::error::{Error, Result};
use crate::message::{Envelope, Message, MessageId, Metadata};
use serde_json::value::RawValue;
use std::time::SystemTime;

/// A message as a queue holds it: its ids, its wire name, its payload as JSON
/// and its headers. The serialised form of an [`Envelope`] (see
/// [`from_envelope`](Self::from_envelope) and [`decode`](Self::decode)).
///
/// ```
/// use whizbang_core::queue::QueuedMessage;
///
/// let m = QueuedMessage::from_json("orders.placed", r#"{"order": 7}"#)?;
/// assert_eq!(m.correlation_id, m.id, "a new message starts its own conversation");
/// assert!(QueuedMessage::from_json("orders.placed", "{not json").is_err());
/// # Ok::<(), whizbang_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct QueuedMessage {
    /// The message's id: the idempotency key. A queue leases an id once, and
    /// refuses it once processed.
    pub id: MessageId,
    /// The message's wire name ([`Message::NAME`]): non-empty, at most
    /// [`MAX_TYPE_NAME_BYTES`](super::limits::MAX_TYPE_NAME_BYTES) bytes, no control
    /// characters.
    pub message_type: String,
    /// The serialised message (any JSON value; a unit struct is `null`).
    pub payload: Box<RawValue>,
    /// The id of the first message of the conversation.
    pub correlation_id: MessageId,
    /// The id of the message whose handling sent this one, if any.
    pub causation_id: Option<MessageId>,
    /// Free-form headers (tenant, user, trace context ..).
    pub headers: Metadata,
    /// When the message was first enqueued (set by the sender; queues keep it).
    pub enqueued_at: SystemTime,
}

impl PartialEq for QueuedMessage {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.message_type == other.message_type
            && self.payload.get() == other.payload.get()
            && self.correlation_id == other.correlation_id
            && self.causation_id == other.causation_id
            && self.headers == other.headers
            && self.enqueued_at == other.enqueued_at
    }
}

impl QueuedMessage {
    /// A message that starts a new conversation: a new id, its own
    /// correlation id, no causation, no headers, enqueued now.
    #[must_use]
    pub fn new(message_type: impl Into<String>, payload: Box<RawValue>) -> Self {
        let id = MessageId::new();
        QueuedMessage {
            id,
            message_type: message_type.into(),
            payload,
            correlation_id: id,
            causation_id: None,
            headers: Metadata::default(),
            enqueued_at: SystemTime::now(),
        }
    }

    /// Like [`new`](Self::new), from JSON text.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `payload` is not one JSON value, or the
    /// message is otherwise invalid (see [`validate`](Self::validate)).
    pub fn from_json(message_type: impl Into<String>, payload: &str) -> Result<Self> {
        let message_type = message_type.into();
        let raw = RawValue::from_string(payload.to_owned()).map_err(|e| {
            Error::InvalidInput(format!(
                "the payload of a `{message_type}` message is not JSON ({e}); nothing was \
                 queued. Serialise the message with serde_json"
            ))
        })?;
        let message = Self::new(message_type, raw);
        message.validate()?;
        Ok(message)
    }

    /// The serialised form of a typed envelope (same ids, headers from its
    /// metadata, enqueued at its timestamp).
    ///
    /// # Errors
    /// [`Error::Serialization`] when the message does not serialise.
    pub fn from_envelope<M: Message>(envelope: &Envelope<M>) -> Result<Self> {
        let payload = serde_json::value::to_raw_value(&envelope.message).map_err(|source| {
            Error::Serialization {
                type_name: M::NAME,
                source,
            }
        })?;
        Ok(QueuedMessage {
            id: envelope.message_id,
            message_type: M::NAME.to_owned(),
            payload,
            correlation_id: envelope.correlation_id,
            causation_id: envelope.causation_id,
            headers: envelope.metadata.clone(),
            enqueued_at: envelope.timestamp,
        })
    }

    /// The typed envelope back.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the message is of another type than `M`;
    /// [`Error::Deserialization`] when the payload does not decode as `M`.
    pub fn decode<M: Message>(&self) -> Result<Envelope<M>> {
        if self.message_type != M::NAME {
            return Err(Error::InvalidInput(format!(
                "message {} is a `{}`, not a `{}`: route it by its type name",
                self.id,
                self.message_type,
                M::NAME
            )));
        }
        let message =
            serde_json::from_str(self.payload.get()).map_err(|source| Error::Deserialization {
                type_name: self.message_type.clone(),
                source,
            })?;
        Ok(Envelope {
            message_id: self.id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            timestamp: self.enqueued_at,
            metadata: self.headers.clone(),
            message,
        })
    }

    /// Sets the id (a transport's delivery id, an event's id), and the
    /// correlation id with it while the message starts its own conversation
    /// (its correlation id was its id).
    #[must_use]
    pub fn with_id(mut self, id: MessageId) -> Self {
        if self.correlation_id == self.id {
            self.correlation_id = id;
        }
        self.id = id;
        self
    }

    /// Sets correlation and causation: this message was sent while handling
    /// the message `cause` of conversation `correlation`.
    #[must_use]
    pub fn caused_by(mut self, correlation: MessageId, cause: MessageId) -> Self {
        self.correlation_id = correlation;
        self.causation_id = Some(cause);
        self
    }

    /// Sets a header, returning the message.
    #[must_use]
    pub fn with_header(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.headers.insert(key, value);
        self
    }

    /// Checks what every queue requires before storing the message: a type
    /// name that is non-empty, at most
    /// [`MAX_TYPE_NAME_BYTES`](super::limits::MAX_TYPE_NAME_BYTES) bytes and free of
    /// control characters; a payload of at most
    /// [`MAX_PAYLOAD_BYTES`](super::limits::MAX_PAYLOAD_BYTES) with no `\u0000`
    /// escape (which no PostgreSQL `jsonb` can hold), and headers free of
    /// that escape too. Queues call it; call it
    /// yourself to fail early.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the message, what is wrong and what to do.
    pub fn validate(&self) -> Result<()> {
        check_type_name(self.id, &self.message_type)?;
        check_payload(self.id, &self.message_type, "payload", self.payload.get())?;
        if !self.headers.is_empty() {
            let headers = serde_json::to_string(&self.headers).map_err(|e| {
                Error::InvalidInput(format!(
                    "the headers of message {} do not serialise ({e}); nothing was queued",
                    self.id
                ))
            })?;
            check_payload(self.id, &self.message_type, "headers", &headers)?;
        }
        Ok(())
    }
}

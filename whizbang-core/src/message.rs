//! Messages, envelopes and identifiers.
//!
//! This module owns the vocabulary every other module speaks: [`Message`],
//! [`Event`], [`Command`], their [`Envelope`], and the id newtypes. It knows
//! nothing about routing or storage.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id (UUID v7).
            #[must_use]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The underlying UUID.
            #[must_use]
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }
    };
}

id_type!(
    /// Identifies one stored event, everywhere and forever (UUID v7).
    EventId
);
id_type!(
    /// Identifies one message (command or event) in flight (UUID v7).
    MessageId
);
id_type!(
    /// Identifies an event stream: the aggregate the events belong to.
    StreamId
);
id_type!(
    /// Identifies one running instance of a service (a process, or a worker
    /// in it): the owner of the leases it takes, on queued messages and on
    /// partitions.
    InstanceId
);

impl From<EventId> for MessageId {
    fn from(id: EventId) -> Self {
        MessageId(id.0)
    }
}

impl From<MessageId> for EventId {
    fn from(id: MessageId) -> Self {
        EventId(id.0)
    }
}

/// Whether a message is a command (one receptor, returns output) or an event
/// (any number of receptors and perspectives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Handled by exactly one receptor, which returns [`Message::Output`].
    Command,
    /// A fact, stored in a stream and fanned out to receptors and perspectives.
    Event,
}

/// Anything whizbang can route: a command or an event.
///
/// Implemented by `#[derive(Command)]` and `#[derive(Event)]`; you rarely write it by hand.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a whizbang message",
    label = "not a command or event",
    note = "add #[derive(whizbang_core::Command)] or #[derive(whizbang_core::Event)] to `{Self}`"
)]
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable wire name: stored with events, never a Rust type path.
    /// Defaults to the type's name; override with `#[event(name = "..")]`.
    const NAME: &'static str;
    /// Command or event.
    const KIND: MessageKind;
    /// What the receptor returns to the caller. `()` for events.
    type Output: Send + 'static;
}

/// A fact that happened, stored in the stream named by its `#[stream_key]` field.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    note = "add #[derive(whizbang_core::Event)] to `{Self}` and mark its stream id field with #[stream_key]"
)]
pub trait Event: Message<Output = ()> {
    /// Whether the event leaves the service: `#[event(publish)]` sets it.
    /// Every append of an outbound event writes it to the outbox in the
    /// append's own transaction (all or nothing with the event), and an
    /// outbox publisher sends it through a transport
    /// (see [`outbox`](crate::outbox)).
    const PUBLISH: bool = false;

    /// The stream this event belongs to.
    fn stream_id(&self) -> StreamId;
}

/// A request to do something, handled by exactly one receptor that returns
/// [`Message::Output`] to the caller.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    note = "add #[derive(whizbang_core::Command)] to `{Self}` (with #[command(output = T)] if it returns a value)"
)]
pub trait Command: Message {}

/// A value that names an event stream; the type of an event's `#[stream_key]` field.
///
/// Implemented for [`Uuid`] and [`StreamId`]; implement it for your own id newtypes.
pub trait StreamKey {
    /// The stream id this key names.
    fn to_stream_id(&self) -> StreamId;
}

impl StreamKey for Uuid {
    fn to_stream_id(&self) -> StreamId {
        StreamId(*self)
    }
}

impl StreamKey for StreamId {
    fn to_stream_id(&self) -> StreamId {
        *self
    }
}

impl<T: StreamKey + ?Sized> StreamKey for &T {
    fn to_stream_id(&self) -> StreamId {
        (**self).to_stream_id()
    }
}

/// What the writer expects a stream's version to be when appending (optimistic concurrency).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    #[default]
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (the version of its last event).
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (0 = no stream) satisfies this expectation.
    #[must_use]
    pub fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => v == actual,
        }
    }
}

/// Free-form metadata carried with a message (tenant, user, trace ids ..).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(pub BTreeMap<String, serde_json::Value>);

impl Metadata {
    /// Sets a value, returning the previous one.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Option<serde_json::Value> {
        self.0.insert(key.into(), value.into())
    }

    /// Reads a value.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key)
    }

    /// Whether there is no metadata.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A message with the ids that let a person follow it through the system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<M> {
    /// This message's id (UUID v7). For events this equals the [`EventId`].
    pub message_id: MessageId,
    /// The id of the first message of the conversation.
    pub correlation_id: MessageId,
    /// The id of the message that caused this one, if any.
    pub causation_id: Option<MessageId>,
    /// When the message was created.
    pub timestamp: SystemTime,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The message itself.
    pub message: M,
}

impl<M> Envelope<M> {
    /// Wraps a message that starts a new conversation (its own correlation id).
    pub fn new(message: M) -> Self {
        let id = MessageId::new();
        Envelope {
            message_id: id,
            correlation_id: id,
            causation_id: None,
            timestamp: SystemTime::now(),
            metadata: Metadata::default(),
            message,
        }
    }

    /// Wraps a message caused by another one: same correlation, causation = `cause`.
    pub fn caused_by<C>(message: M, cause: &Envelope<C>) -> Self {
        Envelope {
            message_id: MessageId::new(),
            correlation_id: cause.correlation_id,
            causation_id: Some(cause.message_id),
            timestamp: SystemTime::now(),
            metadata: cause.metadata.clone(),
            message,
        }
    }
}

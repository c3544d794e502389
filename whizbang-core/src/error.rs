//! The one error type of `whizbang-core`.
//!
//! Every variant says what happened and, where there is something to do about
//! it, what to do. Receptor errors pass through [`Error::handler`] and
//! [`Error::rejected`] and reach the caller of [`Scope::send`](crate::Scope::send)
//! unchanged.

use crate::message::{EventId, ExpectedVersion, StreamId};
use std::time::Duration;

/// A boxed error from user code or a backend driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in whizbang.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command was sent but no receptor is registered for its type.
    #[error(
        "no receptor is registered for command `{message_type}`: annotate an \
         `impl Receptor<{message_type}> for YourType` with #[receptor], and make sure the \
         crate that holds it is linked (`use your_handlers as _;`)"
    )]
    NoReceptor {
        /// The wire name of the command.
        message_type: &'static str,
    },

    /// Two receptors were registered for one command type.
    #[error(
        "command `{message_type}` has two receptors, `{first}` and `{second}`: a command \
         must have exactly one; remove one of the #[receptor] impls"
    )]
    DuplicateReceptor {
        /// The wire name of the command.
        message_type: &'static str,
        /// The first receptor (by path).
        first: String,
        /// The second receptor (by path).
        second: String,
    },

    /// Two different message types use the same wire name.
    #[error(
        "message name `{name}` is used by both `{first}` and `{second}`: wire names must be \
         unique; rename one with #[event(name = \"..\")] or #[command(name = \"..\")]"
    )]
    DuplicateMessageName {
        /// The clashing wire name.
        name: &'static str,
        /// The first type.
        first: &'static str,
        /// The second type.
        second: &'static str,
    },

    /// Two perspectives share one name.
    #[error(
        "perspective name `{name}` is used by both `{first}` and `{second}`: rename one with \
         #[perspective(name = \"..\")]"
    )]
    DuplicatePerspective {
        /// The clashing perspective name.
        name: &'static str,
        /// The first type.
        first: &'static str,
        /// The second type.
        second: &'static str,
    },

    /// The runtime was built in a binary where no receptor or perspective is registered.
    #[error(
        "no receptors or perspectives are registered in this binary. Handlers register \
         themselves at link time through #[receptor] and #[perspective]; if they live in \
         another crate, the linker dropped it because nothing references it. Add \
         `use my_handlers as _;` (the crate that holds them) to your main.rs or lib.rs"
    )]
    NoRoutesRegistered,

    /// An append found the stream at another version than the one expected.
    /// Nothing was appended.
    #[error(
        "concurrency conflict on stream {stream}: expected {expected}, but the stream is at \
         version {actual}; nothing was appended. Reload the stream and retry the command"
    )]
    Concurrency {
        /// The stream that conflicted.
        stream: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's current version (0 when it does not exist).
        actual: u64,
    },

    /// A message could not be serialized. Nothing was stored; the scope stays usable.
    #[error("could not serialize `{type_name}`: {source}; nothing was stored")]
    Serialization {
        /// The wire name (or Rust type) of the value.
        type_name: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// A stored payload could not be read back as the type its name says.
    #[error(
        "could not deserialize stored `{type_name}`: {source}; the stored data is kept, \
         check that the type's serde shape is compatible with what was written"
    )]
    Deserialization {
        /// The wire name of the payload.
        type_name: String,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// The scope already completed; nothing more can be queued in it.
    #[error(
        "this scope has already completed and flushed its perspectives; open a new scope \
         with `runtime.scope()` for more work"
    )]
    ScopeCompleted,

    /// A receptor rejected the message (an error raised by user code).
    #[error("{0}")]
    Handler(#[source] BoxError),

    /// A receptor or service asked for a service that was not registered.
    #[error(
        "`{needed_by}` needs the service `{type_name}`, which is not registered: add it with \
         `RuntimeBuilder::service(..)` before `build()`"
    )]
    MissingService {
        /// The type of the missing service.
        type_name: &'static str,
        /// Who asked for it.
        needed_by: &'static str,
    },

    /// A perspective's apply function failed (returned an error or panicked).
    #[error(
        "perspective `{perspective}` failed on stream {stream} at version {version}: {message}. \
         Its cursor is marked failed and it applies nothing more on this stream until you fix \
         the cause and call `Runtime::retry_perspective::<P>(stream)`, or skip the event with \
         `Runtime::skip_failed_event::<P>(stream, reason)`"
    )]
    PerspectiveFailed {
        /// The perspective's name.
        perspective: &'static str,
        /// The stream it failed on.
        stream: StreamId,
        /// The stream version of the event that failed.
        version: u64,
        /// The failure message.
        message: String,
    },

    /// No perspective with this name is registered.
    #[error(
        "no perspective named `{name}` is registered: annotate it with #[perspective(model = ..)] \
         and make sure its crate is linked"
    )]
    UnknownPerspective {
        /// The requested name.
        name: String,
    },

    /// Event receptors emitted events that triggered receptors again, too deep.
    #[error(
        "event cascade deeper than {limit} levels (receptors emitting events that trigger \
         receptors that emit events ..): this is usually a cycle between event receptors"
    )]
    CascadeTooDeep {
        /// The depth limit.
        limit: usize,
    },

    /// The runtime was built outside a tokio runtime.
    #[error(
        "whizbang needs a tokio runtime: build the Runtime inside `#[tokio::main]` or \
         `Runtime::block_on`"
    )]
    NoTokioRuntime,

    /// A storage backend failed.
    #[error("{backend} backend error: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// A perspective sync wait timed out before the perspective applied the awaited events.
    #[error(
        "perspective `{perspective}` did not apply the awaited events within {timeout:?}; the \
         receptor did not run. Raise `timeout_ms` or check that the perspective runner is running"
    )]
    PerspectiveSyncTimeout {
        /// The perspective waited on.
        perspective: &'static str,
        /// The timeout that passed.
        timeout: Duration,
    },

    /// A receptor awaits perspective sync from an inline lifecycle stage.
    #[error(
        "`{receptor}` awaits perspective sync but fires at the inline stage {stage:?}: waiting there \
         would deadlock the flush. Use the Detached variant of the stage"
    )]
    InlineStageWait {
        /// The receptor.
        receptor: String,
        /// Its stage.
        stage: crate::LifecycleStage,
    },

    /// A receptor fires at a stage this runtime cannot reach.
    #[error(
        "`{receptor}` fires at {stage:?}, which fires for messages received from other processes \
         through an inbox; this runtime has no inbox backend yet. Use a distribute or perspective stage"
    )]
    UnsupportedStage {
        /// The receptor.
        receptor: String,
        /// Its stage.
        stage: crate::LifecycleStage,
    },

    /// Invalid input to a whizbang API.
    #[error("{0}")]
    InvalidInput(String),

    /// An append carried an event id that is already stored, or one id twice.
    /// Nothing was appended.
    #[error(
        "event id {event_id} is already stored or appears twice in this append; nothing was \
         appended. Event ids must be unique: give every event its own `EventId::new()`"
    )]
    DuplicateEventId {
        /// The id seen twice.
        event_id: EventId,
    },

    /// A retry or skip was asked of a (perspective, stream) whose cursor has not failed.
    #[error(
        "perspective `{perspective}` has not failed on stream {stream}: there is nothing to \
         retry or skip. Retry and skip apply only to a cursor marked failed (see \
         `Error::PerspectiveFailed`)"
    )]
    PerspectiveNotFailed {
        /// The perspective.
        perspective: &'static str,
        /// The stream.
        stream: StreamId,
    },
}

impl Error {
    /// Wraps an error from user code (a receptor) so it reaches the caller.
    ///
    /// ```
    /// # use whizbang_core::Error;
    /// let err = Error::handler(std::io::Error::other("disk full"));
    /// assert_eq!(err.to_string(), "disk full");
    /// ```
    pub fn handler(error: impl Into<BoxError>) -> Self {
        Error::Handler(error.into())
    }

    /// A receptor's refusal with a plain message ("order already shipped").
    pub fn rejected(message: impl Into<String>) -> Self {
        Error::Handler(message.into().into())
    }

    /// If this is a [`Error::Handler`] wrapping an `E`, returns it.
    pub fn downcast_handler_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Handler(inner) => inner.downcast_ref::<E>(),
            _ => None,
        }
    }
}

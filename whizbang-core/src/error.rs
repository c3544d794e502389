//! The one error type of `whizbang-core`.
//!
//! Every variant says what happened and, where there is something to do about
//! it, what to do. Receptor errors pass through [`Error::handler`] and
//! [`Error::rejected`] and reach the caller of [`Scope::send`](crate::Scope::send)
//! unchanged.

use crate::message::{EventId, ExpectedVersion, InstanceId, MessageId, StreamId};
use std::fmt;
use std::time::Duration;

/// A boxed error from user code or a backend driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in whizbang.
///
/// `Debug` shows the `Display` sentence too (then the variant and the chain
/// of causes), so `fn main() -> Result<()>` prints what to do, not only a
/// variant name.
#[derive(thiserror::Error)]
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

    /// `Runtime::build()` found command types with no receptor in its registry:
    /// sending any of them could only fail. Nothing was started.
    #[error(
        "{} no receptor: annotate an `impl Receptor<Cmd> for YourType` with #[receptor] for \
         each, and make sure the crate that holds the receptors is linked \
         (`use your_handlers as _;`). A runtime that routes only some commands takes an \
         explicit registry without the others (`RuntimeBuilder::registry`)",
        command_list(commands)
    )]
    CommandsWithoutReceptor {
        /// The wire names of every such command, in stable (sorted) order.
        commands: Vec<&'static str>,
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

    /// An event did not decode from the JSON it was just serialized to, so no
    /// process (this one included) could read it back. Nothing was buffered.
    #[error(
        "event `{event_type}` does not decode from its own JSON ({source}): its Serialize and \
         Deserialize impls disagree, so it could never be read back; nothing was emitted. Make \
         them agree (for example `#[serde(default)]` on a field that is skipped or renamed)"
    )]
    EventRoundTrip {
        /// The event's wire name.
        event_type: &'static str,
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

    /// A live fold ([`Context::aggregate`](crate::Context::aggregate),
    /// [`Runtime::aggregate`](crate::Runtime::aggregate)) failed: the model's
    /// `Default` or an apply function returned an error or panicked, or a stored
    /// event did not decode. Nothing was stored or marked failed.
    #[error(
        "perspective `{perspective}` could not fold stream {stream}: the event at version \
         {version} failed: {message} (version 0: the model's `Default`). Nothing was stored \
         or marked failed; fix the apply function (or the event's serde shape) and fold again"
    )]
    FoldFailed {
        /// The perspective folded.
        perspective: &'static str,
        /// The stream folded.
        stream: StreamId,
        /// The stream version of the event that failed (0: the model's `Default`).
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
         receptors that emit events ..): this is usually a cycle between event receptors. \
         Nothing of the send was stored"
    )]
    CascadeTooDeep {
        /// The depth limit.
        limit: usize,
    },

    /// An inline event receptor of a send's cascade failed. Nothing of the send
    /// was stored: neither the command's events nor any cascade event.
    #[error(
        "event receptor `{receptor}` failed on `{event_type}` event {event_id}: {source}. Nothing \
         of this send was stored: the command's and its cascade's {discarded} events were \
         discarded. Fix the cause and send again"
    )]
    CascadeFailed {
        /// The receptor that failed (by path).
        receptor: String,
        /// The wire name of the event it was handling.
        event_type: String,
        /// The id the event would have had (it was never stored).
        event_id: EventId,
        /// How many events the send had emitted when it failed (all discarded).
        discarded: usize,
        /// The receptor's error.
        #[source]
        source: Box<Error>,
    },

    /// A `send_and_sync` stored the command's events, but a perspective did not
    /// apply them in time (or failed on them).
    #[error(
        "the command's events are stored, but perspective `{perspective}` did not apply them: \
         {outcome}. Do not send the command again (that would store its events twice): read \
         the model later, or wait again with a longer timeout"
    )]
    NotSynced {
        /// The perspective that did not sync.
        perspective: &'static str,
        /// What happened instead (timed out, failed).
        outcome: String,
    },

    /// The runtime was built outside a tokio runtime.
    #[error(
        "whizbang needs a tokio runtime: build the Runtime inside `#[tokio::main]` or \
         `Runtime::block_on`"
    )]
    NoTokioRuntime,

    /// A storage backend failed. Build it with [`Error::backend`].
    #[error(
        "the {backend} backend failed to {operation}: {source}. {stored} Check that the \
         {backend} backend is reachable and its schema is up to date, then retry"
    )]
    Backend {
        /// Which backend (`"postgres"`, `"memory"`).
        backend: &'static str,
        /// What it was asked to do, as a verb phrase ("append to stream ..").
        operation: String,
        /// What the failed call left in storage.
        stored: Stored,
        /// The driver's error.
        #[source]
        source: BoxError,
    },

    /// A perspective sync wait timed out before the perspective applied the awaited events.
    #[error(
        "perspective `{perspective}` did not apply the awaited events within {timeout:?}. Nothing \
         is lost: stored events apply when the perspective catches up. Wait again with a longer \
         timeout (`timeout_ms` on #[await_perspective_sync], whose receptor then did not run), \
         or check that the perspective runner is not paused"
    )]
    PerspectiveSyncTimeout {
        /// The perspective waited on.
        perspective: &'static str,
        /// The timeout that passed.
        timeout: Duration,
    },

    /// A receptor awaits perspective sync from an inline lifecycle stage.
    #[error(
        "`{receptor}` fires at the inline stage {stage}: {rule}",
        rule = crate::stage::INLINE_AWAIT_RULE
    )]
    InlineStageWait {
        /// The receptor.
        receptor: String,
        /// Its stage.
        stage: crate::stage::LifecycleStage,
    },

    /// A receptor fires at a stage this runtime cannot reach. No stage is
    /// refused today (inbox stages fire through
    /// [`Scope::receive`](crate::Scope::receive)); kept for backends that
    /// cannot reach a stage.
    #[error(
        "`{receptor}` fires at {stage:?}, which this runtime cannot reach. Use a distribute or \
         perspective stage"
    )]
    UnsupportedStage {
        /// The receptor.
        receptor: String,
        /// Its stage.
        stage: crate::stage::LifecycleStage,
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

    /// The perspective store keeps models as JSON, and a registered
    /// perspective's model does not survive a JSON round trip (checked on its
    /// `Default` when the runtime is built). The runtime was not built.
    #[error(
        "the model of perspective `{perspective}` does not survive a JSON round trip ({source}), \
         and the perspective store keeps models as JSON, so its stored models could not be read \
         back; the runtime was not built. Make the model's Serialize and Deserialize impls agree \
         (for example `#[serde(default)]` on a skipped field; a NaN or infinite float \
         serialises to null), or use a store that keeps typed models"
    )]
    ModelNotJson {
        /// The perspective.
        perspective: &'static str,
        /// The serialiser's or deserialiser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A queue operation named messages this instance no longer holds a lease
    /// on: the lease expired and another instance (or a later lease of this
    /// one) took the message over, or the message was already completed,
    /// failed or dead-lettered. Nothing was changed, for any of the ids.
    #[error(
        "instance {instance} no longer holds the lease on message(s) {}: the lease expired and \
         the message was taken over, or it was already completed or dead-lettered. Nothing was \
         changed. Stop working on these messages: their new owner processes them (renew leases \
         more often than they expire to keep a message)",
        id_list(message_ids)
    )]
    LeaseLost {
        /// The messages whose lease is lost (for a batch renewal, every one
        /// of them; the others were not renewed either).
        message_ids: Vec<MessageId>,
        /// The instance that asked.
        instance: InstanceId,
    },

    /// The backend does not offer what was asked of it (a store without
    /// rebuild support, an operation it does not implement): names the
    /// operation and what to use instead.
    ///
    /// ```
    /// # use whizbang_core::Error;
    /// let err = Error::Unsupported("rebuild perspective `p`: the event store lists no streams".into());
    /// assert!(err.to_string().contains("not supported"));
    /// ```
    #[error("not supported by this backend: {0}")]
    Unsupported(String),

    /// A perspective declares a newer version of its apply code than the one
    /// its live read models were built with, and the runtime was told not to
    /// rebuild on its own.
    #[error(
        "perspective `{perspective}` declares version {declared} but its read models were built \
         with version {built}: rebuild it (`runtime.rebuild::<P>()` or `whizbang rebuild \
         {perspective}`) or let the runtime do it at start"
    )]
    PerspectiveVersion {
        /// The perspective.
        perspective: &'static str,
        /// The version its code declares.
        declared: u32,
        /// The version its live models were built with.
        built: u32,
    },

    /// An invariant broke: a backend or the runtime itself answered something
    /// that cannot happen (a sync backend that answered no inquiry, a receptor
    /// output of another type). Not caused by your input.
    ///
    /// ```
    /// # use whizbang_core::Error;
    /// let err = Error::Invariant("the sync backend answered no inquiry".into());
    /// assert!(err.to_string().contains("report it"));
    /// ```
    #[error(
        "an invariant broke: {0}. This is a bug in whizbang or in a custom backend, not in \
         your input: please report it with this message"
    )]
    Invariant(String),

    /// A keyed perspective ([`IntoModelKey`](crate::IntoModelKey)) needs
    /// what the configured backend does not offer: an event store with a
    /// global order ([`EventStore::read_global`](crate::store::EventStore::read_global),
    /// [`global_positions`](crate::store::EventStore::global_positions)) or a
    /// perspective store that commits many models in one transaction
    /// ([`PerspectiveStore::claim_many`](crate::store::PerspectiveStore::claim_many)).
    /// Nothing was applied.
    #[error(
        "perspective `{perspective}` is keyed (`key = ..`) and needs {missing}, which the \
         configured backend does not offer; nothing was applied. Use a backend that supports \
         keyed perspectives (the in-memory stores do), or key the perspective by stream"
    )]
    KeyedUnsupported {
        /// The keyed perspective.
        perspective: &'static str,
        /// What the backend lacks.
        missing: &'static str,
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

    /// A backend failure: `operation` is what it was asked to do, as a verb
    /// phrase ("append 3 events to stream ..", "read checkpoints"), and
    /// `stored` what the failed call left behind.
    ///
    /// ```
    /// # use whizbang_core::{error::Stored, Error};
    /// let err = Error::backend("postgres", "append to stream 42", Stored::Nothing,
    ///     std::io::Error::other("connection refused"));
    /// assert!(err.to_string().contains("Nothing was stored"));
    /// ```
    pub fn backend(
        backend: &'static str,
        operation: impl Into<String>,
        stored: Stored,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend,
            operation: operation.into(),
            stored,
            source: source.into(),
        }
    }

    /// The variant's name, for `Debug` (exhaustive: a new variant must be named here).
    fn variant_name(&self) -> &'static str {
        match self {
            Error::NoReceptor { .. } => "NoReceptor",
            Error::DuplicateReceptor { .. } => "DuplicateReceptor",
            Error::CommandsWithoutReceptor { .. } => "CommandsWithoutReceptor",
            Error::DuplicateMessageName { .. } => "DuplicateMessageName",
            Error::DuplicatePerspective { .. } => "DuplicatePerspective",
            Error::NoRoutesRegistered => "NoRoutesRegistered",
            Error::Concurrency { .. } => "Concurrency",
            Error::Serialization { .. } => "Serialization",
            Error::Deserialization { .. } => "Deserialization",
            Error::ScopeCompleted => "ScopeCompleted",
            Error::Handler(_) => "Handler",
            Error::MissingService { .. } => "MissingService",
            Error::PerspectiveFailed { .. } => "PerspectiveFailed",
            Error::FoldFailed { .. } => "FoldFailed",
            Error::UnknownPerspective { .. } => "UnknownPerspective",
            Error::CascadeTooDeep { .. } => "CascadeTooDeep",
            Error::NoTokioRuntime => "NoTokioRuntime",
            Error::Backend { .. } => "Backend",
            Error::PerspectiveSyncTimeout { .. } => "PerspectiveSyncTimeout",
            Error::InlineStageWait { .. } => "InlineStageWait",
            Error::UnsupportedStage { .. } => "UnsupportedStage",
            Error::InvalidInput(_) => "InvalidInput",
            Error::CascadeFailed { .. } => "CascadeFailed",
            Error::NotSynced { .. } => "NotSynced",
            Error::EventRoundTrip { .. } => "EventRoundTrip",
            Error::DuplicateEventId { .. } => "DuplicateEventId",
            Error::PerspectiveNotFailed { .. } => "PerspectiveNotFailed",
            Error::ModelNotJson { .. } => "ModelNotJson",
            Error::LeaseLost { .. } => "LeaseLost",
            Error::Invariant(_) => "Invariant",
            Error::Unsupported(_) => "Unsupported",
            Error::PerspectiveVersion { .. } => "PerspectiveVersion",
            Error::KeyedUnsupported { .. } => "KeyedUnsupported",
        }
    }

    /// If this is a [`Error::Handler`] wrapping an `E` (also inside an
    /// [`Error::CascadeFailed`]), returns it.
    pub fn downcast_handler_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Handler(inner) => inner.downcast_ref::<E>(),
            Error::CascadeFailed { source, .. } => source.downcast_handler_ref::<E>(),
            _ => None,
        }
    }
}

/// Ids, comma-separated (at most 10 shown, then how many more).
fn id_list(ids: &[MessageId]) -> String {
    let mut out = ids
        .iter()
        .take(10)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > 10 {
        out.push_str(&format!(" and {} more", ids.len() - 10));
    }
    out
}

/// "command `A` has" / "commands `A`, `B` have".
fn command_list(commands: &[&str]) -> String {
    let names = commands
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if commands.len() == 1 {
        format!("command {names} has")
    } else {
        format!("commands {names} have")
    }
}

/// The sentence, the variant, then each cause the sentence does not already
/// show:
///
/// ```text
/// no receptor is registered for command `Orphan`: annotate ..
///
/// (whizbang_core::Error::NoReceptor)
/// ```
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sentence = self.to_string();
        write!(
            f,
            "{sentence}\n\n(whizbang_core::Error::{})",
            self.variant_name()
        )?;
        let mut shown = sentence;
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            let text = err.to_string();
            if !shown.contains(&text) {
                write!(f, "\ncaused by: {text}")?;
                shown.push('\n');
                shown.push_str(&text);
            }
            cause = err.source();
        }
        Ok(())
    }
}

/// What a failed backend call left in storage, so the caller knows whether
/// retrying can duplicate anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stored {
    /// Nothing was written: the call was a read, or its transaction rolled back.
    Nothing,
    /// The write may have committed: the connection was lost while committing.
    Unknown,
}

impl fmt::Display for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stored::Nothing => "Nothing was stored; retrying is safe.",
            Stored::Unknown => {
                "The write may or may not have been stored (the connection was lost while \
                 committing): read the stream before retrying a command that is not idempotent."
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Io(&'static str, Option<Box<Io>>);

    impl fmt::Display for Io {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Io {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn debug_shows_the_display_sentence_then_the_variant() {
        let err = Error::NoReceptor {
            message_type: "Orphan",
        };
        let debug = format!("{err:?}");
        assert!(debug.starts_with(&err.to_string()), "{debug}");
        assert!(debug.contains("#[receptor]"), "says what to do: {debug}");
        assert!(
            debug.ends_with("(whizbang_core::Error::NoReceptor)"),
            "{debug}"
        );
        // What `fn main() -> Result<()>` prints on error.
        let main = format!("Error: {err:?}");
        assert!(main.contains("no receptor is registered for command `Orphan`"));
    }

    #[test]
    fn debug_lists_causes_the_sentence_does_not_already_show() {
        let inner = Io("connection reset by peer", None);
        let err = Error::handler(Io("ledger unavailable", Some(Box::new(inner))));
        let debug = format!("{err:?}");
        assert_eq!(
            debug,
            "ledger unavailable\n\n(whizbang_core::Error::Handler)\n\
             caused by: connection reset by peer",
        );
    }

    #[test]
    fn lease_lost_names_the_instance_and_at_most_ten_ids() {
        let instance = InstanceId::new();
        let ids: Vec<MessageId> = (0..12).map(|_| MessageId::new()).collect();
        let err = Error::LeaseLost {
            message_ids: ids.clone(),
            instance,
        };
        let text = err.to_string();
        assert!(text.contains(&instance.to_string()), "{text}");
        assert!(text.contains(&ids[9].to_string()), "{text}");
        assert!(!text.contains(&ids[10].to_string()), "{text}");
        assert!(text.contains("and 2 more"), "{text}");
        assert!(text.contains("Nothing was changed"), "{text}");
        assert!(format!("{err:?}").ends_with("(whizbang_core::Error::LeaseLost)"));
    }

    #[test]
    fn backend_errors_say_what_failed_what_was_stored_and_what_to_check() {
        let err = Error::backend(
            "postgres",
            "append 2 events to stream 7",
            Stored::Nothing,
            Io("connection refused", None),
        );
        let message = err.to_string();
        assert!(
            message.starts_with(
                "the postgres backend failed to append 2 events to stream 7: connection refused."
            ),
            "{message}"
        );
        assert!(
            message.contains("Nothing was stored; retrying is safe."),
            "{message}"
        );
        assert!(message.contains("reachable"), "what to check: {message}");
        let unknown = Error::backend("postgres", "commit", Stored::Unknown, Io("eof", None));
        assert!(
            unknown
                .to_string()
                .contains("may or may not have been stored"),
            "{unknown}"
        );
        assert!(
            format!("{unknown:?}").ends_with("(whizbang_core::Error::Backend)"),
            "the source is in the sentence, not repeated: {unknown:?}"
        );
    }
}

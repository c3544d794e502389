//! A given / when / then test harness for receptors and perspectives (after
//! cqrs-es's `TestFramework` and disintegrate's `TestHarness`).
//!
//! [`TestHarness`] builds a runtime on in-memory backends from a CHOSEN SUBSET
//! of this binary's receptors and perspectives (through
//! [`Registry::builder`](crate::Registry::builder)), so tests in one binary do not run each other's
//! handlers. Given events are stored as the streams' history and applied to
//! the subset's perspectives, without running any receptor; the command is
//! sent in one scope, which is completed, and the runtime is left idle. Then
//! [`Then`] asserts on what the command emitted (by wire name and JSON), its
//! error or output, or a perspective's model.
//!
//! This module only drives the public runtime; it adds nothing to it.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use uuid::Uuid;
//! use whizbang_core::testing::TestHarness;
//! use whizbang_core::{perspective, receptor, Command, Context, Error, Event, Receptor, Result};
//!
//! #[derive(Command, Serialize, Deserialize)]
//! struct Ship { order: Uuid }
//!
//! #[derive(Event, Serialize, Deserialize)]
//! struct Placed { #[stream_key] order: Uuid }
//!
//! #[derive(Event, Serialize, Deserialize)]
//! struct Shipped { #[stream_key] order: Uuid }
//!
//! #[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
//! struct Order { placed: bool, shipped: bool }
//!
//! struct Orders;
//!
//! #[perspective(model = Order)]
//! impl Orders {
//!     fn placed(o: &mut Order, _: &Placed) { o.placed = true; }
//!     fn shipped(o: &mut Order, _: &Shipped) { o.shipped = true; }
//! }
//!
//! #[derive(Default)]
//! struct Dock;
//!
//! #[receptor]
//! impl Receptor<Ship> for Dock {
//!     async fn handle(&self, cmd: Ship, cx: &mut Context) -> Result<()> {
//!         let order = cx.aggregate::<Orders>(cmd.order).await?;
//!         if !order.placed || order.shipped {
//!             return Err(Error::rejected("nothing to ship"));
//!         }
//!         cx.emit(Shipped { order: cmd.order })?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let order = Uuid::now_v7();
//! let then = TestHarness::new()
//!     .receptor::<Dock, Ship>()
//!     .perspective::<Orders>()
//!     .given(Placed { order })
//!     .when(Ship { order })
//!     .await;
//! then.expect_events([Shipped { order }.into()]);
//! then.expect_model::<Orders>(order, &Order { placed: true, shipped: true }).await;
//!
//! TestHarness::new()
//!     .receptor::<Dock, Ship>()
//!     .when(Ship { order })
//!     .await
//!     .expect_error_message("nothing to ship");
//! # }
//! ```

use crate::dispatch::encode_event;
use crate::error::{Error, Result};
use crate::lens::LensQuery;
use crate::message::{Command, Event, Message, MessageId, StreamId};
use crate::perspective::Perspective;
use crate::registry::RegistryBuilder;
use crate::store::memory::MemoryEventStore;
use crate::store::{EventMetadata, NewEvent, StreamAppend};
use crate::{ExpectedVersion, Receptor, Runtime, RuntimeBuilder};
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::SystemTime;

type Configure = Box<dyn FnOnce(RuntimeBuilder) -> RuntimeBuilder + Send>;

/// Given events, when a command, then its events, error or models: a runtime
/// on in-memory backends with only the receptors and perspectives you add.
///
/// See the [module docs](self) for an example.
#[derive(Default)]
pub struct TestHarness {
    registry: RegistryBuilder,
    configure: Vec<Configure>,
    given: Vec<Result<NewEvent>>,
}

impl fmt::Debug for TestHarness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHarness")
            .field("registry", &self.registry)
            .field("given", &self.given.len())
            .finish_non_exhaustive()
    }
}

impl TestHarness {
    /// A harness with no receptor or perspective yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes message `M` to receptor `R` (its `#[receptor]` registration).
    #[must_use]
    pub fn receptor<R: Receptor<M>, M: Message>(mut self) -> Self {
        self.registry = self.registry.receptor::<R, M>();
        self
    }

    /// Routes every message receptor type `R` handles to it.
    #[must_use]
    pub fn receptors_of<R: 'static>(mut self) -> Self {
        self.registry = self.registry.receptors_of::<R>();
        self
    }

    /// Applies perspective `P` (to the given events and to what the command emits).
    #[must_use]
    pub fn perspective<P: Perspective>(mut self) -> Self {
        self.registry = self.registry.perspective::<P>();
        self
    }

    /// Offers a service to the receptors, as
    /// [`RuntimeBuilder::service`](crate::RuntimeBuilder::service).
    #[must_use]
    pub fn service<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.configure.push(Box::new(move |b| b.service(value)));
        self
    }

    /// Offers an already shared service, as
    /// [`RuntimeBuilder::shared_service`](crate::RuntimeBuilder::shared_service)
    /// (keep a clone to look at it after the command).
    #[must_use]
    pub fn shared_service<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.configure
            .push(Box::new(move |b| b.shared_service(value)));
        self
    }

    /// Adds `event` to its stream's history, after the events given before
    /// it. Given events are stored and applied to the harness's perspectives
    /// before the command is sent; no receptor runs on them.
    #[must_use]
    pub fn given<E: Event>(mut self, event: E) -> Self {
        let metadata = EventMetadata {
            correlation_id: MessageId::new(),
            causation_id: None,
            timestamp: SystemTime::now(),
            extra: crate::Metadata::default(),
        };
        self.given.push(encode_event(event, metadata));
        self
    }

    /// Sends `command` after storing the given events; see [`try_when`](Self::try_when).
    ///
    /// # Panics
    /// When the harness could not be set up (an error from
    /// [`try_when`](Self::try_when)), with that error's sentence. A command
    /// that fails does not panic: its error is in the [`Then`].
    pub async fn when<C: Command>(self, command: C) -> Then<C::Output> {
        match self.try_when(command).await {
            Ok(then) => then,
            Err(e) => panic!("the test harness could not run the command: {e}"),
        }
    }

    /// Builds the runtime, stores the given events and applies them to the
    /// harness's perspectives, sends `command` in a new scope, completes the
    /// scope and waits until the runtime is idle (async perspectives applied,
    /// detached receptors done). The [`Then`] events are every event stored
    /// from the send on: the command's, its cascade's and those of receptors
    /// at perspective stages.
    ///
    /// # Errors
    /// Setting up: registry errors ([`RegistryBuilder::build`]), runtime build
    /// errors ([`Error::MissingService`], ..), a given event that does not
    /// serialize, a perspective that fails on the given events; and
    /// [`Error::PerspectiveFailed`] when an inline perspective fails on what
    /// the command emitted (the scope did not complete cleanly). The command's
    /// own error is not an error here: it is in the [`Then`].
    pub async fn try_when<C: Command>(self, command: C) -> Result<Then<C::Output>> {
        let registry = Arc::new(self.registry.build()?);
        let mut builder = Runtime::builder().registry(registry);
        for configure in self.configure {
            builder = configure(builder);
        }
        let store = MemoryEventStore::new();
        let runtime = builder.event_store(store.clone()).build()?;
        let given = self.given.into_iter().collect::<Result<Vec<_>>>()?;
        store_history(&runtime, given).await?;
        let before = store.all_events().len();
        let scope = runtime.scope();
        let output = scope.send(command).await;
        scope.complete().await?;
        runtime.wait_idle().await;
        let mut events = Vec::new();
        for ev in store.all_events().iter().skip(before) {
            let data =
                serde_json::from_str(ev.data.get()).map_err(|source| Error::Deserialization {
                    type_name: ev.event_type.to_string(),
                    source,
                })?;
            events.push(RecordedEvent {
                event_type: ev.event_type.to_string(),
                stream_id: ev.stream_id,
                stream_version: ev.stream_version,
                data,
            });
        }
        Ok(Then {
            runtime,
            output,
            events,
        })
    }
}

/// Appends the given events (one append, in order) and brings every
/// perspective of the runtime up to date on their streams.
async fn store_history(runtime: &Runtime, given: Vec<NewEvent>) -> Result<()> {
    if given.is_empty() {
        return Ok(());
    }
    let mut appends: Vec<StreamAppend> = Vec::new();
    let mut streams: Vec<StreamId> = Vec::new();
    for ev in given {
        if !streams.contains(&ev.stream_id) {
            streams.push(ev.stream_id);
        }
        match appends.last_mut() {
            Some(last) if last.stream_id == ev.stream_id => last.events.push(ev),
            _ => appends.push(StreamAppend {
                stream_id: ev.stream_id,
                expected: ExpectedVersion::Any,
                events: vec![ev],
            }),
        }
    }
    runtime.event_store().append(appends).await?;
    for stream in streams {
        for reg in runtime.registry().perspectives() {
            runtime.inner.engine.catch_up(reg, stream).await?;
        }
    }
    Ok(())
}

/// An event the command stored, as any process reads it: wire name and JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    /// Its wire name.
    pub event_type: String,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its payload.
    pub data: serde_json::Value,
}

impl RecordedEvent {
    /// The event as an `E`, when it is one (by wire name) and decodes.
    #[must_use]
    pub fn decode<E: Event>(&self) -> Option<E> {
        if self.event_type != E::NAME {
            return None;
        }
        serde_json::from_value(self.data.clone()).ok()
    }
}

impl fmt::Display for RecordedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.event_type, self.data)
    }
}

/// An event a test expects, by wire name and JSON. Made from any event with
/// `.into()`, so a list of different event types reads
/// `[Placed { .. }.into(), Shipped { .. }.into()]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedEvent {
    event_type: &'static str,
    data: std::result::Result<serde_json::Value, String>,
}

impl<E: Event> From<E> for ExpectedEvent {
    fn from(event: E) -> Self {
        ExpectedEvent {
            event_type: E::NAME,
            data: serde_json::to_value(&event).map_err(|e| e.to_string()),
        }
    }
}

impl ExpectedEvent {
    fn matches(&self, actual: &RecordedEvent) -> bool {
        self.event_type == actual.event_type && self.data.as_ref() == Ok(&actual.data)
    }
}

impl fmt::Display for ExpectedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.data {
            Ok(data) => write!(f, "{} {data}", self.event_type),
            Err(e) => write!(f, "{} (does not serialize: {e})", self.event_type),
        }
    }
}

/// What a command did: its output or error, the events stored because of it
/// (its cascade's and its stage receptors' included), and the runtime, to read models. Made by
/// [`TestHarness::when`].
///
/// The `expect_*` methods panic with a message that shows expected and
/// actual; they are assertions.
pub struct Then<O> {
    runtime: Runtime,
    output: Result<O>,
    events: Vec<RecordedEvent>,
}

impl<O> fmt::Debug for Then<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Then")
            .field("error", &self.output.as_ref().err())
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "  (none)\n".to_owned();
    }
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        let _ = writeln!(out, "  {}. {item}", i + 1);
    }
    out
}

impl<O> Then<O> {
    /// The events stored because of the command, in order (its cascade's and
    /// its stage receptors' included).
    #[must_use]
    pub fn events(&self) -> &[RecordedEvent] {
        &self.events
    }

    /// The command's result.
    pub fn result(&self) -> &Result<O> {
        &self.output
    }

    /// The runtime the command ran on (its stores, lenses, awaiter).
    #[must_use]
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Asserts the command succeeded and stored exactly `expected`, in order,
    /// compared by wire name and JSON.
    ///
    /// # Panics
    /// When the command failed or the events differ; the message lists both.
    #[track_caller]
    pub fn expect_events(&self, expected: impl IntoIterator<Item = ExpectedEvent>) -> &Self {
        let expected: Vec<ExpectedEvent> = expected.into_iter().collect();
        if let Err(e) = &self.output {
            panic!(
                "expected the command to store these events:\n{}but it failed: {e}",
                list(&expected)
            );
        }
        let same = expected.len() == self.events.len()
            && expected.iter().zip(&self.events).all(|(x, a)| x.matches(a));
        if !same {
            let first = expected
                .iter()
                .zip(&self.events)
                .position(|(x, a)| !x.matches(a))
                .unwrap_or(expected.len().min(self.events.len()));
            panic!(
                "the command stored other events than expected (first difference at #{}):\n\
                 expected {}:\n{}actual {}:\n{}",
                first + 1,
                expected.len(),
                list(&expected),
                self.events.len(),
                list(&self.events)
            );
        }
        self
    }

    /// Asserts the command succeeded and stored no event.
    ///
    /// # Panics
    /// When it failed or stored events.
    #[track_caller]
    pub fn expect_no_events(&self) -> &Self {
        self.expect_events([])
    }

    /// Asserts the command failed and returns its error, to match on.
    ///
    /// # Panics
    /// When the command succeeded; the message lists what it stored.
    #[track_caller]
    pub fn expect_error(self) -> Error {
        match self.output {
            Err(e) => e,
            Ok(_) => panic!(
                "expected the command to fail, but it succeeded and stored:\n{}",
                list(&self.events)
            ),
        }
    }

    /// Asserts the command failed with an error whose message contains `part`.
    ///
    /// # Panics
    /// When it succeeded, or failed with another message.
    #[track_caller]
    pub fn expect_error_message(&self, part: &str) -> &Self {
        match &self.output {
            Err(e) if e.to_string().contains(part) => self,
            Err(e) => panic!("expected the command to fail with a message containing {part:?}, but it failed with: {e}"),
            Ok(_) => panic!(
                "expected the command to fail with a message containing {part:?}, but it \
                 succeeded and stored:\n{}",
                list(&self.events)
            ),
        }
    }

    /// Asserts the command succeeded and returns its output.
    ///
    /// # Panics
    /// When it failed, with its error.
    #[track_caller]
    pub fn expect_output(self) -> O {
        match self.output {
            Ok(o) => o,
            Err(e) => panic!("expected the command to succeed, but it failed: {e}"),
        }
    }

    /// Perspective `P`'s stored model with this id, if any.
    ///
    /// # Errors
    /// A backend or decode error.
    pub async fn model<P: Perspective>(&self, id: impl Into<StreamId>) -> Result<Option<P::Model>> {
        self.runtime.lens::<P>().get(id.into()).await
    }

    /// Asserts perspective `P`'s stored model with this id equals `expected`.
    ///
    /// # Panics
    /// When there is no such model, it differs, or it cannot be read.
    #[track_caller]
    pub fn expect_model<P>(
        &self,
        id: impl Into<StreamId>,
        expected: &P::Model,
    ) -> impl std::future::Future<Output = ()> + '_
    where
        P: Perspective,
        P::Model: PartialEq + fmt::Debug,
    {
        let id = id.into();
        let caller = std::panic::Location::caller();
        let expected = expected.clone();
        async move {
            match self.model::<P>(id).await {
                Ok(Some(actual)) if actual == expected => {}
                Ok(Some(actual)) => panic!(
                    "perspective `{}` model {id} differs (asserted at {caller}):\n  expected: \
                     {expected:?}\n  actual:   {actual:?}",
                    P::NAME
                ),
                Ok(None) => panic!(
                    "perspective `{}` has no model {id} (asserted at {caller}); expected \
                     {expected:?}. Is `{}` in the harness (`.perspective::<P>()`), and does it \
                     handle the events?",
                    P::NAME,
                    P::NAME
                ),
                Err(e) => panic!(
                    "perspective `{}` model {id} could not be read (asserted at {caller}): {e}",
                    P::NAME
                ),
            }
        }
    }
}

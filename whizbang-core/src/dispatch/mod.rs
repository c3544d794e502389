//! Dispatch: the runtime, scopes, receptor contexts and the receptor contract.
//!
//! This module owns the path from `scope.send(cmd)` to the receptor and back:
//! routing through the [`Registry`](crate::Registry), appending what receptors
//! emit with optimistic concurrency, cascading events to event receptors, and
//! queueing them in the scope's event log for the flush. It applies no perspective
//! itself (that is [`perspective`](mod@crate::perspective)) and stores nothing
//! itself (that is [`store`](crate::store)).
//!
//! Its files follow the data path, each importing only those before it:
//! `runtime.rs` (the runtime and its builder), `scope.rs` (the scope's own
//! state), `context.rs` (what a receptor sees), `stages.rs` (running receptors
//! at their stages), `flush.rs` (the cancel-safe flush run, `complete()`),
//! `send.rs` (sending, the cascade, the one append), `receive.rs` (an event
//! from another process, with the inbox stages) and `send_and_sync.rs`.

mod context;
mod explicit_sync;
mod flush;
mod perspective_status;
mod rebuild;
mod receive;
mod runtime;
mod scope;
mod send;
mod send_and_sync;
mod stages;

pub use crate::stage::{LifecycleStage, SyncFire};
pub(crate) use context::encode_event;
pub use context::Context;
pub use explicit_sync::{PerspectiveSync, SyncHandle};
pub use runtime::DetachedFailure;
pub use runtime::{Backend, Runtime, RuntimeBuilder, WeakRuntime};
pub use scope::Scope;
pub use send_and_sync::{NotSynced, SendAndSync};

pub use crate::registry::SyncRequirement;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::registry::{ErasedReceptor, ReceptorRegistration, RegistryBuilder};
use crate::services::{FromServices, Services};
use crate::store::{BoxFuture, StoredEvent};
use std::any::{Any, TypeId};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

/// Proof that `#[receptor]` registered `Self` as the receptor of `M`.
///
/// A supertrait of [`Receptor`]: only the macro implements it, so an
/// `impl Receptor<M> for T` without `#[receptor]` (which would compile and
/// never run) is a compile error that says what to add.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` implements `Receptor<{M}>` without #[receptor], so it would never run",
    label = "not registered: add #[receptor] to this impl",
    note = "add #[receptor] to the `impl Receptor<{M}> for {Self}` block: it registers the receptor \
            so the runtime routes `{M}` to it"
)]
pub trait Registered<M> {}

/// Handles one message type. Annotate the impl with `#[receptor]` to register it:
/// an impl without it would never run, so it does not compile (the hidden
/// supertrait is implemented by the macro only).
///
/// A command receptor returns the command's output to the caller; an event
/// receptor returns `()`. Either emits events through its [`Context`].
///
/// ```
/// use whizbang_core::{receptor, Command, Context, Receptor, Result};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Command, Serialize, Deserialize)]
/// #[command(output = u32)]
/// struct Double { n: u32 }
///
/// #[derive(Default)]
/// struct Doubler;
///
/// #[receptor]
/// impl Receptor<Double> for Doubler {
///     async fn handle(&self, cmd: Double, _cx: &mut Context) -> Result<u32> {
///         Ok(cmd.n * 2)
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a receptor for `{M}`",
    label = "no `Receptor<{M}>` impl",
    note = "implement `Receptor<{M}>` for `{Self}` and annotate the impl with #[receptor]"
)]
pub trait Receptor<M: Message>: Registered<M> + Send + Sync + 'static {
    /// Handles the message. Whatever it emits through `cx` is appended only
    /// when it returns `Ok`.
    fn handle(
        &self,
        message: M,
        cx: &mut Context,
    ) -> impl Future<Output = Result<M::Output>> + Send;
}

impl ReceptorRegistration {
    /// The registration of receptor `R` for message `M`. For generated code
    /// (and tests that build a [`Registry`](crate::Registry) by hand).
    #[doc(hidden)]
    #[must_use]
    pub const fn of<R, M>(receptor: &'static str, module_path: &'static str) -> Self
    where
        R: Receptor<M> + FromServices,
        M: Message,
    {
        ReceptorRegistration {
            receptor,
            module_path,
            message_name: M::NAME,
            message_kind: M::KIND,
            message_type: TypeId::of::<M>,
            receptor_type: TypeId::of::<R>,
            stage: None,
            sync: &[],
            build: ReceptorAdapter::<R, M>::build,
        }
    }
}

impl RegistryBuilder {
    /// Adds receptor `R`'s registration for message `M` (`#[receptor] impl
    /// Receptor<M> for R`). Adding it twice adds it once.
    #[must_use]
    pub fn receptor<R, M>(self) -> Self
    where
        R: Receptor<M>,
        M: Message,
    {
        self.receptor_by_type(
            TypeId::of::<R>(),
            TypeId::of::<M>(),
            std::any::type_name::<R>(),
            M::NAME,
        )
    }
}

// Build cost: everything below is instantiated once per receptor (or per
// message type) in the user's crate, so the generic part stays a shim that
// downcasts and calls; the shared machinery is non-generic. A command's
// payload is never decoded from the store, so its decoder (a whole serde
// deserializer) is not even instantiated: see `Decoder::OF`.

pub(crate) struct ReceptorAdapter<R, M> {
    receptor: R,
    _m: PhantomData<fn(M)>,
}

impl<R, M> ReceptorAdapter<R, M>
where
    R: Receptor<M> + FromServices,
    M: Message,
{
    pub(crate) fn build(services: &Services) -> Result<Arc<dyn ErasedReceptor>> {
        Ok(Arc::new(ReceptorAdapter::<R, M> {
            receptor: R::from_services(services)?,
            _m: PhantomData,
        }))
    }
}

impl<R, M> ErasedReceptor for ReceptorAdapter<R, M>
where
    R: Receptor<M>,
    M: Message,
{
    fn call<'a>(
        &'a self,
        message: &mut (dyn Any + Send),
        cx: &'a mut (dyn Any + Send),
    ) -> BoxFuture<'a, Result<Box<dyn Any + Send>>> {
        let message = match message.downcast_mut::<Option<M>>() {
            Some(slot) => slot.take(),
            None => None,
        };
        match (message, cx.downcast_mut::<Context>()) {
            (Some(message), Some(cx)) => erase_output(Box::pin(self.receptor.handle(message, cx))),
            _ => wrong_message(M::NAME),
        }
    }

    fn decode(&self, event: &StoredEvent) -> Result<Box<dyn Any + Send>> {
        decode_event(event, Decoder::<M>::OF)
    }
}

/// Decodes a stored payload into a boxed `Option<M>` (the slot `call` takes).
type DecodeFn = fn(&str) -> std::result::Result<Box<dyn Any + Send>, serde_json::Error>;

struct Decoder<M>(PhantomData<fn() -> M>);

impl<M: Message> Decoder<M> {
    /// The decoder of an event type; `None` for a command (evaluated at
    /// compile time, so a command's deserializer is never instantiated here).
    const OF: Option<DecodeFn> = match M::KIND {
        crate::message::MessageKind::Event => Some(decode_payload::<M>),
        crate::message::MessageKind::Command => None,
    };
}

fn decode_payload<M: Message>(
    data: &str,
) -> std::result::Result<Box<dyn Any + Send>, serde_json::Error> {
    match serde_json::from_str::<M>(data) {
        Ok(m) => Ok(Box::new(Some(m))),
        Err(e) => Err(e),
    }
}

#[inline(never)]
fn decode_event(event: &StoredEvent, decode: Option<DecodeFn>) -> Result<Box<dyn Any + Send>> {
    let Some(decode) = decode else {
        return Err(Error::Invariant(format!(
            "stored `{}` {} was routed to a command receptor; only event receptors decode stored events",
            event.event_type, event.event_id
        )));
    };
    decode(event.data.get()).map_err(|source| Error::Deserialization {
        type_name: event.event_type.to_string(),
        source,
    })
}

#[inline(never)]
fn wrong_message<'a>(name: &'static str) -> BoxFuture<'a, Result<Box<dyn Any + Send>>> {
    Box::pin(std::future::ready(Err(Error::Invariant(format!(
        "message routed to the receptor of `{name}` has another type, or was taken, or came \
         without a dispatch `Context`"
    )))))
}

/// The receptor's future with its output boxed: generic over the output type
/// only, so every receptor returning the same type shares one instance.
fn erase_output<T: Send + 'static>(
    inner: BoxFuture<'_, Result<T>>,
) -> BoxFuture<'_, Result<Box<dyn Any + Send>>> {
    Box::pin(ErasedOutput { inner })
}

struct ErasedOutput<'a, T> {
    inner: BoxFuture<'a, Result<T>>,
}

impl<T: Send + 'static> Future for ErasedOutput<'_, T> {
    type Output = Result<Box<dyn Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.inner.as_mut().poll(cx) {
            std::task::Poll::Ready(Ok(out)) => std::task::Poll::Ready(Ok(Box::new(out))),
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

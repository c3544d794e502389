//! Dispatch: the runtime, scopes, receptor contexts and the receptor contract.
//!
//! This module owns the path from `scope.send(cmd)` to the receptor and back:
//! routing through the [`Registry`](crate::Registry), appending what receptors
//! emit with optimistic concurrency, cascading events to event receptors, and
//! queueing them in the scope's perspective invoker. It applies no perspective
//! itself (that is [`perspective`](mod@crate::perspective)) and stores nothing
//! itself (that is [`store`](crate::store)).

mod context;
mod lifecycle;
mod runtime;
mod scope;
mod send_and_sync;
mod stage;

pub use context::Context;
pub use lifecycle::DetachedFailure;
pub(crate) use runtime::RuntimeInner;
pub use runtime::{Runtime, RuntimeBuilder};
pub(crate) use scope::ScopeShared;
pub use scope::{EmittedEvent, Scope};
pub use send_and_sync::{NotSynced, SendAndSync};
pub use stage::{LifecycleStage, SyncFire, SyncRequirement};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::services::{FromServices, Services};
use crate::store::{BoxFuture, StoredEvent};
use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

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
pub trait Receptor<M: Message>: crate::registry::Registered<M> + Send + Sync + 'static {
    /// Handles the message. Whatever it emits through `cx` is appended only
    /// when it returns `Ok`.
    fn handle(
        &self,
        message: M,
        cx: &mut Context,
    ) -> impl Future<Output = Result<M::Output>> + Send;
}

/// A receptor with its message type erased, built once per runtime.
pub(crate) trait ErasedReceptor: Send + Sync {
    fn call<'a>(
        &'a self,
        message: Box<dyn Any + Send>,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<Box<dyn Any + Send>>>;

    fn decode(&self, event: &StoredEvent) -> Result<Box<dyn Any + Send>>;
}

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
        message: Box<dyn Any + Send>,
        cx: &'a mut Context,
    ) -> BoxFuture<'a, Result<Box<dyn Any + Send>>> {
        Box::pin(async move {
            let message = message.downcast::<M>().map_err(|_| {
                Error::InvalidInput(format!(
                    "message routed to the receptor of `{}` has another type",
                    M::NAME
                ))
            })?;
            let out = self.receptor.handle(*message, cx).await?;
            Ok(Box::new(out) as Box<dyn Any + Send>)
        })
    }

    fn decode(&self, event: &StoredEvent) -> Result<Box<dyn Any + Send>> {
        serde_json::from_str::<M>(event.data.get())
            .map(|m| Box::new(m) as Box<dyn Any + Send>)
            .map_err(|source| Error::Deserialization {
                type_name: event.event_type.to_string(),
                source,
            })
    }
}

//! Typed services for receptors: a map from type to shared instance, filled
//! when the runtime is built and read when receptors are constructed.
//!
//! Like axum's state or bevy's resources: a receptor that needs a lens, a pool
//! or a client declares it through [`FromServices`], resolved once at build
//! time, never per call and never by reflection.

use crate::error::{Error, Result};
use crate::store::{EventStore, PerspectiveStore};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

/// The services a runtime offers to its receptors.
#[derive(Clone)]
pub struct Services {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    event_store: Arc<dyn EventStore>,
    perspective_store: Arc<dyn PerspectiveStore>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("count", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl Services {
    pub(crate) fn new(
        event_store: Arc<dyn EventStore>,
        perspective_store: Arc<dyn PerspectiveStore>,
    ) -> Self {
        Services {
            map: HashMap::new(),
            event_store,
            perspective_store,
        }
    }

    pub(crate) fn insert_arc<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.map.insert(TypeId::of::<T>(), value);
    }

    /// The service of type `T`, or [`Error::MissingService`] naming `needed_by`.
    ///
    /// # Errors
    /// [`Error::MissingService`] when no `T` was registered with
    /// [`RuntimeBuilder::service`](crate::RuntimeBuilder::service).
    pub fn require<T: Send + Sync + 'static>(&self, needed_by: &'static str) -> Result<Arc<T>> {
        self.get::<T>().ok_or(Error::MissingService {
            type_name: std::any::type_name::<T>(),
            needed_by,
        })
    }

    /// The service of type `T`, if registered.
    #[must_use]
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|s| Arc::clone(s).downcast::<T>().ok())
    }

    /// The event store.
    #[must_use]
    pub fn event_store(&self) -> &Arc<dyn EventStore> {
        &self.event_store
    }

    /// The perspective store.
    #[must_use]
    pub fn perspective_store(&self) -> &Arc<dyn PerspectiveStore> {
        &self.perspective_store
    }
}

/// How a receptor is constructed from the runtime's services, once, when the
/// runtime is built.
///
/// Every `Default` type gets this for free. Implement it for receptors that
/// hold services:
///
/// ```
/// use std::sync::Arc;
/// use whizbang_core::{FromServices, Result, Services};
///
/// struct Mailer;
/// struct ConfirmationSender { mailer: Arc<Mailer> }
///
/// impl FromServices for ConfirmationSender {
///     fn from_services(services: &Services) -> Result<Self> {
///         Ok(Self { mailer: services.require::<Mailer>("ConfirmationSender")? })
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "whizbang cannot construct `{Self}` for the runtime",
    note = "derive `Default` for `{Self}`, or implement `FromServices` to take what it needs from the runtime's services"
)]
pub trait FromServices: Sized + Send + Sync + 'static {
    /// Builds the value.
    ///
    /// # Errors
    /// Typically [`Error::MissingService`].
    fn from_services(services: &Services) -> Result<Self>;
}

impl<T: Default + Send + Sync + 'static> FromServices for T {
    fn from_services(_: &Services) -> Result<Self> {
        Ok(T::default())
    }
}

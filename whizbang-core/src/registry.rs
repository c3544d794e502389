//! The compile-time routing tables, collected from `inventory` once.
//!
//! The macros emit one const registration record per annotated item; this
//! module owns those record types and the [`Registry`] built from them:
//! sorted into a stable order (inventory has none), checked for duplicates,
//! and indexed by message type. It never calls user code.
//!
//! It sits below dispatch: the receptor contract ([`Receptor`](crate::Receptor),
//! `ReceptorRegistration::of`, the typed `RegistryBuilder::receptor`) lives
//! there, and reaches this module through the erased receptor, whose context
//! is opaque here.

use crate::error::{Error, Result};
use crate::message::{Message, MessageKind};
use crate::perspective::Perspective;
use crate::services::Services;
use crate::stage::{LifecycleStage, SyncFire};
use crate::store::{BoxFuture, StoredEvent};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

pub use crate::perspective::PerspectiveRegistration;

/// A receptor with its message type erased, built once per runtime.
pub(crate) trait ErasedReceptor: Send + Sync {
    /// Calls the receptor with the message taken out of `message`, an
    /// `Option<M>` slot (no box per message; the slot is left `None`), and
    /// `cx`, the dispatcher's `Context` (erased here so that the registry
    /// stays below dispatch: the adapter that implements this downcasts it).
    fn call<'a>(
        &'a self,
        message: &mut (dyn Any + Send),
        cx: &'a mut (dyn Any + Send),
    ) -> BoxFuture<'a, Result<Box<dyn Any + Send>>>;

    /// Decodes a stored event into a boxed `Option<M>` slot for [`call`](Self::call).
    fn decode(&self, event: &StoredEvent) -> Result<Box<dyn Any + Send>>;
}

/// A receptor, as registered by `#[receptor]`.
#[derive(Debug)]
pub struct ReceptorRegistration {
    /// The receptor type, as written.
    pub receptor: &'static str,
    /// The module it was declared in.
    pub module_path: &'static str,
    /// The wire name of the message it handles.
    pub message_name: &'static str,
    /// Command or event.
    pub message_kind: MessageKind,
    /// The `TypeId` of the message.
    pub message_type: fn() -> TypeId,
    /// The `TypeId` of the receptor type.
    pub receptor_type: fn() -> TypeId,
    /// The stage set with `#[fire_at]`, if any.
    pub stage: Option<LifecycleStage>,
    /// The perspectives to await before it runs (`#[await_perspective_sync]`).
    pub sync: &'static [SyncRequirement],
    /// Builds the receptor from the runtime's services (set by the
    /// dispatcher's `ReceptorRegistration::of`, which knows the receptor contract).
    pub(crate) build: fn(&Services) -> Result<Arc<dyn ErasedReceptor>>,
}

impl ReceptorRegistration {
    /// Fires at `stage` (`#[fire_at(stage)]`). For generated code.
    #[doc(hidden)]
    #[must_use]
    pub const fn fire_at(mut self, stage: LifecycleStage) -> Self {
        self.stage = Some(stage);
        self
    }

    /// Awaits these perspectives before running (`#[await_perspective_sync]`).
    /// For generated code.
    #[doc(hidden)]
    #[must_use]
    pub const fn awaiting(mut self, sync: &'static [SyncRequirement]) -> Self {
        self.sync = sync;
        self
    }

    /// The stage it runs at: the one set, or the default for its kind
    /// (`PostDistributeInline`, or `PostDistributeDetached` when it awaits sync).
    #[must_use]
    pub fn effective_stage(&self) -> LifecycleStage {
        match self.stage {
            Some(s) => s,
            None if self.sync.is_empty() => LifecycleStage::PostDistributeInline,
            None => LifecycleStage::PostDistributeDetached,
        }
    }

    /// `module::Receptor`, for messages.
    #[must_use]
    pub fn path(&self) -> String {
        format!("{}::{}", self.module_path, self.receptor)
    }
}

/// A message type, as registered by `#[derive(Event)]` / `#[derive(Command)]`.
#[derive(Debug)]
pub struct MessageRegistration {
    /// The wire name.
    pub name: &'static str,
    /// The Rust type, as written.
    pub type_name: &'static str,
    /// The module it was declared in.
    pub module_path: &'static str,
    /// Command or event.
    pub kind: MessageKind,
    /// Its `TypeId`.
    pub type_id: fn() -> TypeId,
    /// Whether it leaves the service through the outbox (`#[event(publish)]`).
    pub outbound: bool,
}

impl MessageRegistration {
    /// Marks it outbound (`#[event(publish)]`). For generated code.
    #[doc(hidden)]
    #[must_use]
    pub const fn outbound(mut self) -> Self {
        self.outbound = true;
        self
    }

    /// The registration of message `M`. For generated code.
    #[doc(hidden)]
    #[must_use]
    pub const fn of<M: Message>(type_name: &'static str, module_path: &'static str) -> Self {
        MessageRegistration {
            name: M::NAME,
            type_name,
            module_path,
            kind: M::KIND,
            type_id: TypeId::of::<M>,
            outbound: false,
        }
    }
}

inventory::collect!(ReceptorRegistration);
inventory::collect!(PerspectiveRegistration);
inventory::collect!(MessageRegistration);

/// The routing tables: every receptor, perspective and message type, in a stable order.
#[derive(Debug)]
pub struct Registry {
    receptors: Vec<&'static ReceptorRegistration>,
    perspectives: Vec<&'static PerspectiveRegistration>,
    messages: Vec<&'static MessageRegistration>,
    commands: HashMap<TypeId, &'static ReceptorRegistration>,
    event_receptors: HashMap<&'static str, Vec<&'static ReceptorRegistration>>,
    perspectives_by_event: HashMap<&'static str, Vec<&'static PerspectiveRegistration>>,
    perspectives_by_type: HashMap<TypeId, &'static PerspectiveRegistration>,
}

static GLOBAL: OnceLock<Arc<Registry>> = OnceLock::new();

impl Registry {
    /// The registry of everything `inventory` collected in this binary, built once.
    ///
    /// # Errors
    /// [`Error::DuplicateReceptor`], [`Error::DuplicateMessageName`],
    /// [`Error::DuplicatePerspective`], or [`Error::NoRoutesRegistered`].
    pub fn global() -> Result<Arc<Registry>> {
        if let Some(r) = GLOBAL.get() {
            return Ok(Arc::clone(r));
        }
        let built = Registry::from_parts(
            inventory::iter::<ReceptorRegistration>,
            inventory::iter::<PerspectiveRegistration>,
            inventory::iter::<MessageRegistration>,
        )?;
        Ok(Arc::clone(GLOBAL.get_or_init(|| Arc::new(built))))
    }

    /// A builder for a registry of a chosen subset of what this binary
    /// registered: a runtime built on it routes only to those receptors and
    /// applies only those perspectives (a test, or several runtimes with
    /// different handler sets in one binary). [`RegistryBuilder::build`] runs
    /// the same start-up checks as [`Registry::global`].
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use uuid::Uuid;
    /// # use whizbang_core::{perspective, receptor, Command, Context, Event, Receptor, Result};
    /// use std::sync::Arc;
    /// use whizbang_core::{Registry, Runtime};
    ///
    /// #[derive(Command, Serialize, Deserialize)]
    /// struct Ring;
    /// #[derive(Event, Serialize, Deserialize)]
    /// struct Rang { #[stream_key] bell: Uuid }
    /// #[derive(Default)]
    /// struct Bell;
    /// #[receptor]
    /// impl Receptor<Ring> for Bell {
    ///     async fn handle(&self, _: Ring, cx: &mut Context) -> Result<()> {
    ///         cx.emit(Rang { bell: Uuid::nil() })?;
    ///         Ok(())
    ///     }
    /// }
    /// #[derive(Default, Clone, Serialize, Deserialize)]
    /// struct Rings { n: u32 }
    /// struct RingCounts;
    /// #[perspective(model = Rings, mode = inline)]
    /// impl RingCounts {
    ///     fn rang(r: &mut Rings, _: &Rang) { r.n += 1; }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<()> {
    /// let registry = Registry::builder()
    ///     .receptor::<Bell, Ring>()
    ///     .perspective::<RingCounts>()
    ///     .build()?;
    /// assert_eq!(registry.perspectives().len(), 1);
    /// let runtime = Runtime::builder().registry(Arc::new(registry)).build()?;
    /// # let _ = runtime;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// A registry from explicit registrations (tests, or several runtimes with
    /// different handler sets in one binary).
    ///
    /// # Errors
    /// As [`Registry::global`].
    pub fn from_parts(
        receptors: impl IntoIterator<Item = &'static ReceptorRegistration>,
        perspectives: impl IntoIterator<Item = &'static PerspectiveRegistration>,
        messages: impl IntoIterator<Item = &'static MessageRegistration>,
    ) -> Result<Registry> {
        let mut receptors: Vec<_> = receptors.into_iter().collect();
        let mut perspectives: Vec<_> = perspectives.into_iter().collect();
        let mut messages: Vec<_> = messages.into_iter().collect();
        if receptors.is_empty() && perspectives.is_empty() {
            return Err(Error::NoRoutesRegistered);
        }
        receptors.sort_by(|a, b| {
            (a.message_name, a.module_path, a.receptor).cmp(&(
                b.message_name,
                b.module_path,
                b.receptor,
            ))
        });
        perspectives.sort_by(|a, b| (a.name, a.module_path).cmp(&(b.name, b.module_path)));
        messages.sort_by(|a, b| (a.name, a.module_path).cmp(&(b.name, b.module_path)));

        for pair in messages.windows(2) {
            if pair[0].name == pair[1].name && (pair[0].type_id)() != (pair[1].type_id)() {
                return Err(Error::DuplicateMessageName {
                    name: pair[0].name,
                    first: pair[0].type_name,
                    second: pair[1].type_name,
                });
            }
        }
        for pair in perspectives.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(Error::DuplicatePerspective {
                    name: pair[0].name,
                    first: pair[0].type_name,
                    second: pair[1].type_name,
                });
            }
        }

        let mut commands: HashMap<TypeId, &'static ReceptorRegistration> = HashMap::new();
        let mut event_receptors: HashMap<&'static str, Vec<_>> = HashMap::new();
        for r in &receptors {
            match r.message_kind {
                MessageKind::Command => {
                    if let Some(first) = commands.insert((r.message_type)(), r) {
                        return Err(Error::DuplicateReceptor {
                            message_type: r.message_name,
                            first: first.path(),
                            second: r.path(),
                        });
                    }
                }
                MessageKind::Event => event_receptors.entry(r.message_name).or_default().push(*r),
            }
        }
        let mut perspectives_by_event: HashMap<&'static str, Vec<_>> = HashMap::new();
        let mut perspectives_by_type = HashMap::new();
        for p in &perspectives {
            for t in p.event_types {
                perspectives_by_event.entry(*t).or_default().push(*p);
            }
            perspectives_by_type.insert((p.perspective_type)(), *p);
        }
        Ok(Registry {
            receptors,
            perspectives,
            messages,
            commands,
            event_receptors,
            perspectives_by_event,
            perspectives_by_type,
        })
    }

    /// Every receptor, in stable order (message name, module, receptor).
    #[must_use]
    pub fn receptors(&self) -> &[&'static ReceptorRegistration] {
        &self.receptors
    }

    /// Every perspective, in stable order (name).
    #[must_use]
    pub fn perspectives(&self) -> &[&'static PerspectiveRegistration] {
        &self.perspectives
    }

    /// Every message type, in stable order (wire name).
    #[must_use]
    pub fn messages(&self) -> &[&'static MessageRegistration] {
        &self.messages
    }

    /// The receptor of a command type.
    #[must_use]
    pub fn command_receptor(&self, command: TypeId) -> Option<&'static ReceptorRegistration> {
        self.commands.get(&command).copied()
    }

    /// Every command type registered in this registry (by `#[derive(Command)]`)
    /// that has no receptor in it, in stable order (wire name).
    /// [`RuntimeBuilder::build`](crate::RuntimeBuilder::build) refuses a
    /// registry where this is not empty.
    #[must_use]
    pub fn commands_without_receptor(&self) -> Vec<&'static MessageRegistration> {
        self.messages
            .iter()
            .copied()
            .filter(|m| m.kind == MessageKind::Command)
            .filter(|m| !self.commands.contains_key(&(m.type_id)()))
            .collect()
    }

    /// The receptors of an event type (by wire name), in stable order.
    #[must_use]
    pub fn event_receptors(&self, event_type: &str) -> &[&'static ReceptorRegistration] {
        self.event_receptors
            .get(event_type)
            .map_or(&[], Vec::as_slice)
    }

    /// The perspectives that handle an event type (by wire name), in stable order.
    #[must_use]
    pub fn perspectives_for(&self, event_type: &str) -> &[&'static PerspectiveRegistration] {
        self.perspectives_by_event
            .get(event_type)
            .map_or(&[], Vec::as_slice)
    }

    /// The registration of perspective `P`.
    ///
    /// # Errors
    /// [`Error::UnknownPerspective`] when `P` is not registered in this registry.
    pub fn perspective<P: Perspective>(&self) -> Result<&'static PerspectiveRegistration> {
        self.perspectives_by_type
            .get(&TypeId::of::<P>())
            .copied()
            .ok_or_else(|| Error::UnknownPerspective {
                name: P::NAME.to_owned(),
            })
    }

    /// A perspective by the `TypeId` of its type.
    #[must_use]
    pub fn perspective_by_type(&self, id: TypeId) -> Option<&'static PerspectiveRegistration> {
        self.perspectives_by_type.get(&id).copied()
    }

    /// A perspective by name.
    #[must_use]
    pub fn perspective_named(&self, name: &str) -> Option<&'static PerspectiveRegistration> {
        self.perspectives.iter().copied().find(|p| p.name == name)
    }
}

/// Builds a [`Registry`] from a chosen subset of the receptors and perspectives
/// this binary registered (with `#[receptor]` and `#[perspective]`). Made by
/// [`Registry::builder`].
///
/// The message types it holds are those its receptors handle and its
/// perspectives apply.
#[derive(Debug, Default)]
pub struct RegistryBuilder {
    receptors: Vec<&'static ReceptorRegistration>,
    perspectives: Vec<&'static PerspectiveRegistration>,
    missing: Vec<String>,
}

impl RegistryBuilder {
    /// Adds the registration of the receptor whose type is `receptor` for the
    /// message whose type is `message` (the generic, typed door is
    /// `RegistryBuilder::receptor`, next to the receptor contract in dispatch).
    pub(crate) fn receptor_by_type(
        mut self,
        receptor: TypeId,
        message: TypeId,
        receptor_name: &'static str,
        message_name: &'static str,
    ) -> Self {
        match inventory::iter::<ReceptorRegistration>
            .into_iter()
            .find(|reg| (reg.receptor_type)() == receptor && (reg.message_type)() == message)
        {
            Some(reg) => self.add_receptor(reg),
            None => self.missing.push(format!(
                "no #[receptor] registration of `{receptor_name}` for `{message_name}` was linked into this binary"
            )),
        }
        self
    }

    /// Adds every registration of receptor type `R`, for every message it handles.
    #[must_use]
    pub fn receptors_of<R: 'static>(mut self) -> Self {
        let r = TypeId::of::<R>();
        let mut found = false;
        for reg in inventory::iter::<ReceptorRegistration> {
            if (reg.receptor_type)() == r {
                found = true;
                self.add_receptor(reg);
            }
        }
        if !found {
            self.missing.push(format!(
                "`{}` has no #[receptor] impl in this binary; annotate an \
                 `impl Receptor<M> for {0}` with #[receptor]",
                std::any::type_name::<R>()
            ));
        }
        self
    }

    /// Adds perspective `P`. Adding it twice adds it once.
    #[must_use]
    pub fn perspective<P: Perspective>(mut self) -> Self {
        let p = TypeId::of::<P>();
        match inventory::iter::<PerspectiveRegistration>
            .into_iter()
            .find(|reg| (reg.perspective_type)() == p)
        {
            Some(reg) => {
                if !self.perspectives.iter().any(|x| std::ptr::eq(*x, reg)) {
                    self.perspectives.push(reg);
                }
            }
            None => self.missing.push(format!(
                "no #[perspective] registration of `{}` was linked into this binary",
                P::NAME
            )),
        }
        self
    }

    fn add_receptor(&mut self, reg: &'static ReceptorRegistration) {
        if !self.receptors.iter().any(|x| std::ptr::eq(*x, reg)) {
            self.receptors.push(reg);
        }
    }

    /// Builds the registry, with the checks of [`Registry::global`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when it is empty, when a registration was not
    /// found, or when a receptor awaits (`#[await_perspective_sync]`) a
    /// perspective not added; [`Error::DuplicateReceptor`] when two receptors
    /// handle one command; [`Error::DuplicateMessageName`],
    /// [`Error::DuplicatePerspective`].
    pub fn build(self) -> Result<Registry> {
        if let Some(first) = self.missing.first() {
            return Err(Error::InvalidInput(format!(
                "the registry subset cannot be built: {first}. Make sure the type is annotated \
                 and its crate is linked (`use your_handlers as _;`)"
            )));
        }
        if self.receptors.is_empty() && self.perspectives.is_empty() {
            return Err(Error::InvalidInput(
                "the registry subset is empty: add receptors with `.receptor::<R, M>()` or \
                 `.receptors_of::<R>()` and perspectives with `.perspective::<P>()`"
                    .to_owned(),
            ));
        }
        for r in &self.receptors {
            for req in r.sync {
                let awaited = (req.perspective_type)();
                if !self
                    .perspectives
                    .iter()
                    .any(|p| (p.perspective_type)() == awaited)
                {
                    return Err(Error::InvalidInput(format!(
                        "`{}` awaits perspective `{}`, which is not in this registry subset: add \
                         `.perspective::<{}>()`",
                        r.path(),
                        req.perspective,
                        req.perspective
                    )));
                }
            }
        }
        let handled = |m: &MessageRegistration| {
            self.receptors
                .iter()
                .any(|r| (r.message_type)() == (m.type_id)())
                || self.perspectives.iter().any(|p| p.handles(m.name))
        };
        let messages: Vec<_> = inventory::iter::<MessageRegistration>
            .into_iter()
            .filter(|m| handled(m))
            .collect();
        Registry::from_parts(self.receptors, self.perspectives, messages)
    }
}

/// One `#[await_perspective_sync(..)]` of a receptor.
#[derive(Debug)]
pub struct SyncRequirement {
    /// The perspective's name.
    pub perspective: &'static str,
    /// The perspective's type.
    pub perspective_type: fn() -> TypeId,
    /// Event types to await in the current scope; empty = the incoming event itself.
    pub event_types: &'static [&'static str],
    /// The timeout in milliseconds.
    pub timeout_ms: u64,
    /// Run on success only, or always.
    pub fire: SyncFire,
    /// Run a perspective whose strategy holds work back (batch, scheduled,
    /// custom) now, on the waiting task, instead of waiting for its next run
    /// (`trigger = true`; see
    /// [`PerspectiveSyncOptions::trigger`](crate::PerspectiveSyncOptions::trigger)).
    pub trigger: bool,
}

impl SyncRequirement {
    /// The requirement to await perspective `P`; `timeout_ms: None` takes
    /// [`DEFAULT_SYNC_TIMEOUT_MS`](crate::stage::DEFAULT_SYNC_TIMEOUT_MS). For generated code.
    #[doc(hidden)]
    #[must_use]
    pub const fn of<P: Perspective>(
        event_types: &'static [&'static str],
        timeout_ms: Option<u64>,
        fire: SyncFire,
    ) -> Self {
        SyncRequirement {
            perspective: P::NAME,
            perspective_type: TypeId::of::<P>,
            event_types,
            timeout_ms: crate::stage::sync_timeout_ms(timeout_ms),
            fire,
            trigger: false,
        }
    }

    /// The same requirement, triggering a held-back perspective's run when
    /// `on` (`trigger = true`). For generated code.
    #[doc(hidden)]
    #[must_use]
    pub const fn trigger(mut self, on: bool) -> Self {
        self.trigger = on;
        self
    }
}

use crate::error::{Error, Result};
use crate::lens::Lens;
use crate::message::{EventId, MessageKind};
use crate::perspective::engine::{ApplyListener, ApplyReport, Engine};
use crate::perspective::runner::PerspectiveRunner;
use crate::perspective::Perspective;
use crate::registry::{ErasedReceptor, ReceptorRegistration, Registry};
use crate::services::Services;
use crate::store::memory::{MemoryEventStore, MemoryPerspectiveStore};
use crate::store::{EventStore, ModelFormat, PerspectiveStore};
use crate::sync::WakeupSink;
use crate::sync::{
    PerspectiveSyncAwaiter, StoreSyncBackend, SyncBackend, SyncEventTracker, SyncRuntime,
};
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub(crate) type Route = (Arc<dyn ErasedReceptor>, &'static ReceptorRegistration);

pub(crate) struct RuntimeInner {
    pub(crate) registry: Arc<Registry>,
    pub(crate) commands: HashMap<TypeId, Route>,
    pub(crate) event_receptors: HashMap<&'static str, Vec<Route>>,
    pub(crate) services: Services,
    pub(crate) engine: Engine,
    pub(crate) runner: PerspectiveRunner,
    /// What sync needs of the runtime (shared with every awaiter).
    pub(crate) sync: Arc<SyncRuntime>,
    /// Whether any receptor fires at a perspective stage (else the flush skips stage lookups).
    pub(crate) has_flush_stage_receptors: bool,
    /// How many detached receptors failed.
    pub(crate) detached_failures: AtomicU64,
    /// Called on each detached receptor failure.
    pub(crate) on_detached_failure: Option<DetachedFailureHook>,
    /// Where sync runs are recorded.
    pub(crate) sync_log: Arc<dyn crate::perspective::SyncLog>,
    /// When each perspective last committed (for its status).
    pub(crate) last_sync: Arc<crate::perspective::LastSync>,
}

/// The hook [`RuntimeBuilder::on_detached_failure`] installs.
pub(crate) type DetachedFailureHook = Arc<dyn Fn(&DetachedFailure) + Send + Sync>;

/// The running system: routing tables, receptors, backends and services.
/// Cheap to clone (shared). Open a [`Scope`](crate::Scope) per unit of work.
///
/// ```
/// # use whizbang_core::Runtime;
/// # #[derive(whizbang_core::Command, serde::Serialize, serde::Deserialize)] struct Ping;
/// # #[derive(Default)] struct R;
/// # #[whizbang_core::receptor] impl whizbang_core::Receptor<Ping> for R {
/// #   async fn handle(&self, _: Ping, _: &mut whizbang_core::Context) -> whizbang_core::Result<()> { Ok(()) } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
/// let runtime = Runtime::in_memory()?;
/// let scope = runtime.scope();
/// scope.send(Ping).await?;
/// scope.complete().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("receptors", &self.inner.registry.receptors().len())
            .field("perspectives", &self.inner.registry.perspectives().len())
            .finish_non_exhaustive()
    }
}

/// A handle to a [`Runtime`] that does not keep it alive, from
/// [`Runtime::downgrade`]: a backend's background task (a runner, a poller)
/// holds one and stops once [`upgrade`](Self::upgrade) returns `None`, that
/// is once the user dropped every clone of the runtime. Cheap to clone.
#[derive(Clone)]
pub struct WeakRuntime {
    inner: std::sync::Weak<RuntimeInner>,
}

impl std::fmt::Debug for WeakRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakRuntime")
            .field("alive", &(self.inner.strong_count() > 0))
            .finish()
    }
}

impl WeakRuntime {
    /// The runtime, while any clone of it is alive; `None` once all are
    /// dropped. Hold the result only for one piece of work, so the runtime
    /// can go away between pieces.
    #[must_use]
    pub fn upgrade(&self) -> Option<Runtime> {
        self.inner.upgrade().map(|inner| Runtime { inner })
    }
}

impl Runtime {
    /// A handle that does not keep the runtime alive (see [`WeakRuntime`]).
    ///
    /// ```
    /// # use whizbang_core::Runtime;
    /// # #[derive(whizbang_core::Command, serde::Serialize, serde::Deserialize)] struct Ping;
    /// # #[derive(Default)] struct R;
    /// # #[whizbang_core::receptor] impl whizbang_core::Receptor<Ping> for R {
    /// #   async fn handle(&self, _: Ping, _: &mut whizbang_core::Context) -> whizbang_core::Result<()> { Ok(()) } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
    /// let runtime = Runtime::in_memory()?;
    /// let weak = runtime.downgrade();
    /// assert!(weak.upgrade().is_some());
    /// drop(runtime);
    /// assert!(weak.upgrade().is_none());
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn downgrade(&self) -> WeakRuntime {
        WeakRuntime {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// A builder, with in-memory backends until you set others.
    #[must_use]
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// A runtime on in-memory backends with every registered handler.
    ///
    /// # Errors
    /// See [`RuntimeBuilder::build`].
    pub fn in_memory() -> Result<Runtime> {
        Runtime::builder().build()
    }

    /// The routing tables.
    #[must_use]
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The services receptors are built from.
    #[must_use]
    pub fn services(&self) -> &Services {
        &self.inner.services
    }

    /// A lens over perspective `P`'s read models.
    #[must_use]
    pub fn lens<P: Perspective>(&self) -> Lens<P> {
        self.inner.services.lens::<P>()
    }

    /// Folds perspective `P`'s apply functions over every event of `stream`,
    /// now, and returns the model with the stream's version, without a stored
    /// read model. See [`Context::aggregate`](crate::Context::aggregate), the
    /// same fold from inside a receptor.
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use uuid::Uuid;
    /// # use whizbang_core::{perspective, Event, Runtime};
    /// #[derive(Event, Serialize, Deserialize)]
    /// struct Deposited { #[stream_key] account: Uuid, cents: i64 }
    ///
    /// #[derive(Default, Clone, Serialize, Deserialize)]
    /// struct Balance { cents: i64 }
    ///
    /// struct Balances;
    ///
    /// #[perspective(model = Balance)]
    /// impl Balances {
    ///     fn deposited(b: &mut Balance, e: &Deposited) { b.cents += e.cents; }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> whizbang_core::Result<()> {
    /// let runtime = Runtime::in_memory()?;
    /// let account = Uuid::now_v7();
    /// let scope = runtime.scope();
    /// scope.publish(Deposited { account, cents: 5 }).await?;
    /// scope.publish(Deposited { account, cents: 7 }).await?;
    /// scope.complete().await?;
    /// let balance = runtime.aggregate::<Balances>(account).await?;
    /// assert_eq!((balance.cents, balance.version), (12, 2));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::FoldFailed`] when the model's `Default` or an apply function
    /// fails or panics, or a stored event does not decode; a backend error.
    pub async fn aggregate<P: Perspective>(
        &self,
        stream: impl Into<crate::message::StreamId>,
    ) -> Result<crate::perspective::Versioned<P::Model>> {
        crate::perspective::fold::fold::<P>(&**self.event_store(), stream.into()).await
    }

    /// The async perspective runner.
    #[must_use]
    pub fn runner(&self) -> &PerspectiveRunner {
        &self.inner.runner
    }

    /// Waits until no perspective work is queued or running: async catch-ups and
    /// the flushes of scopes dropped without completing.
    pub async fn wait_idle(&self) {
        self.inner.runner.wait_idle().await;
    }

    /// How many detached receptors (those at a `..Detached` stage, on their own
    /// task) have failed since the runtime was built. Each failure is also
    /// logged and handed to the [`on_detached_failure`](RuntimeBuilder::on_detached_failure)
    /// hook.
    #[must_use]
    pub fn detached_failures(&self) -> u64 {
        self.inner.detached_failures.load(Ordering::Relaxed)
    }

    /// Counts, logs and reports a detached receptor's failure.
    pub(crate) fn report_detached_failure(&self, failure: &DetachedFailure) {
        tracing::error!(
            receptor = %failure.receptor, event_id = %failure.event_id,
            event_type = %failure.event_type, error = %failure.error,
            "detached receptor failed"
        );
        self.inner.detached_failures.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &self.inner.on_detached_failure {
            hook(failure);
        }
    }

    /// An awaiter without a scope (filters may not use `current_scope()`).
    #[must_use]
    pub fn sync_awaiter(&self) -> PerspectiveSyncAwaiter {
        PerspectiveSyncAwaiter::new(Arc::clone(&self.inner.sync), None)
    }

    /// The per-process sync tracker.
    #[must_use]
    pub fn sync_tracker(&self) -> &Arc<SyncEventTracker> {
        &self.inner.sync.tracker
    }

    /// The event store.
    #[must_use]
    pub fn event_store(&self) -> &Arc<dyn EventStore> {
        self.inner.services.event_store()
    }

    /// Wakes this process's waiters for a commit made elsewhere: a backend
    /// whose perspectives are also applied by other processes feeds each
    /// report it hears of (from LISTEN/NOTIFY, a poll, ..) in here. Waiters on
    /// `report.stream` and `report.perspective` re-check, and the events in
    /// `report.applied` stop being pending in this process.
    ///
    /// The runtime's [`ApplyListener`]s are not called, so a wake-up received
    /// from another process is never echoed back. To feed reports from a task
    /// that must not keep the runtime alive, use [`wakeup_sink`](Self::wakeup_sink).
    ///
    /// ```
    /// # use whizbang_core::{backend::ApplyReport, EventId, Runtime, StreamId};
    /// # #[derive(whizbang_core::Command, serde::Serialize, serde::Deserialize)] struct Ping;
    /// # #[derive(Default)] struct R;
    /// # #[whizbang_core::receptor] impl whizbang_core::Receptor<Ping> for R {
    /// #   async fn handle(&self, _: Ping, _: &mut whizbang_core::Context) -> whizbang_core::Result<()> { Ok(()) } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
    /// let runtime = Runtime::in_memory()?;
    /// // What a LISTEN task decoded from another process's NOTIFY:
    /// let report = ApplyReport::new("orders.summary", StreamId::new(), 2, vec![EventId::new()]);
    /// runtime.notify_applied(&report);
    /// # Ok(()) }
    /// ```
    pub fn notify_applied(&self, report: &ApplyReport) {
        self.inner.sync.tracker.applied(report);
    }

    /// Brings perspective `perspective` (by name) up to date on `stream` now:
    /// claims the (perspective, stream) pair, applies every stored event
    /// after its cursor and commits, like the built-in runner does after a
    /// local append. For backends whose runner finds work in the store
    /// (events appended by other processes, or before a restart). Returns the
    /// report of what was committed, `None` when there was nothing to apply.
    ///
    /// # Errors
    /// [`Error::UnknownPerspective`] when no perspective of that name is
    /// registered; [`Error::PerspectiveFailed`] when the cursor has failed (or
    /// fails now); backend errors.
    pub async fn catch_up(
        &self,
        perspective: &str,
        stream: crate::message::StreamId,
    ) -> Result<Option<ApplyReport>> {
        let reg = self.perspective_named(perspective)?;
        self.inner.engine.catch_up(reg, stream).await
    }

    /// Brings perspective `perspective` (by name) up to date on every stream
    /// of `streams` in one transaction, when the perspective store can claim
    /// many models at once ([`PerspectiveStore::claim_many`]): for a
    /// backend's runner, which saves a commit per stream. Streams whose
    /// cursor failed are left as they are. Returns the reports of what was
    /// committed; `Ok(None)` when nothing was (the store claims one model at
    /// a time, or an event failed to apply): then call
    /// [`catch_up`](Self::catch_up) per stream, which records a failure on
    /// its cursor.
    ///
    /// # Errors
    /// [`Error::UnknownPerspective`] when no perspective of that name is
    /// registered; backend errors (nothing was committed, or, for a commit
    /// whose answer was lost, it may have been).
    pub async fn catch_up_together(
        &self,
        perspective: &str,
        streams: &[crate::message::StreamId],
    ) -> Result<Option<Vec<ApplyReport>>> {
        let reg = self.perspective_named(perspective)?;
        self.inner.engine.catch_up_together(reg, streams).await
    }

    /// The registered perspective called `perspective`.
    fn perspective_named(
        &self,
        perspective: &str,
    ) -> Result<&'static crate::perspective::PerspectiveRegistration> {
        self.inner
            .registry
            .perspective_named(perspective)
            .ok_or_else(|| Error::UnknownPerspective {
                name: perspective.to_owned(),
            })
    }

    /// A cloneable handle that feeds apply reports to this runtime's waiters
    /// like [`notify_applied`](Self::notify_applied), without keeping the
    /// runtime alive: give it to a backend's background task (a LISTEN loop),
    /// which stops when [`WakeupSink::notify`] returns `false`.
    #[must_use]
    pub fn wakeup_sink(&self) -> WakeupSink {
        WakeupSink::new(&self.inner.sync.tracker)
    }

    /// Retries perspective `P` on `stream` after its cursor failed
    /// ([`Error::PerspectiveFailed`]): clears the failure, applies the failing
    /// event again, then the rest of the stream, now (inline and async
    /// perspectives alike). Fix the cause first: the apply function (a new
    /// build) or whatever it depends on.
    ///
    /// Waiters on the stream are woken: they see `Synced` once their events
    /// applied, or the new failure when an event fails again.
    ///
    /// # Errors
    /// [`Error::PerspectiveNotFailed`] when the cursor has not failed (nothing
    /// changes); [`Error::PerspectiveFailed`] when an event fails again (what
    /// applied before it is committed and the cursor is marked failed at it);
    /// [`Error::UnknownPerspective`] when `P` is not registered in this runtime;
    /// backend errors.
    pub async fn retry_perspective<P: Perspective>(
        &self,
        stream: impl Into<crate::message::StreamId>,
    ) -> Result<crate::perspective::ApplyReport> {
        self.recover::<P>(stream.into(), crate::perspective::engine::Recovery::Retry)
            .await
    }

    /// Skips the event perspective `P` failed on in `stream`: records it in the
    /// cursor's [`Checkpoint::skipped`](crate::store::Checkpoint::skipped) with
    /// `reason` (and the failure), moves the cursor past it without applying it,
    /// and applies the rest of the stream now. The model never reflects the
    /// skipped event; use this when the event cannot be applied and the read
    /// model may do without it.
    ///
    /// Waiters are woken; a wait on the skipped event itself counts it as
    /// applied (the perspective is past it), so it ends `Synced`.
    ///
    /// # Errors
    /// [`Error::PerspectiveNotFailed`] when the cursor has not failed (nothing
    /// changes); [`Error::PerspectiveFailed`] when a later event fails (the skip
    /// and what applied before that event are committed);
    /// [`Error::UnknownPerspective`] when `P` is not registered in this runtime;
    /// backend errors.
    pub async fn skip_failed_event<P: Perspective>(
        &self,
        stream: impl Into<crate::message::StreamId>,
        reason: impl Into<String>,
    ) -> Result<crate::perspective::ApplyReport> {
        let skip = crate::perspective::engine::Recovery::Skip(reason.into());
        self.recover::<P>(stream.into(), skip).await
    }

    /// Recovers `P`'s failed cursor on `stream` the way `recovery` says.
    async fn recover<P: Perspective>(
        &self,
        stream: crate::message::StreamId,
        recovery: crate::perspective::engine::Recovery,
    ) -> Result<crate::perspective::ApplyReport> {
        let reg = self.inner.registry.perspective::<P>()?;
        self.inner.engine.recover(reg, stream, recovery).await
    }
}

// Here, not beside `Services`: services stay below lenses (which sit above sync).
impl Services {
    /// A lens over perspective `P`'s read models.
    #[must_use]
    pub fn lens<P: Perspective>(&self) -> Lens<P> {
        Lens::new(Arc::clone(self.perspective_store()))
    }
}

type AddService = Box<dyn FnOnce(&mut Services) + Send>;

/// Builds a [`Runtime`]: backends, services, registry.
pub struct RuntimeBuilder {
    registry: Option<Arc<Registry>>,
    event_store: Option<Arc<dyn EventStore>>,
    perspective_store: Option<Arc<dyn PerspectiveStore>>,
    services: Vec<AddService>,
    concurrency: usize,
    sync_backend: Option<Arc<dyn SyncBackend>>,
    sync_ttl: Duration,
    on_detached_failure: Option<DetachedFailureHook>,
    apply_listeners: Vec<Arc<dyn ApplyListener>>,
    on_start: Vec<StartHook>,
    sync_log: Option<Arc<dyn crate::perspective::SyncLog>>,
}

/// Runs once the runtime is built (see [`RuntimeBuilder::on_start`]).
type StartHook = Box<dyn FnOnce(&Runtime) -> Result<()> + Send>;

/// A whole storage backend that plugs into a runtime in one call,
/// [`RuntimeBuilder::backend`]: its event store, perspective store, sync
/// backend, apply listeners (wake-ups out) and start hooks (wake-ups in,
/// background runners). See [`backend`](crate::backend) for the contract
/// each part honours.
pub trait Backend {
    /// Sets this backend's parts on `builder` and returns it.
    fn install(self, builder: RuntimeBuilder) -> RuntimeBuilder;
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            registry: None,
            event_store: None,
            perspective_store: None,
            services: Vec::new(),
            concurrency: 16,
            sync_backend: None,
            sync_ttl: SyncEventTracker::DEFAULT_TTL,
            on_detached_failure: None,
            apply_listeners: Vec::new(),
            on_start: Vec::new(),
            sync_log: None,
        }
    }
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("services", &self.services.len())
            .field("concurrency", &self.concurrency)
            .field("apply_listeners", &self.apply_listeners.len())
            .finish_non_exhaustive()
    }
}

impl RuntimeBuilder {
    /// Plugs a whole backend in (stores, sync backend, wake-ups, runner) in
    /// one call: `Runtime::builder().backend(pg)`.
    #[must_use]
    pub fn backend(self, backend: impl Backend) -> Self {
        backend.install(self)
    }

    /// Runs `hook` once the runtime is built, before [`build`](Self::build)
    /// returns it, inside the tokio runtime: a backend starts its background
    /// tasks here (a LISTEN loop, a runner). Hooks run in the order added; the
    /// first error fails the build.
    #[must_use]
    pub fn on_start(mut self, hook: impl FnOnce(&Runtime) -> Result<()> + Send + 'static) -> Self {
        self.on_start.push(Box::new(hook));
        self
    }

    /// Uses this event store (default: in memory).
    #[must_use]
    pub fn event_store(mut self, store: impl EventStore) -> Self {
        self.event_store = Some(Arc::new(store));
        self
    }

    /// Uses this perspective store (default: in memory).
    #[must_use]
    pub fn perspective_store(mut self, store: impl PerspectiveStore) -> Self {
        self.perspective_store = Some(Arc::new(store));
        self
    }

    /// Offers a service to receptors (see [`FromServices`](crate::FromServices)).
    #[must_use]
    pub fn service<T: Send + Sync + 'static>(self, value: T) -> Self {
        self.shared_service(Arc::new(value))
    }

    /// Offers an already shared service.
    #[must_use]
    pub fn shared_service<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.services.push(Box::new(move |s| s.insert_arc(value)));
        self
    }

    /// Uses this registry instead of everything registered in the binary.
    #[must_use]
    pub fn registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Answers sync inquiries with this backend (default: from the stores).
    #[must_use]
    pub fn sync_backend(mut self, backend: impl SyncBackend) -> Self {
        self.sync_backend = Some(Arc::new(backend));
        self
    }

    /// How long the sync tracker keeps an entry that was never applied (default 5 min);
    /// expired entries wake their waiters, which then ask the backend.
    #[must_use]
    pub fn sync_ttl(mut self, ttl: Duration) -> Self {
        self.sync_ttl = ttl;
        self
    }

    /// Calls `hook` each time a detached receptor (one at a `..Detached` stage,
    /// running on its own task) fails, besides counting it in
    /// [`Runtime::detached_failures`] and logging it. The hook runs on the
    /// receptor's task: keep it quick (count, alert, enqueue a retry).
    #[must_use]
    pub fn on_detached_failure(
        mut self,
        hook: impl Fn(&DetachedFailure) + Send + Sync + 'static,
    ) -> Self {
        self.on_detached_failure = Some(Arc::new(hook));
        self
    }

    /// Tells `listener` of every commit the runtime's perspectives make (after
    /// the sync tracker, in the order added): how a backend hears local
    /// commits, for example to NOTIFY other processes. See [`ApplyListener`]
    /// for what a listener may do.
    ///
    /// ```
    /// # use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
    /// # use whizbang_core::{backend::ApplyReport, Runtime};
    /// # #[derive(whizbang_core::Command, serde::Serialize, serde::Deserialize)] struct Ping;
    /// # #[derive(Default)] struct R;
    /// # #[whizbang_core::receptor] impl whizbang_core::Receptor<Ping> for R {
    /// #   async fn handle(&self, _: Ping, _: &mut whizbang_core::Context) -> whizbang_core::Result<()> { Ok(()) } }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> whizbang_core::Result<()> {
    /// let commits = Arc::new(AtomicUsize::new(0));
    /// let seen = Arc::clone(&commits);
    /// let runtime = Runtime::builder()
    ///     .apply_listener(move |_: &ApplyReport| {
    ///         seen.fetch_add(1, Ordering::Relaxed);
    ///     })
    ///     .build()?;
    /// # drop(runtime);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn apply_listener(mut self, listener: impl ApplyListener) -> Self {
        self.apply_listeners.push(Arc::new(listener));
        self
    }

    /// Where explicit sync runs are recorded (default: a
    /// [`MemorySyncLog`](crate::perspective::MemorySyncLog) of the last 100);
    /// a backend installs its own. See [`Runtime::sync_log`].
    #[must_use]
    pub fn sync_log(mut self, log: impl crate::perspective::SyncLog) -> Self {
        self.sync_log = Some(Arc::new(log));
        self
    }

    /// How many (perspective, stream) catch-ups the async runner runs at once (default 16).
    #[must_use]
    pub fn runner_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Builds the runtime: checks the registry, constructs every receptor from the
    /// services, starts the async perspective runner.
    ///
    /// # Errors
    /// [`Error::NoTokioRuntime`] outside tokio; registry errors
    /// ([`Error::DuplicateReceptor`], [`Error::NoRoutesRegistered`], ..);
    /// [`Error::CommandsWithoutReceptor`] listing every command type in the
    /// registry that no receptor handles;
    /// [`Error::MissingService`] when a receptor needs a service not offered;
    /// [`Error::ModelNotJson`] when the perspective store keeps JSON
    /// ([`ModelFormat::Json`]) and a perspective's model does not survive a
    /// JSON round trip.
    pub fn build(self) -> Result<Runtime> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoTokioRuntime)?;
        let registry = match self.registry {
            Some(r) => r,
            None => Registry::global()?,
        };
        let orphans = registry.commands_without_receptor();
        if !orphans.is_empty() {
            return Err(Error::CommandsWithoutReceptor {
                commands: orphans.iter().map(|m| m.name).collect(),
            });
        }
        let event_store = self
            .event_store
            .unwrap_or_else(|| Arc::new(MemoryEventStore::new()));
        let perspective_store = self
            .perspective_store
            .unwrap_or_else(|| Arc::new(MemoryPerspectiveStore::new()));
        let model_format = perspective_store.model_format();
        check_model_format(&registry, model_format)?;
        let mut services = Services::new(Arc::clone(&event_store), Arc::clone(&perspective_store));
        for add in self.services {
            add(&mut services);
        }
        let mut commands = HashMap::new();
        let mut event_receptors: HashMap<&'static str, Vec<Route>> = HashMap::new();
        let mut has_flush_stage_receptors = false;
        for reg in registry.receptors() {
            validate_stage(&registry, reg)?;
            let stage = reg.effective_stage();
            has_flush_stage_receptors |= reg.message_kind == MessageKind::Event
                && !stage.fires_at_append()
                && !stage.point.is_outbox();
            let receptor = (reg.build)(&services)?;
            match reg.message_kind {
                MessageKind::Command => {
                    commands.insert((reg.message_type)(), (receptor, *reg));
                }
                MessageKind::Event => event_receptors
                    .entry(reg.message_name)
                    .or_default()
                    .push((receptor, *reg)),
            }
        }
        let tracker = Arc::new(SyncEventTracker::new(self.sync_ttl));
        let backend = self.sync_backend.unwrap_or_else(|| {
            Arc::new(StoreSyncBackend::new(
                Arc::clone(&event_store),
                Arc::clone(&perspective_store),
            ))
        });
        let mut listeners: Vec<Arc<dyn ApplyListener>> = vec![Arc::clone(&tracker) as _];
        let last_sync = Arc::new(crate::perspective::LastSync::default());
        listeners.push(Arc::clone(&last_sync) as _);
        listeners.extend(self.apply_listeners);
        let engine = Engine {
            events: event_store,
            perspectives: perspective_store,
            listeners: listeners.into(),
            model_format,
        };
        spawn_sweeper(&handle, &tracker, self.sync_ttl);
        tracker.spawn_timer(&handle);
        let runner = PerspectiveRunner::new(engine.clone(), self.concurrency, handle);
        tracing::debug!(
            receptors = registry.receptors().len(),
            perspectives = registry.perspectives().len(),
            "whizbang runtime built"
        );
        let runtime = Runtime {
            inner: Arc::new(RuntimeInner {
                sync: Arc::new(SyncRuntime {
                    registry: Arc::clone(&registry),
                    tracker,
                    backend,
                    clock: Arc::new(crate::sync::TokioClock::default()),
                    engine: engine.clone(),
                    runner: runner.clone(),
                }),
                registry,
                commands,
                event_receptors,
                services,
                engine,
                runner,
                has_flush_stage_receptors,
                detached_failures: AtomicU64::new(0),
                on_detached_failure: self.on_detached_failure,
                sync_log: self
                    .sync_log
                    .unwrap_or_else(|| Arc::new(crate::perspective::MemorySyncLog::default())),
                last_sync,
            }),
        };
        for hook in self.on_start {
            hook(&runtime)?;
        }
        Ok(runtime)
    }
}

/// Sweeps the tracker for expired entries while the runtime lives.
fn spawn_sweeper(handle: &tokio::runtime::Handle, tracker: &Arc<SyncEventTracker>, ttl: Duration) {
    let weak = Arc::downgrade(tracker);
    let period = (ttl / 4).max(Duration::from_millis(10));
    handle.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(t) => {
                    t.sweep();
                }
                None => break,
            }
        }
    });
}

/// A JSON perspective store can hold every registered perspective's model:
/// each model's `Default` survives a JSON round trip. A `Default` that panics
/// is left to the engine, which reports it on the first apply.
fn check_model_format(registry: &Registry, format: ModelFormat) -> Result<()> {
    if format != ModelFormat::Json {
        return Ok(());
    }
    for reg in registry.perspectives() {
        let round_trip = std::panic::catch_unwind(|| {
            let json = (reg.new_model)().to_json()?;
            (reg.decode_model)(&json).map(drop)
        });
        if let Ok(Err(source)) = round_trip {
            return Err(Error::ModelNotJson {
                perspective: reg.name,
                source,
            });
        }
    }
    Ok(())
}

/// Start-up checks of a receptor's stage and sync waits.
fn validate_stage(registry: &Registry, reg: &ReceptorRegistration) -> Result<()> {
    if reg.message_kind == MessageKind::Command {
        if let Some(stage) = reg.stage {
            return Err(Error::InvalidInput(format!(
                "`{}` handles the command `{}` and has #[fire_at({stage:?})]: lifecycle stages apply to \
                 event receptors; a command receptor runs when the command is sent. Remove #[fire_at]",
                reg.path(),
                reg.message_name
            )));
        }
    }
    let stage = reg.effective_stage();
    if reg.message_kind == MessageKind::Event && !reg.sync.is_empty() && stage.is_inline() {
        return Err(Error::InlineStageWait {
            receptor: reg.path(),
            stage,
        });
    }
    for req in reg.sync {
        if registry
            .perspective_by_type((req.perspective_type)())
            .is_none()
        {
            return Err(Error::UnknownPerspective {
                name: req.perspective.to_owned(),
            });
        }
    }
    Ok(())
}

/// A detached receptor's failure, handed to the hook set with
/// [`RuntimeBuilder::on_detached_failure`](crate::RuntimeBuilder::on_detached_failure).
#[derive(Debug)]
#[non_exhaustive]
pub struct DetachedFailure {
    /// The receptor that failed (module path and type).
    pub receptor: String,
    /// The event it was handling.
    pub event_id: EventId,
    /// That event's wire name.
    pub event_type: String,
    /// What went wrong.
    pub error: Error,
}

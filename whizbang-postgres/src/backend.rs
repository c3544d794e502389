//! The whole PostgreSQL backend in one value: [`Postgres`] connects (a pool
//! and a LISTEN connection), migrates on request, and plugs the three stores,
//! the wake-ups and the partitioned runner into a runtime with
//! `Runtime::builder().backend(pg)`.

use crate::listen::{self, Wakeups};
use crate::{
    redact_password, runner, Error, PgEventStore, PgMessageQueue, PgPerspectiveStore, PgSyncBackend,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::backend::Backend;
use whizbang_core::RuntimeBuilder;

/// How a [`Postgres`] backend connects and runs. Builder-style; every field
/// has a documented default ([`PostgresOptions::default`]) and is read back
/// as a field.
///
/// ```
/// use std::time::Duration;
/// use whizbang_postgres::PostgresOptions;
///
/// let options = PostgresOptions::default()
///     .pool_size(20)
///     .lease_duration(Duration::from_secs(15))
///     .runner_concurrency(8);
/// assert_eq!(options.heartbeat_interval, Duration::from_secs(5));
/// assert_eq!(options.effective_runner_concurrency(), 8);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Connections in the pool (default 10, at least 2). The LISTEN
    /// connection is extra, outside the pool.
    pub pool_size: u32,
    /// How long a partition lease lasts without renewal (default 10 s, at
    /// least 1 s). An instance that stops heartbeating loses its partitions
    /// after this long; it is also the pool connections'
    /// `idle_in_transaction_session_timeout`, so the server ends the claim
    /// transaction of a frozen process and its late commit fails.
    pub lease_duration: Duration,
    /// How often an instance heartbeats, renews its leases and rebalances
    /// (default a third of the lease; kept below half of it).
    pub heartbeat_interval: Duration,
    /// How often the runner rescans every leased partition even without a
    /// NOTIFY (default 1 s): covers a lost notification and a transaction
    /// that held the feed's horizon back.
    pub rescan_interval: Duration,
    /// Events read from one partition's feed per batch (default 500).
    pub batch_size: u32,
    /// Whether this process runs the partitioned runner (default `true`).
    /// A process that only appends and waits sets `false`: it still applies
    /// what it appends locally unless its runtime's runner is paused, and its
    /// waiters still wake through LISTEN/NOTIFY.
    pub runner: bool,
    /// How many (perspective, stream) catch-ups run at once, asked for
    /// (default 4). See [`effective_runner_concurrency`](Self::effective_runner_concurrency).
    pub runner_concurrency: usize,
    /// The PostgreSQL schema this service keeps its tables in (default
    /// `None`: the server's default search path, normally `public`). Set
    /// it to run several services in one database, each with its own
    /// events, read models, inbox and outbox: every pooled connection (and
    /// the LISTEN connection) gets `search_path` set to it at connect,
    /// [`Postgres::migrate`] creates the schema and runs the migrations in
    /// it, and the `wh_enqueue` function a [`PgTransport`](crate::PgTransport)
    /// calls is pinned to it. Validated at connect ([`SchemaName`](crate::SchemaName)).
    pub schema: Option<String>,
    /// How many explicit sync runs `wh_sync_log` keeps (default
    /// [`DEFAULT_SYNC_LOG_KEEP`](crate::DEFAULT_SYNC_LOG_KEEP), at least 1).
    pub sync_log_keep: u32,
    /// When set, sync runs older than this are pruned too (default `None`).
    pub sync_log_max_age: Option<Duration>,
    /// What a runner process does at start with a perspective whose
    /// `#[perspective(version = N)]` is above the version its live models
    /// were built with (default [`VersionPolicy::Rebuild`](whizbang_core::perspective::rebuild::VersionPolicy::Rebuild): rebuild it beside
    /// live, in the background; [`VersionPolicy::Refuse`](whizbang_core::perspective::rebuild::VersionPolicy::Refuse): log an error
    /// saying to run `whizbang rebuild`, and apply with the new code
    /// meanwhile). See `whizbang_core::perspective::rebuild`.
    pub on_version_bump: whizbang_core::perspective::rebuild::VersionPolicy,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        let lease = Duration::from_secs(10);
        PostgresOptions {
            pool_size: 10,
            lease_duration: lease,
            heartbeat_interval: lease / 3,
            rescan_interval: Duration::from_secs(1),
            batch_size: 500,
            runner: true,
            runner_concurrency: 4,
            schema: None,
            sync_log_keep: crate::DEFAULT_SYNC_LOG_KEEP,
            sync_log_max_age: None,
            on_version_bump: whizbang_core::perspective::rebuild::VersionPolicy::Rebuild,
        }
    }
}

impl PostgresOptions {
    /// The default options (see the field docs).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`on_version_bump`](Self::on_version_bump).
    #[must_use]
    pub fn on_version_bump(
        mut self,
        policy: whizbang_core::perspective::rebuild::VersionPolicy,
    ) -> Self {
        self.on_version_bump = policy;
        self
    }

    /// Sets [`pool_size`](Self::pool_size) (raised to 2: a catch-up holds
    /// one connection for its claim and needs another to read events).
    #[must_use]
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n.max(2);
        self
    }

    /// Sets [`lease_duration`](Self::lease_duration) (raised to 1 s) and the
    /// heartbeat to a third of it.
    #[must_use]
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.lease_duration = lease.max(Duration::from_secs(1));
        self.heartbeat_interval = self.lease_duration / 3;
        self
    }

    /// Sets [`heartbeat_interval`](Self::heartbeat_interval) (kept between
    /// 10 ms and half the lease: a lease must survive a missed heartbeat).
    #[must_use]
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat_interval = every
            .min(self.lease_duration / 2)
            .max(Duration::from_millis(10));
        self
    }

    /// Sets [`rescan_interval`](Self::rescan_interval) (at least 10 ms).
    #[must_use]
    pub fn rescan_interval(mut self, every: Duration) -> Self {
        self.rescan_interval = every.max(Duration::from_millis(10));
        self
    }

    /// Sets [`batch_size`](Self::batch_size) (at least 1).
    #[must_use]
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets [`runner`](Self::runner).
    #[must_use]
    pub fn runner(mut self, on: bool) -> Self {
        self.runner = on;
        self
    }

    /// Sets [`runner_concurrency`](Self::runner_concurrency).
    #[must_use]
    pub fn runner_concurrency(mut self, n: usize) -> Self {
        self.runner_concurrency = n.max(1);
        self
    }

    /// Sets [`schema`](Self::schema).
    #[must_use]
    pub fn schema(mut self, name: impl Into<String>) -> Self {
        self.schema = Some(name.into());
        self
    }

    /// Sets [`sync_log_keep`](Self::sync_log_keep) (at least 1).
    #[must_use]
    pub fn sync_log_keep(mut self, runs: u32) -> Self {
        self.sync_log_keep = runs.max(1);
        self
    }

    /// Sets [`sync_log_max_age`](Self::sync_log_max_age).
    #[must_use]
    pub fn sync_log_max_age(mut self, age: Duration) -> Self {
        self.sync_log_max_age = Some(age);
        self
    }

    /// The concurrency actually used, by the partitioned runner and by the
    /// runtime's in-process runner alike: the one asked for, clamped to
    /// `(pool_size - 1) / 2` (at least 1).
    ///
    /// Why: a catch-up holds a pooled connection for its claim (an open
    /// transaction) and needs a second one to read the stream's events. If
    /// every connection were held by a claim, every catch-up would wait for a
    /// read connection that never comes (16 catch-ups on a pool of 10 stall
    /// until the pool's acquire timeout). Both runners may run at once, so
    /// each gets at most half of the pool minus one connection, which keeps
    /// a connection free for reads and appends.
    #[must_use]
    pub fn effective_runner_concurrency(&self) -> usize {
        let cap = (self.pool_size.max(2) as usize - 1) / 2;
        self.runner_concurrency.clamp(1, cap.max(1))
    }
}

struct Inner {
    pool: PgPool,
    options: PostgresOptions,
    /// [`PostgresOptions::schema`], validated.
    schema: Option<crate::SchemaName>,
    instance_id: Uuid,
    /// The LISTEN connection made by `connect`, taken by the first runtime
    /// the backend is installed on.
    listener: Mutex<Option<PgListener>>,
    /// Its pool (one connection, outside the work pool), for reconnects and
    /// for runtimes installed later.
    listen_pool: PgPool,
    /// The LISTEN tasks and runners started for runtimes, for `close`.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Other services of the database, by schema ([`Postgres::service`]).
    services: Mutex<std::collections::HashMap<String, crate::PgService>>,
}

/// The PostgreSQL backend: event store, perspective store, sync backend,
/// LISTEN/NOTIFY wake-ups and the partitioned perspective runner, plugged
/// into a runtime in one call. Cheap to clone (shared).
///
/// ```no_run
/// # use whizbang_core::Runtime;
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use whizbang_postgres::Postgres;
///
/// let pg = Postgres::connect("postgres://postgres@127.0.0.1:5432/app").await?;
/// pg.migrate().await?; // safe when several processes start at once
/// let runtime = Runtime::builder().backend(pg).build()?;
/// # drop(runtime); Ok(()) }
/// ```
///
/// What runs where:
/// - `connect` opens the pool and a LISTEN connection (outside the pool,
///   `application_name` `whizbang listen <instance id>`) that listens on both
///   channels before it returns, so no NOTIFY sent after `connect` is missed.
/// - Installing it (`RuntimeBuilder::backend`) sets the three stores, clamps
///   the runtime's runner concurrency (see
///   [`PostgresOptions::effective_runner_concurrency`]) and, once the runtime
///   is built, spawns the LISTEN task (applied NOTIFYs wake local waiters;
///   events NOTIFYs wake the runner; after a reconnect every waiter re-asks
///   and the runner rescans) and, unless [`PostgresOptions::runner`] is off,
///   the runner (heartbeat, partition leases, feed scans, catch-ups). Both
///   stop when the runtime is dropped; the runner then releases its leases.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("instance_id", &self.inner.instance_id)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Connects with [`PostgresOptions::default`]. See
    /// [`connect_with`](Self::connect_with).
    ///
    /// # Errors
    /// [`Error::Connect`] as [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Postgres, Error> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects to the database at `url`: checks one connection at once (so
    /// an unreachable server or a bad password fails now with its own
    /// message), opens the pool and the LISTEN connection.
    ///
    /// # Errors
    /// [`Error::Connect`] (the URL in it has its password redacted) when the
    /// URL is invalid, no connection can be opened or LISTEN fails.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Postgres, Error> {
        let connect_error = |source| Error::Connect {
            url: redact_password(url),
            source,
        };
        let connect: PgConnectOptions = url.parse().map_err(connect_error)?;
        let schema = Self::schema_of(&options)?;
        Self::connect_to(connect, options, schema)
            .await
            .map_err(connect_error)
    }

    /// Like [`connect_with`](Self::connect_with), from parsed connect
    /// options (for example a test pool's `connect_options()`).
    ///
    /// # Errors
    /// [`Error::Connect`] when no connection can be opened or LISTEN fails.
    pub async fn connect_with_options(
        connect: PgConnectOptions,
        options: PostgresOptions,
    ) -> Result<Postgres, Error> {
        let url = format!(
            "postgres://{}:{}/{}",
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or_default()
        );
        let schema = Self::schema_of(&options)?;
        Self::connect_to(connect, options, schema)
            .await
            .map_err(|source| Error::Connect { url, source })
    }

    fn schema_of(options: &PostgresOptions) -> Result<Option<crate::SchemaName>, Error> {
        options
            .schema
            .as_deref()
            .map(crate::SchemaName::new)
            .transpose()
            .map_err(Error::InvalidSchema)
    }

    async fn connect_to(
        connect: PgConnectOptions,
        options: PostgresOptions,
        schema: Option<crate::SchemaName>,
    ) -> Result<Postgres, sqlx::Error> {
        let instance_id = Uuid::now_v7();
        let timeout_ms = options.lease_duration.as_millis().to_string();
        let mut connect = connect.options([("idle_in_transaction_session_timeout", timeout_ms)]);
        if let Some(schema) = &schema {
            // A validated name: nothing to escape in the startup option.
            connect = connect.options([("search_path", schema.as_str())]);
        }
        // One connection first, alone: a pool would retry a refused
        // connection until its acquire timeout and report only "timed out".
        PgConnection::connect_with(&connect).await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(options.pool_size.max(2))
            .connect_with(connect.clone().application_name("whizbang"))
            .await?;
        let listen_pool = PgPoolOptions::new().max_connections(1).connect_lazy_with(
            connect.application_name(&format!("whizbang listen {}", instance_id.simple())),
        );
        let listener = listen::connect(&listen_pool).await?;
        Ok(Postgres {
            inner: Arc::new(Inner {
                pool,
                options,
                schema,
                instance_id,
                listener: Mutex::new(Some(listener)),
                listen_pool,
                tasks: Mutex::new(Vec::new()),
                services: Mutex::new(std::collections::HashMap::new()),
            }),
        })
    }

    /// Applies the whizbang schema migrations the database does not have
    /// yet. Safe on every start-up and when several processes start at once
    /// (sqlx serialises them with an advisory lock).
    ///
    /// # Errors
    /// [`Error::Migrate`] when a migration fails or an applied one changed.
    ///
    /// With a [`schema`](PostgresOptions::schema), creates it first when it
    /// does not exist, then migrates in it (its own `_sqlx_migrations`).
    pub async fn migrate(&self) -> Result<(), Error> {
        if let Some(schema) = &self.inner.schema {
            let create = format!("create schema if not exists {}", schema.quoted());
            // Two processes creating it at once: one may lose the race on
            // the catalog's unique index; the schema exists either way.
            if let Err(error) = sqlx::query(&create).execute(&self.inner.pool).await {
                let raced = matches!(&error, sqlx::Error::Database(db)
                    if db.code().is_some_and(|c| c == "23505" || c == "42P06"));
                if !raced {
                    return Err(Error::Database(error));
                }
            }
        }
        crate::migrate(&self.inner.pool).await
    }

    /// The schema this service keeps its tables in, when one was set
    /// ([`PostgresOptions::schema`]).
    #[must_use]
    pub fn schema(&self) -> Option<&crate::SchemaName> {
        self.inner.schema.as_ref()
    }

    /// Another service of this database, in `schema`: to wait until its
    /// perspectives applied events this service published (see [`PgService`](crate::PgService)).
    ///
    /// # Errors
    /// [`Error::InvalidSchema`] for an invalid schema name.
    /// The same `PgService` (and its one LISTEN connection) is handed out
    /// for a schema every time.
    pub fn service(&self, schema: &str) -> Result<crate::PgService, Error> {
        let schema = crate::SchemaName::new(schema).map_err(Error::InvalidSchema)?;
        let mut services = self
            .inner
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(services
            .entry(schema.as_str().to_owned())
            .or_insert_with(|| crate::PgService::new(self.inner.pool.clone(), schema))
            .clone())
    }

    /// The connection pool (for your own queries, or tests).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// This process's runner instance id (its row in `wh_instances`, the
    /// owner of its leases).
    #[must_use]
    pub fn instance_id(&self) -> Uuid {
        self.inner.instance_id
    }

    /// The message queue on this backend's pool, with the default
    /// [`QueueOptions`](whizbang_core::queue::QueueOptions) (see
    /// [`PgMessageQueue`]). Cheap: call it wherever a queue is needed.
    #[must_use]
    pub fn message_queue(&self) -> PgMessageQueue {
        PgMessageQueue::new(self.inner.pool.clone())
    }

    /// The message queue on this backend's pool with these options.
    #[must_use]
    pub fn message_queue_with(
        &self,
        options: whizbang_core::queue::QueueOptions,
    ) -> PgMessageQueue {
        PgMessageQueue::with_options(self.inner.pool.clone(), options)
    }

    /// The outbox on this backend's pool (the rows its event store writes
    /// for outbound events), with the default
    /// [`QueueOptions`](whizbang_core::queue::QueueOptions). Hand it to an
    /// [`OutboxPublisher`](whizbang_core::outbox::OutboxPublisher).
    #[must_use]
    pub fn outbox(&self) -> crate::PgOutbox {
        crate::PgOutbox::new(self.inner.pool.clone())
    }

    /// The options it was connected with.
    #[must_use]
    pub fn options(&self) -> &PostgresOptions {
        &self.inner.options
    }

    /// Shuts the backend down: waits for the background tasks of the
    /// runtimes it was installed on to stop (they stop once their runtime is
    /// dropped; a runner then releases its leases), at most one lease
    /// duration, stops any still running, and closes every connection.
    /// Drop the runtimes first (with their in-process runner not paused:
    /// paused work holds the runtime). Without `close`, connections close
    /// when the last clone of the backend and its tasks are gone.
    pub async fn close(&self) {
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let deadline = tokio::time::Instant::now() + self.inner.options.lease_duration;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        self.inner
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        self.inner.listen_pool.close().await;
        self.inner.pool.close().await;
    }

    fn keep(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

/// Dropped with the runtime (an apply listener lives as long as it does):
/// dropping it ends the LISTEN task and the runner.
struct RuntimeAlive(#[allow(dead_code)] tokio::sync::watch::Sender<()>);

impl whizbang_core::backend::ApplyListener for RuntimeAlive {
    fn on_apply(&self, _: &whizbang_core::backend::ApplyReport) {}
}

impl Backend for Postgres {
    /// Sets the three stores and the runner concurrency, and starts the
    /// LISTEN task and (unless turned off) the runner once the runtime is
    /// built. Install a `Postgres` on one runtime; a second runtime it is
    /// installed on gets its own LISTEN connection (opened in the
    /// background) and its own runner instance id.
    fn install(self, builder: RuntimeBuilder) -> RuntimeBuilder {
        let pool = self.inner.pool.clone();
        let concurrency = self.inner.options.effective_runner_concurrency();
        let (alive, stop) = tokio::sync::watch::channel(());
        builder
            .event_store(PgEventStore::new(pool.clone()))
            .perspective_store(PgPerspectiveStore::new(pool.clone()))
            .sync_log(crate::PgSyncLog::new(
                pool.clone(),
                self.inner.options.sync_log_keep,
                self.inner.options.sync_log_max_age,
            ))
            .sync_backend(PgSyncBackend::new(pool))
            .runner_concurrency(concurrency)
            .apply_listener(RuntimeAlive(alive))
            .on_start(move |runtime| {
                let wakeups = Arc::new(Wakeups::default());
                let listener = self
                    .inner
                    .listener
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                let instance_id = if listener.is_some() {
                    self.inner.instance_id
                } else {
                    Uuid::now_v7()
                };
                let targets = listen::Targets {
                    sink: runtime.wakeup_sink(),
                    wakeups: Arc::clone(&wakeups),
                    perspectives: runtime
                        .registry()
                        .perspectives()
                        .iter()
                        .map(|p| p.name)
                        .collect(),
                    channels: listen::Channels::of(&self.inner.listen_pool),
                };
                self.keep(tokio::spawn(listen::run(
                    listener,
                    self.inner.listen_pool.clone(),
                    targets,
                    stop.clone(),
                )));
                if self.inner.options.runner {
                    // Version checks at start, and the operator's requests.
                    self.keep(tokio::spawn(crate::requests::run(
                        crate::requests::Config {
                            pool: self.inner.pool.clone(),
                            instance_id,
                            options: self.inner.options.clone(),
                        },
                        runtime.downgrade(),
                        stop.clone(),
                    )));
                }
                if self.inner.options.runner {
                    let config = runner::Config {
                        pool: self.inner.pool.clone(),
                        instance_id,
                        options: self.inner.options.clone(),
                    };
                    self.keep(tokio::spawn(runner::run(
                        config,
                        runtime.downgrade(),
                        wakeups,
                        stop,
                    )));
                }
                Ok(())
            })
    }
}

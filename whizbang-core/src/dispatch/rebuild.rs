//! The runtime's side of rebuilds beside live and catch-ups to the head:
//! [`Runtime::rebuild`], [`Runtime::rebuild_named`],
//! [`Runtime::catch_up_to_head`] and the version check at start. The
//! rebuild itself (options, the shadow fold, the swap) is
//! [`perspective::rebuild`](crate::perspective::rebuild)'s.

use super::Runtime;
use crate::error::{Error, Result};
use crate::perspective::rebuild::{
    shadow_registration, CatchUpReport, RebuildOptions, RebuildPhase, RebuildProgress,
    RebuildReport, Rebuilder, Running, VersionCheck, VersionPolicy,
};
use crate::perspective::Perspective;
use crate::store::rebuild::unsupported;
use std::time::Instant;
use tracing::Instrument;
impl Runtime {
    /// Brings the perspective registered as `name` up to the head of the
    /// event store now, in the caller's task: every stream holding its event
    /// types whose cursor is behind is caught up, a chunk of streams per
    /// transaction ([`RebuildOptions::chunk_events`]), with progress sent to
    /// [`RebuildOptions::progress`]. Its commits are ordinary applies:
    /// waiters wake. Dropping the future leaves every committed chunk
    /// applied and nothing half-applied.
    ///
    /// # Errors
    /// [`Error::UnknownPerspective`]; [`Error::Unsupported`] when a store
    /// cannot list streams or offers no rebuild support;
    /// [`Error::PerspectiveFailed`] for a stream that fails (the others of
    /// its chunk are applied, its cursor records the failure); a backend error.
    pub async fn catch_up_to_head(
        &self,
        name: &str,
        options: RebuildOptions,
    ) -> Result<CatchUpReport> {
        let (live, perspectives, store) = self.rebuild_target(name)?;
        let span = tracing::info_span!(
            "whizbang.perspective.catch_up_to_head",
            perspective = live.name
        );
        let mut run = Rebuilder {
            engine: self.inner.engine.clone(),
            notify: self.inner.engine.clone(),
            store,
            perspectives,
            live,
            shadow: live,
            progress: RebuildProgress::new(live.name, live.version, RebuildPhase::Building),
            options,
            started: Instant::now(),
            folded: 0,
        };
        let started_at = std::time::SystemTime::now();
        let result: Result<CatchUpReport> = async {
            if live.is_keyed() {
                // One cursor over the global order: one catch-up covers
                // every stream; progress in global positions.
                let reports = run.engine.catch_up_keyed(live).await?;
                let streams: std::collections::HashSet<_> =
                    reports.iter().map(|r| r.stream).collect();
                run.folded = reports.iter().map(|r| r.applied.len() as u64).sum();
                let at = reports.last().map_or(0, |r| r.version);
                run.progress.done = at;
                run.progress.total = at;
                run.progress.phase = RebuildPhase::Done;
                run.measure();
                run.send();
                return Ok(CatchUpReport {
                    perspective: live.name,
                    streams: streams.len(),
                    events: run.folded,
                    elapsed: run.started.elapsed(),
                });
            }
            let todo = run.pass().await?;
            let streams = todo.len();
            run.send();
            run.build(todo).await?;
            run.progress.phase = RebuildPhase::Done;
            run.measure();
            run.send();
            Ok(CatchUpReport {
                perspective: live.name,
                streams,
                events: run.folded,
                elapsed: run.started.elapsed(),
            })
        }
        .instrument(span)
        .await;
        let (streams, error) = match &result {
            Ok(report) => (report.streams as u64, None),
            Err(e) => (0, Some(e.to_string())),
        };
        self.log_operator_run(live.name, "catch_up", started_at, streams, error)
            .await;
        result
    }

    /// Rebuilds perspective `P`'s read models beside the live ones and swaps
    /// them in (see [`rebuild`](crate::perspective::rebuild)).
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use uuid::Uuid;
    /// # use whizbang_core::{perspective, Event, Runtime};
    /// #[derive(Event, Serialize, Deserialize)]
    /// struct Deposited { #[stream_key] account: Uuid, cents: i64 }
    /// #[derive(Default, Clone, Serialize, Deserialize)]
    /// struct Balance { cents: i64 }
    /// struct Balances;
    /// #[perspective(model = Balance, version = 2)]
    /// impl Balances {
    ///     fn deposited(b: &mut Balance, e: &Deposited) { b.cents += e.cents; }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> whizbang_core::Result<()> {
    /// let runtime = Runtime::in_memory()?;
    /// let account = Uuid::now_v7();
    /// let scope = runtime.scope();
    /// scope.publish(Deposited { account, cents: 5 }).await?;
    /// scope.complete().await?;
    /// let report = runtime.rebuild::<Balances>().await?;
    /// assert_eq!((report.version, report.events), (2, 1));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// See [`rebuild_named`](Self::rebuild_named).
    pub async fn rebuild<P: Perspective>(&self) -> Result<RebuildReport> {
        self.rebuild_named(P::NAME, RebuildOptions::default()).await
    }

    /// Rebuilds the perspective registered as `name`, with `options`.
    ///
    /// Dropping the future at any point leaves the live models as they were
    /// (the swap is one atomic step); the shadow built so far stays, and the
    /// next rebuild to the same version resumes from it.
    ///
    /// # Errors
    /// [`Error::UnknownPerspective`] for a name not registered;
    /// [`Error::Unsupported`] when a store offers no rebuild;
    /// [`Error::InvalidInput`] when another rebuild of it runs;
    /// [`Error::PerspectiveFailed`] when the apply code fails on a stream
    /// (nothing is swapped); a backend error.
    pub async fn rebuild_named(
        &self,
        name: &str,
        options: RebuildOptions,
    ) -> Result<RebuildReport> {
        let (live, perspectives, store) = self.rebuild_target(name)?;
        let _running = Running::claim(perspectives, live.name)?;
        let span = tracing::info_span!(
            "whizbang.perspective.rebuild",
            perspective = live.name,
            version = live.version,
        );
        let mut engine = self.inner.engine.clone();
        // The shadow has no waiters: its commits are heard by nobody.
        engine.listeners = Vec::new().into();
        let mut rebuilder = Rebuilder {
            engine,
            notify: self.inner.engine.clone(),
            store,
            perspectives,
            live,
            shadow: shadow_registration(live),
            progress: RebuildProgress::new(live.name, live.version, RebuildPhase::Starting),
            options,
            started: Instant::now(),
            folded: 0,
        };
        let started_at = std::time::SystemTime::now();
        let result = rebuilder.run().instrument(span).await;
        let (models, error) = match &result {
            Ok(report) => (report.models as u64, None),
            Err(e) => (0, Some(e.to_string())),
        };
        self.log_operator_run(live.name, "rebuild", started_at, models, error)
            .await;
        match &result {
            Ok(report) => tracing::info!(
                perspective = live.name,
                models = report.models,
                events = report.events,
                folded = report.folded,
                fenced_ms = report.fenced.as_millis() as u64,
                "perspective rebuilt and swapped in"
            ),
            Err(e) => {
                tracing::error!(perspective = live.name, error = %e, "rebuild failed; live models unchanged");
                rebuilder.progress.phase = RebuildPhase::Failed;
                rebuilder.progress.error = Some(e.to_string());
                if let Some(tx) = &rebuilder.options.progress {
                    tx.send_replace(rebuilder.progress.clone());
                }
                if let Err(e2) = store.abandon(live.name, &e.to_string()).await {
                    tracing::warn!(error = %e2, "could not record the failed rebuild");
                }
            }
        }
        result
    }

    /// The last progress a rebuild of `name` recorded in the store (this
    /// process's or another's); `None` when none ran.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the store offers no rebuild; a backend error.
    pub async fn rebuild_progress(&self, name: &str) -> Result<Option<RebuildProgress>> {
        let store = self
            .inner
            .engine
            .perspectives
            .rebuilds()
            .ok_or_else(|| unsupported(name))?;
        store.progress(name).await
    }

    /// Compares every registered perspective's declared version
    /// ([`Perspective::VERSION`](crate::Perspective::VERSION)) with the one
    /// its live models were built with, as the store recorded it: records it
    /// when none is (a first start), and for one declared above the record,
    /// rebuilds it ([`VersionPolicy::Rebuild`], one after the other) or
    /// fails ([`VersionPolicy::Refuse`]). A record above the declared
    /// version (an older release beside a newer one) is left alone.
    ///
    /// # Errors
    /// [`Error::PerspectiveVersion`] under [`VersionPolicy::Refuse`];
    /// [`Error::Unsupported`] when the store offers no rebuild; a rebuild's error.
    pub async fn check_perspective_versions(
        &self,
        policy: VersionPolicy,
    ) -> Result<Vec<(&'static str, VersionCheck)>> {
        let perspectives = &*self.inner.engine.perspectives;
        let store = perspectives
            .rebuilds()
            .ok_or_else(|| unsupported("(all)"))?;
        let mut checks = Vec::new();
        for reg in self.registry().perspectives() {
            let check = match store.built_version(reg.name).await? {
                None => {
                    store.record_version(reg.name, reg.version).await?;
                    VersionCheck::Recorded(reg.version)
                }
                Some(built) if built >= reg.version => VersionCheck::Current(built),
                Some(built) => match policy {
                    VersionPolicy::Refuse => {
                        return Err(Error::PerspectiveVersion {
                            perspective: reg.name,
                            declared: reg.version,
                            built,
                        })
                    }
                    VersionPolicy::Rebuild => VersionCheck::Rebuilt(
                        self.rebuild_named(reg.name, RebuildOptions::default())
                            .await?,
                    ),
                },
            };
            checks.push((reg.name, check));
        }
        Ok(checks)
    }

    /// Records a rebuild or a catch-up to the head in the sync log (and its
    /// metrics), as an explicit sync's run is: `streams` the models it
    /// brought up to date, `error` why it failed as a whole.
    async fn log_operator_run(
        &self,
        perspective: &str,
        mode: &str,
        started_at: std::time::SystemTime,
        streams: u64,
        error: Option<String>,
    ) {
        let duration = started_at.elapsed().unwrap_or_default();
        let run = crate::perspective::SyncRun::new(
            perspective,
            mode,
            "all streams",
            started_at,
            duration,
            (streams, 0, 0),
        );
        let run = match error {
            Some(e) => run.with_error(e),
            None => run,
        };
        self.record_sync_run(&run).await;
    }

    /// The registered perspective `name`, the perspective store and its
    /// rebuild support.
    fn rebuild_target(
        &self,
        name: &str,
    ) -> Result<(
        &'static crate::perspective::PerspectiveRegistration,
        &dyn crate::store::PerspectiveStore,
        &dyn crate::store::RebuildStore,
    )> {
        let live =
            self.registry()
                .perspective_named(name)
                .ok_or_else(|| Error::UnknownPerspective {
                    name: name.to_owned(),
                })?;
        let perspectives = &*self.inner.engine.perspectives;
        let store = perspectives
            .rebuilds()
            .ok_or_else(|| unsupported(live.name))?;
        Ok((live, perspectives, store))
    }
}

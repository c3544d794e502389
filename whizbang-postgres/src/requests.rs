//! The service side of the operator's `sync` and `rebuild` requests, and the
//! version check at start.
//!
//! The `whizbang` command line has no perspective code, so it asks: it
//! inserts a row into `wh_operator_requests` (migration `0008`) and
//! NOTIFYs [`REQUESTS_CHANNEL`]. Every runner process listens there (and
//! polls, in case a NOTIFY was lost), claims an open request for a
//! perspective it runs (`for update skip locked`, a lease it renews while it
//! works, so a request whose process died is claimed again), runs it
//! ([`Runtime::catch_up_to_head`] or [`Runtime::rebuild_named`]), writes its
//! progress to the row as it goes, and ends it `done` or `failed` with the
//! error. The command line polls the row.

use crate::events::to_i64;
use crate::listen::{gone, Gone};
use crate::{wire, PostgresOptions};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;
use whizbang_core::perspective::rebuild::{RebuildOptions, RebuildProgress, VersionPolicy};
use whizbang_core::{Runtime, WeakRuntime};

/// The NOTIFY channel (of the pool's schema) that wakes the services when
/// the command line writes a request.
pub const REQUESTS_CHANNEL: &str = "wh_requests";

/// How often the services look for requests without a NOTIFY.
const POLL: Duration = Duration::from_secs(1);

/// What the request task needs besides the runtime.
pub(crate) struct Config {
    pub(crate) pool: PgPool,
    pub(crate) instance_id: Uuid,
    pub(crate) options: PostgresOptions,
}

/// A claimed request: id, kind, perspective.
type Claimed = (Uuid, String, String);

/// Checks the declared versions, then serves requests until the runtime is dropped.
pub(crate) async fn run(config: Config, runtime: WeakRuntime, stop: Gone) {
    let span = tracing::info_span!("whizbang.postgres.requests", instance = %config.instance_id);
    tokio::select! {
        () = serve(&config, &runtime).instrument(span) => {}
        () = gone(stop) => {}
    }
}

async fn serve(config: &Config, runtime: &WeakRuntime) {
    if let Some(rt) = runtime.upgrade() {
        check_versions(&rt, config.options.on_version_bump).await;
    }
    let channel = wire::channel(&config.pool, REQUESTS_CHANNEL);
    let mut listener = listen(&config.pool, &channel).await;
    loop {
        let Some(rt) = runtime.upgrade() else { return };
        let names: Vec<&'static str> = rt
            .registry()
            .perspectives()
            .iter()
            .map(|p| p.name)
            .collect();
        match claim(config, &names).await {
            Ok(Some(request)) => {
                serve_one(config, &rt, request).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not look for operator requests"),
        }
        drop(rt);
        match listener.as_mut() {
            Some(l) => {
                tokio::select! {
                    r = l.try_recv() => if r.is_err() { listener = None; },
                    () = tokio::time::sleep(POLL) => {}
                }
            }
            None => {
                tokio::time::sleep(POLL).await;
                listener = listen(&config.pool, &channel).await;
            }
        }
    }
}

/// A listener on a connection of its own, outside the pool (a pooled one
/// would be held for as long as the service runs).
async fn listen(pool: &PgPool, channel: &str) -> Option<PgListener> {
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut l = PgListener::connect_with(&own).await.ok()?;
    l.listen(channel).await.ok()?;
    Some(l)
}

/// Records or rebuilds per `policy`; errors are logged (the service runs on).
async fn check_versions(rt: &Runtime, policy: VersionPolicy) {
    match rt.check_perspective_versions(policy).await {
        Ok(checks) => {
            for (name, check) in checks {
                tracing::debug!(perspective = name, ?check, "perspective version checked");
            }
        }
        Err(e) => tracing::error!(error = %e, "perspective version check at start failed"),
    }
}

async fn claim(config: &Config, names: &[&'static str]) -> sqlx::Result<Option<Claimed>> {
    sqlx::query_as(
        "update wh_operator_requests r
            set status = 'running', owner = $1, lease_expires_at = now() + $3,
                started_at = coalesce(started_at, now()), updated_at = now()
          where r.request_id = (
                select request_id from wh_operator_requests
                 where perspective = any($2)
                   and (status = 'requested' or (status = 'running' and lease_expires_at < now()))
                 order by requested_at
                 limit 1
                   for update skip locked)
         returning r.request_id, r.kind, r.perspective",
    )
    .bind(config.instance_id)
    .bind(names)
    .bind(config.options.lease_duration)
    .fetch_optional(&config.pool)
    .await
}

/// Writes `p` to the request row and renews its lease.
async fn report(config: &Config, id: Uuid, p: &RebuildProgress) {
    let eta = p
        .eta
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let written = sqlx::query(
        "update wh_operator_requests
            set done = $3, total = $4, rate = $5, eta_ms = $6,
                lease_expires_at = now() + $7, updated_at = now()
          where request_id = $1 and owner = $2 and status = 'running'",
    )
    .bind(id)
    .bind(config.instance_id)
    .bind(to_i64(p.done, "events done").unwrap_or(i64::MAX))
    .bind(to_i64(p.total, "events in total").unwrap_or(i64::MAX))
    .bind(p.rate)
    .bind(eta)
    .bind(config.options.lease_duration)
    .execute(&config.pool)
    .await;
    if let Err(e) = written {
        tracing::warn!(request = %id, error = %e, "could not record a request's progress");
    }
}

async fn serve_one(config: &Config, rt: &Runtime, (id, kind, perspective): Claimed) {
    tracing::info!(request = %id, %kind, %perspective, "serving an operator request");
    let (options, mut progress) = RebuildOptions::default().watch();
    let work = async {
        match kind.as_str() {
            "rebuild" => rt
                .rebuild_named(&perspective, options)
                .await
                .map(|r| format!("{} models, {} events", r.models, r.events)),
            _ => rt
                .catch_up_to_head(&perspective, options)
                .await
                .map(|r| format!("{} streams, {} events", r.streams, r.events)),
        }
    };
    tokio::pin!(work);
    let mut renew = tokio::time::interval(config.options.lease_duration / 3);
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            changed = progress.changed() => if changed.is_ok() {
                let p = progress.borrow_and_update().clone();
                report(config, id, &p).await;
            },
            _ = renew.tick() => {
                let p = progress.borrow().clone();
                report(config, id, &p).await;
            }
        }
    };
    let last = progress.borrow().clone();
    report(config, id, &last).await;
    let error = match &outcome {
        Ok(summary) => {
            tracing::info!(request = %id, %summary, "operator request done");
            None
        }
        Err(e) => {
            tracing::error!(request = %id, error = %e, "operator request failed");
            Some(e.to_string())
        }
    };
    let ended = sqlx::query(
        "update wh_operator_requests
            set status = case when $3::text is null then 'done' else 'failed' end,
                error = $3, finished_at = now(), updated_at = now(), lease_expires_at = null
          where request_id = $1 and owner = $2",
    )
    .bind(id)
    .bind(config.instance_id)
    .bind(error)
    .execute(&config.pool)
    .await;
    if let Err(e) = ended {
        tracing::warn!(request = %id, error = %e, "could not record a request's outcome");
    }
}

//! `whizbang`: the operator's command-line tool for a whizbang PostgreSQL
//! database (build with `--features cli`).
//!
//! It reads and repairs what the library stores, without the services'
//! code: `status` (perspectives, their lag, failed cursors and rebuilds, the
//! message queue, the outbox, live instances and their partition leases), `failed`,
//! `retry` and `skip` for a failed perspective cursor, `dead-letters`
//! `list` and `replay` for the message queue, and `sync` and `rebuild`,
//! which a running service carries out (with a progress bar). A readable table by default,
//! JSON with `--json`. Exit code 0 on success, 1 when the command failed
//! (the message says why), 2 for a usage error.

#[path = "whizbang/requests.rs"]
mod requests;

use clap::{Parser, Subcommand};
use serde::Serialize;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use std::process::ExitCode;
use std::time::Duration;
use uuid::Uuid;
use whizbang_core::perspective::rebuild::SHADOW_SUFFIX;
use whizbang_core::perspective::KEYED_CURSOR;
use whizbang_core::queue::MessageQueue as _;
use whizbang_core::MessageId;
use whizbang_postgres::__private::PARTITIONS;
use whizbang_postgres::{PgMessageQueue, SchemaName, MIGRATOR, QUEUE_CHANNEL};

/// The NOTIFY channel the runners listen on for new events (payload: the
/// partitions, comma-separated).
const EVENTS_CHANNEL: &str = "whizbang_events";

/// How long connecting may take before the tool gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Inspect and repair a whizbang PostgreSQL database.
#[derive(Parser)]
#[command(name = "whizbang", version)]
struct Cli {
    /// The database (default: the DATABASE_URL environment variable).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// The service's schema, when it runs in one (PostgresOptions::schema).
    #[arg(long, global = true)]
    schema: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Perspectives (streams, applied events, lag, failed cursors, a rebuild
    /// under way), the message queue, the outbox, live instances and their
    /// partitions.
    Status,
    /// The failed perspective cursors.
    Failed,
    /// Clears a failed cursor so the runner applies the failing event again
    /// (fix the cause first).
    Retry {
        /// The perspective's registered name.
        perspective: String,
        /// The stream (model key) whose cursor failed; for a keyed
        /// perspective its one cursor, the nil UUID
        /// (`00000000-0000-0000-0000-000000000000`, as `failed` lists it).
        stream: Uuid,
    },
    /// Records the failing event as skipped (with a reason) so the runner
    /// moves past it without applying it, then applies the rest.
    Skip {
        /// The perspective's registered name.
        perspective: String,
        /// The stream (model key) whose cursor failed; for a keyed
        /// perspective its one cursor, the nil UUID
        /// (`00000000-0000-0000-0000-000000000000`, as `failed` lists it).
        stream: Uuid,
        /// Why the event is skipped (kept in the cursor).
        #[arg(long)]
        reason: String,
    },
    /// The message queue's dead letters.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// Asks a running service to bring a perspective up to the head of the
    /// event store now, and shows its progress.
    Sync {
        /// The perspective's registered name.
        perspective: String,
        /// Give up when no service picks the request up within this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Asks a running service to rebuild a perspective beside its live read
    /// models and swap them in, and shows its progress.
    Rebuild {
        /// The perspective's registered name.
        perspective: String,
        /// Give up when no service picks the request up within this many seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum DeadLetters {
    /// Lists the dead letters, oldest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Moves dead letters back to the queue (attempts at zero).
    Replay {
        /// The message ids to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<Uuid>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
    },
}

/// A failure the tool reports: the message says what happened, whether
/// anything changed, and what to do.
struct Failure(String);

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure(format!(
            "a database statement failed: {e}; nothing was changed by the statement that failed"
        ))
    }
}

impl From<whizbang_core::Error> for Failure {
    fn from(e: whizbang_core::Error) -> Self {
        Failure(e.to_string())
    }
}

type Outcome<T> = Result<T, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The database the tool works on.
struct Db {
    pool: PgPool,
    schema: SchemaName,
}

async fn run(cli: Cli) -> Outcome<()> {
    let db = connect(&cli).await?;
    let result = dispatch(&cli, &db).await;
    db.pool.close().await;
    result
}

async fn dispatch(cli: &Cli, db: &Db) -> Outcome<()> {
    match &cli.command {
        Command::Status => status(db, cli.json).await,
        Command::Failed => failed(db, cli.json).await,
        Command::Retry {
            perspective,
            stream,
        } => recover(db, perspective, *stream, None, cli.json).await,
        Command::Skip {
            perspective,
            stream,
            reason,
        } => recover(db, perspective, *stream, Some(reason), cli.json).await,
        Command::DeadLetters(DeadLetters::List { limit }) => {
            dead_letters_list(db, *limit, cli.json).await
        }
        Command::DeadLetters(DeadLetters::Replay { ids, all }) => {
            dead_letters_replay(db, ids, *all, cli.json).await
        }
        Command::Sync {
            perspective,
            timeout,
        } => requests::request(
            &db.pool,
            "sync",
            perspective,
            Duration::from_secs(*timeout),
            cli.json,
        )
        .await
        .map_err(Failure),
        Command::Rebuild {
            perspective,
            timeout,
        } => requests::request(
            &db.pool,
            "rebuild",
            perspective,
            Duration::from_secs(*timeout),
            cli.json,
        )
        .await
        .map_err(Failure),
    }
}

// ---- connecting -------------------------------------------------------------------------

async fn connect(cli: &Cli) -> Outcome<Db> {
    let url = match &cli.database_url {
        Some(url) => url.clone(),
        None => std::env::var("DATABASE_URL").map_err(|_| {
            Failure(
                "no database given: set DATABASE_URL or pass --database-url postgres://..."
                    .to_owned(),
            )
        })?,
    };
    let mut options: PgConnectOptions = url.parse().map_err(|e| {
        Failure(format!(
            "the database URL is not valid ({e}); expected postgres://user[:password]@host[:port]/database"
        ))
    })?;
    let schema = SchemaName::new(cli.schema.as_deref().unwrap_or("public"))?;
    if cli.schema.is_some() {
        options = options.options([("search_path", schema.as_str())]);
    }
    let place = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    // One connection first: an unreachable server fails now with its own
    // error, not after a pool's retries.
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await;
    let unreachable = |why: String| {
        Failure(format!(
            "could not connect to PostgreSQL at {place}: {why}; check that the server is \
             running and reachable and that DATABASE_URL (or --database-url) is right"
        ))
    };
    match probe {
        Err(_) => return Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let db = Db { pool, schema };
    check_migrations(&db).await?;
    Ok(db)
}

/// Refuses a database whose whizbang migrations are missing.
async fn check_migrations(db: &Db) -> Outcome<()> {
    let has_table: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(&db.pool)
        .await?;
    let applied: Vec<i64> = if has_table {
        sqlx::query_scalar("select version from _sqlx_migrations where success")
            .fetch_all(&db.pool)
            .await?
    } else {
        Vec::new()
    };
    let missing: Vec<String> = MIGRATOR
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{:04} {}", m.version, m.description))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Failure(format!(
        "the database (schema `{}`) is missing whizbang migrations: {}; nothing was read or \
         changed. Start a service on it (Postgres::migrate runs them) or check --schema and \
         DATABASE_URL",
        db.schema,
        missing.join(", ")
    )))
}

// ---- status -----------------------------------------------------------------------------

#[derive(Serialize)]
struct PerspectiveStatus {
    name: String,
    /// As the runner declared it at start (`None`: no runner has yet).
    strategy: Option<String>,
    /// A keyed perspective (one cursor over the global order): `streams`
    /// counts its models (keys), `applied_events` is the cursor's position
    /// in the global order, `lag_events` the handled events after it.
    keyed: bool,
    streams: i64,
    applied_events: i64,
    lag_events: i64,
    /// Age of the oldest event not yet applied (0 when none).
    lag_seconds: f64,
    last_applied_at: Option<String>,
    failed: Vec<FailedCursor>,
    /// Its rebuild beside live, when one was started (the shadow generation
    /// `<name>~rebuild` is shown here, never as a perspective of its own).
    rebuild: Option<RebuildStatus>,
}

/// A perspective's rebuild: its progress row (`wh_rebuilds`) and its shadow
/// generation's cursors.
#[derive(Serialize)]
struct RebuildStatus {
    /// The version rebuilt to (`None`: a shadow without a progress row).
    version: Option<i32>,
    /// starting, building, swapping, done or failed (`None`: no progress row).
    phase: Option<String>,
    /// Events the shadow reflects, of `total`.
    done: i64,
    total: i64,
    error: Option<String>,
    /// The shadow generation: its cursors (streams) and the events they applied.
    shadow_streams: i64,
    shadow_applied_events: i64,
    /// The shadow's failed cursors.
    failed: Vec<FailedCursor>,
}

impl RebuildStatus {
    fn empty() -> Self {
        RebuildStatus {
            version: None,
            phase: None,
            done: 0,
            total: 0,
            error: None,
            shadow_streams: 0,
            shadow_applied_events: 0,
            failed: Vec::new(),
        }
    }

    /// The REBUILD cell: `-` when none is under way (none, or done).
    fn cell(&self) -> String {
        let phase = self.phase.as_deref().unwrap_or("shadow");
        if phase == "done" && self.failed.is_empty() {
            return "-".into();
        }
        let mut out = match self.version {
            Some(v) => format!("{phase} v{v}"),
            None => phase.to_owned(),
        };
        if self.total > 0 || self.phase.is_some() {
            out.push_str(&format!(" {}/{}", self.done, self.total));
        } else {
            out.push_str(&format!(" ({} streams)", self.shadow_streams));
        }
        if !self.failed.is_empty() {
            out.push_str(&format!(", {} failed", self.failed.len()));
        }
        out
    }
}

#[derive(Serialize)]
struct FailedCursor {
    perspective: String,
    stream: Uuid,
    /// The cursor's version (the last event applied or skipped).
    version: i64,
    failed_version: i64,
    message: String,
    attempts: i32,
    failed_at: String,
}

#[derive(Serialize)]
struct Instance {
    instance_id: Uuid,
    perspectives: Vec<String>,
    started_at: String,
    heartbeat_age_seconds: f64,
    /// (perspective, partitions) leased and not expired.
    leases: Vec<LeaseSet>,
}

#[derive(Serialize)]
struct LeaseSet {
    perspective: String,
    partitions: Vec<i16>,
}

async fn failed_cursors(db: &Db) -> Outcome<Vec<FailedCursor>> {
    let rows: Vec<(String, Uuid, i64, i64, String, i32, String)> = sqlx::query_as(
        "select perspective, model_key, version, failed_version, failure_message, attempts,
                to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
           from wh_perspective_cursors
          where failed_version is not null
          order by perspective, updated_at, model_key",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(perspective, stream, version, failed_version, message, attempts, failed_at)| {
                FailedCursor {
                    perspective,
                    stream,
                    version,
                    failed_version,
                    message,
                    attempts,
                    failed_at,
                }
            },
        )
        .collect())
}

/// The lag of streams a perspective has no cursor on yet, by perspective:
/// (events, age in seconds of the oldest), for each perspective whose runner
/// declared the event types it handles. Such a stream's handled events all
/// lie after the perspective's feed checkpoint of its partition (the runner
/// writes a cursor for every handled stream it reads before the checkpoint
/// moves past it; a triggered or explicit sync writes one too), so the
/// count reads only the unread tail of each partition's feed (one ordered
/// range of `wh_events_feed_idx` per partition, as the runner reads it),
/// never each stream's events.
async fn uncursored_lag(db: &Db) -> Outcome<std::collections::HashMap<String, (i64, f64)>> {
    let declared: Vec<(String, Vec<String>)> = sqlx::query_as(
        "select perspective, event_types from wh_perspective_strategies
          where event_types is not null and cardinality(event_types) > 0",
    )
    .fetch_all(&db.pool)
    .await?;
    // A branch per partition: a lateral join over the partitions would let
    // the planner read whole partitions (see the runner's feed read).
    let branches: Vec<String> = (0..PARTITIONS)
        .map(|p| {
            format!(
                "(select e.created_at from wh_events e
                   where e.partition = {p}
                     and (e.tx_id, e.global_position) >
                         (coalesce((select tx_id from wh_feed_checkpoints
                                     where perspective = $1 and partition = {p}), '0'::xid8),
                          coalesce((select global_position from wh_feed_checkpoints
                                     where perspective = $1 and partition = {p}), 0))
                     and e.event_type = any($2)
                     and not exists (select 1 from wh_perspective_cursors c
                                      where c.perspective = $1 and c.model_key = e.stream_id))"
            )
        })
        .collect();
    let sql = format!(
        "select count(*)::int8,
                coalesce(extract(epoch from now() - min(created_at)), 0)::float8
           from ({}) unread",
        branches.join(" union all ")
    );
    let mut out = std::collections::HashMap::new();
    for (perspective, types) in declared {
        let (events, age): (i64, f64) = sqlx::query_as(&sql)
            .bind(&perspective)
            .bind(&types)
            .fetch_one(&db.pool)
            .await?;
        out.insert(perspective, (events, age));
    }
    Ok(out)
}

/// The lag of each keyed perspective (its one cursor is the row of
/// [`KEYED_CURSOR`], a position in `wh_event_order`): (events, age in
/// seconds of the oldest) of the handled types after that position, and
/// those not numbered yet (after the last numbered event in feed order).
/// Without declared event types every event counts.
async fn keyed_lag(db: &Db) -> Outcome<std::collections::HashMap<String, (i64, i64, f64)>> {
    let cursors: Vec<(String, i64, Option<Vec<String>>)> = sqlx::query_as(
        "select c.perspective, c.version, d.event_types
           from wh_perspective_cursors c
           left join wh_perspective_strategies d on d.perspective = c.perspective
          where c.model_key = $1",
    )
    .bind(KEYED_CURSOR.as_uuid())
    .fetch_all(&db.pool)
    .await?;
    let mut out = std::collections::HashMap::new();
    for (perspective, at, types) in cursors {
        let (events, age): (i64, f64) = sqlx::query_as(
            "with last as (
                 select tx_id, global_position from wh_event_order
                  order by feed_seq desc limit 1
             )
             select count(*)::int8,
                    coalesce(extract(epoch from now() - min(created_at)), 0)::float8
               from (select e.created_at
                       from wh_event_order o join wh_events e on e.event_id = o.event_id
                      where o.feed_seq > $1
                        and ($2::text[] is null or e.event_type = any($2))
                     union all
                     select e.created_at from wh_events e
                      where (e.tx_id, e.global_position) >
                            (coalesce((select tx_id from last), '0'::xid8),
                             coalesce((select global_position from last), 0))
                        and ($2::text[] is null or e.event_type = any($2))) behind",
        )
        .bind(at)
        .bind(types.filter(|t| !t.is_empty()))
        .fetch_one(&db.pool)
        .await?;
        out.insert(perspective, (at, events, age));
    }
    Ok(out)
}

/// Each perspective's rebuild, by the live perspective's name: the progress
/// rows and the shadow generations' cursors.
async fn rebuilds(db: &Db) -> Outcome<std::collections::HashMap<String, RebuildStatus>> {
    type RebuildRow = (String, i32, String, i64, i64, Option<String>);
    let progress: Vec<RebuildRow> =
        sqlx::query_as("select perspective, version, phase, done, total, error from wh_rebuilds")
            .fetch_all(&db.pool)
            .await?;
    let shadows: Vec<(String, i64, i64)> = sqlx::query_as(
        "select left(perspective, -length($1)), count(*), coalesce(sum(version), 0)::int8
           from wh_perspective_cursors
          where right(perspective, length($1)) = $1
          group by perspective",
    )
    .bind(SHADOW_SUFFIX)
    .fetch_all(&db.pool)
    .await?;
    let mut out = std::collections::HashMap::new();
    for (name, version, phase, done, total, error) in progress {
        out.insert(
            name,
            RebuildStatus {
                version: Some(version),
                phase: Some(phase),
                done,
                total,
                error,
                ..RebuildStatus::empty()
            },
        );
    }
    for (name, streams, applied) in shadows {
        let rebuild = out.entry(name).or_insert_with(RebuildStatus::empty);
        rebuild.shadow_streams = streams;
        rebuild.shadow_applied_events = applied;
    }
    Ok(out)
}

async fn status(db: &Db, as_json: bool) -> Outcome<()> {
    type PerspectiveRow = (String, Option<String>, i64, i64, i64, f64, Option<String>);
    // A rebuild's shadow generation (`<name>~rebuild`, $1 the suffix) is
    // not a perspective: its cursors are counted as the rebuild of `<name>`.
    let rows: Vec<PerspectiveRow> = sqlx::query_as(
        "with names as (
             select case when right(perspective, length($1)) = $1
                         then left(perspective, -length($1)) else perspective end
                    as perspective
               from wh_perspective_cursors
             union select perspective from wh_partition_leases
             union select perspective from wh_feed_checkpoints
             union select perspective from wh_perspective_strategies
             union select perspective from wh_rebuilds
         )
         select n.perspective,
                (select strategy from wh_perspective_strategies d
                  where d.perspective = n.perspective),
                count(c.model_key),
                coalesce(sum(c.version), 0)::int8,
                coalesce(sum(greatest(s.version - c.version, 0)), 0)::int8,
                coalesce(extract(epoch from now() - min(o.oldest)), 0)::float8,
                to_char(max(c.updated_at) filter (where c.failed_version is null)
                        at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
           from names n
           left join wh_perspective_cursors c on c.perspective = n.perspective
           left join wh_streams s on s.stream_id = c.model_key
           left join lateral (
                select min(e.created_at) as oldest from wh_events e
                 where e.stream_id = c.model_key and e.stream_version > c.version
                ) o on s.version > c.version
          group by n.perspective
          order by n.perspective",
    )
    .bind(SHADOW_SUFFIX)
    .fetch_all(&db.pool)
    .await?;
    let mut uncursored = uncursored_lag(db).await?;
    let mut keyed = keyed_lag(db).await?;
    let mut rebuilds = rebuilds(db).await?;
    let mut failed = failed_cursors(db).await?;
    let perspectives: Vec<PerspectiveStatus> = rows
        .into_iter()
        .map(
            |(name, strategy, streams, applied_events, lag_events, lag, last)| {
                let shadow = format!("{name}{SHADOW_SUFFIX}");
                let (mine, rest): (Vec<_>, Vec<_>) =
                    failed.drain(..).partition(|f| f.perspective == name);
                let (shadows, rest): (Vec<_>, Vec<_>) =
                    rest.into_iter().partition(|f| f.perspective == shadow);
                failed = rest;
                let mut rebuild = rebuilds.remove(&name);
                if !shadows.is_empty() {
                    rebuild.get_or_insert_with(RebuildStatus::empty).failed = shadows;
                }
                let (new_events, new_lag) = uncursored.remove(&name).unwrap_or((0, 0.0));
                // A keyed perspective's lag is what its one cursor has not
                // passed; streams have no cursors of their own there.
                let keyed = keyed.remove(&name);
                let (streams, applied_events, lag_events, lag) = match keyed {
                    // Its models' rows, less the cursor's; the cursor's
                    // position in the global order.
                    Some((at, behind, age)) => ((streams - 1).max(0), at, behind, age),
                    None => (
                        streams,
                        applied_events,
                        lag_events + new_events,
                        lag.max(new_lag),
                    ),
                };
                PerspectiveStatus {
                    name,
                    strategy,
                    keyed: keyed.is_some(),
                    streams,
                    applied_events,
                    lag_events,
                    lag_seconds: (lag * 10.0).round() / 10.0,
                    last_applied_at: last,
                    failed: mine,
                    rebuild,
                }
            },
        )
        .collect();

    let (queued, leased, dead): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from wh_message_queue where status = 'queued'),
                (select count(*) from wh_message_queue where status = 'leased'),
                (select count(*) from wh_dead_letters)",
    )
    .fetch_one(&db.pool)
    .await?;
    let (pending, outbox_dead): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'pending'),
                count(*) filter (where status = 'dead')
           from wh_outbox",
    )
    .fetch_one(&db.pool)
    .await?;
    type InstanceRow = (Uuid, Vec<String>, String, f64);
    let instance_rows: Vec<InstanceRow> = sqlx::query_as(
        "select instance_id, perspectives,
                to_char(started_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                extract(epoch from now() - heartbeat_at)::float8
           from wh_instances
          order by started_at, instance_id",
    )
    .fetch_all(&db.pool)
    .await?;
    let leases: Vec<(Uuid, String, Vec<i16>)> = sqlx::query_as(
        "select owner, perspective, array_agg(partition order by partition)
           from wh_partition_leases
          where owner is not null and expires_at > now()
          group by owner, perspective
          order by owner, perspective",
    )
    .fetch_all(&db.pool)
    .await?;
    let instances: Vec<Instance> = instance_rows
        .into_iter()
        .map(|(instance_id, perspectives, started_at, age)| Instance {
            instance_id,
            perspectives,
            started_at,
            heartbeat_age_seconds: (age * 10.0).round() / 10.0,
            leases: leases
                .iter()
                .filter(|(owner, _, _)| *owner == instance_id)
                .map(|(_, perspective, partitions)| LeaseSet {
                    perspective: perspective.clone(),
                    partitions: partitions.clone(),
                })
                .collect(),
        })
        .collect();

    if as_json {
        let out = json!({
            "schema": db.schema.as_str(),
            "perspectives": perspectives,
            "queue": { "queued": queued, "leased": leased, "dead_letters": dead },
            "outbox": { "pending": pending, "dead": outbox_dead },
            "instances": instances,
        });
        println!("{out:#}");
        return Ok(());
    }
    println!("Perspectives (schema {})", db.schema);
    let mut table = Table::new(&[
        "PERSPECTIVE",
        "STRATEGY",
        "STREAMS",
        "APPLIED",
        "LAG",
        "LAG SECONDS",
        "FAILED",
        "LAST APPLIED",
        "REBUILD",
    ]);
    for p in &perspectives {
        table.row(vec![
            p.name.clone(),
            p.strategy.clone().unwrap_or_else(|| "-".into()),
            p.streams.to_string(),
            p.applied_events.to_string(),
            p.lag_events.to_string(),
            format!("{:.1}", p.lag_seconds),
            p.failed.len().to_string(),
            p.last_applied_at.clone().unwrap_or_else(|| "-".into()),
            p.rebuild
                .as_ref()
                .map_or_else(|| "-".into(), RebuildStatus::cell),
        ]);
    }
    table.print();
    let all_failed: Vec<&FailedCursor> = perspectives
        .iter()
        .flat_map(|p| {
            p.failed
                .iter()
                .chain(p.rebuild.iter().flat_map(|r| &r.failed))
        })
        .collect();
    if !all_failed.is_empty() {
        println!("\nFailed cursors");
        print_failed(all_failed.into_iter());
    }
    println!("\nMessage queue: {queued} queued, {leased} leased, {dead} dead letters");
    println!("Outbox: {pending} pending, {outbox_dead} dead");
    println!("\nInstances");
    let mut table = Table::new(&["INSTANCE", "STARTED", "HEARTBEAT AGE", "LEASED PARTITIONS"]);
    for i in &instances {
        let leases = i
            .leases
            .iter()
            .map(|l| format!("{}: {}", l.perspective, ranges(&l.partitions)))
            .collect::<Vec<_>>()
            .join("; ");
        table.row(vec![
            i.instance_id.to_string(),
            i.started_at.clone(),
            format!("{:.1}s", i.heartbeat_age_seconds),
            if leases.is_empty() {
                "-".into()
            } else {
                leases
            },
        ]);
    }
    table.print();
    Ok(())
}

/// `0-3,7` for partitions 0, 1, 2, 3, 7.
fn ranges(partitions: &[i16]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < partitions.len() {
        let start = partitions[i];
        let mut end = start;
        while i + 1 < partitions.len() && partitions[i + 1] == end + 1 {
            i += 1;
            end = partitions[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

async fn failed(db: &Db, as_json: bool) -> Outcome<()> {
    let failed = failed_cursors(db).await?;
    if as_json {
        println!("{:#}", json!(failed));
    } else if failed.is_empty() {
        println!("No failed cursors.");
    } else {
        print_failed(failed.iter());
    }
    Ok(())
}

fn print_failed<'a>(failed: impl Iterator<Item = &'a FailedCursor>) {
    let mut table = Table::new(&[
        "PERSPECTIVE",
        "STREAM",
        "FAILED AT VERSION",
        "ATTEMPTS",
        "SINCE",
        "MESSAGE",
    ]);
    for f in failed {
        table.row(vec![
            f.perspective.clone(),
            f.stream.to_string(),
            f.failed_version.to_string(),
            f.attempts.to_string(),
            f.failed_at.clone(),
            f.message.clone(),
        ]);
    }
    table.print();
}

// ---- retry and skip ---------------------------------------------------------------------

/// Clears `perspective`'s failed cursor on `stream` (recording the failing
/// event as skipped with `reason` when given) and makes the runner pick the
/// stream up, in one transaction.
///
/// The runner finds work in each partition's feed after its checkpoint, and
/// a failed cursor counted as caught up: the checkpoint is already past the
/// failing event. So the checkpoint is moved back to just before the first
/// event the cursor has not reached, and the partition's lease is released
/// (its fence bumped, as the runner releases a lease itself): a batch a
/// runner read before this commit can then not move the checkpoint forward
/// again over the stream, and a runner takes the lease back at its next
/// heartbeat. Catching up is idempotent (the cursor says what is applied),
/// so the other streams of the partition read again apply nothing twice. A
/// NOTIFY on the events channel wakes the runners at once.
async fn recover(
    db: &Db,
    perspective: &str,
    stream: Uuid,
    reason: Option<&str>,
    as_json: bool,
) -> Outcome<()> {
    let action = if reason.is_some() { "skip" } else { "retry" };
    let mut tx = db.pool.begin().await?;
    let cursor: Option<(i64, Option<i64>, Option<String>)> = sqlx::query_as(
        "select version, failed_version, failure_message
           from wh_perspective_cursors
          where perspective = $1 and model_key = $2
            for update",
    )
    .bind(perspective)
    .bind(stream)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((version, failed_version, failure_message)) = cursor else {
        let known: bool = sqlx::query_scalar(
            "select exists (select 1 from wh_perspective_cursors where perspective = $1)
                 or exists (select 1 from wh_partition_leases where perspective = $1)
                 or exists (select 1 from wh_feed_checkpoints where perspective = $1)",
        )
        .bind(perspective)
        .fetch_one(&mut *tx)
        .await?;
        return Err(Failure(if known {
            format!(
                "perspective `{perspective}` has no cursor on stream {stream}; nothing was \
                 changed. List the failed cursors with `whizbang failed`"
            )
        } else {
            format!(
                "unknown perspective `{perspective}`: this database has no cursor, lease or \
                 checkpoint of it; nothing was changed. See `whizbang status` for the names"
            )
        }));
    };
    let (Some(failed_version), Some(failure_message)) = (failed_version, failure_message) else {
        return Err(Failure(format!(
            "perspective `{perspective}` has not failed on stream {stream} (its cursor is at \
             version {version}); nothing was changed"
        )));
    };
    // A keyed perspective's one cursor counts positions in the global order
    // (`wh_event_order`), not versions of a stream.
    let keyed = stream == KEYED_CURSOR.as_uuid();
    if let Some(reason) = reason {
        let event: Option<Uuid> = if keyed {
            sqlx::query_scalar("select event_id from wh_event_order where feed_seq = $1")
                .bind(failed_version)
                .fetch_optional(&mut *tx)
                .await?
        } else {
            sqlx::query_scalar(
                "select event_id from wh_events where stream_id = $1 and stream_version = $2",
            )
            .bind(stream)
            .bind(failed_version)
            .fetch_optional(&mut *tx)
            .await?
        };
        let Some(event_id) = event.filter(|_| failed_version > version) else {
            return Err(Failure(format!(
                "perspective `{perspective}` failed on stream {stream} at version \
                 {failed_version}, but the event store holds no event at that version after \
                 the cursor ({version}); nothing was skipped. Use retry instead"
            )));
        };
        // The element `Runtime::skip_failed_event` records.
        let skipped = json!([{
            "version": failed_version,
            "event_id": event_id,
            "reason": reason,
            "failure": failure_message,
        }]);
        sqlx::query(
            "update wh_perspective_cursors
                set skipped = skipped || $3::text::jsonb
              where perspective = $1 and model_key = $2",
        )
        .bind(perspective)
        .bind(stream)
        .bind(skipped.to_string())
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "update wh_perspective_cursors
            set failed_version = null, failure_message = null, updated_at = now()
          where perspective = $1 and model_key = $2",
    )
    .bind(perspective)
    .bind(stream)
    .execute(&mut *tx)
    .await?;
    // The first event the cursor has not reached: where the feed must be
    // read again from.
    let next: Option<(i16, String, i64)> = if keyed {
        sqlx::query_as(
            "select e.partition, e.tx_id::text, e.global_position
               from wh_event_order o join wh_events e on e.event_id = o.event_id
              where o.feed_seq > $1
              order by o.feed_seq
              limit 1",
        )
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?
    } else {
        sqlx::query_as(
            "select partition, tx_id::text, global_position
               from wh_events
              where stream_id = $1 and stream_version > $2
              order by stream_version
              limit 1",
        )
        .bind(stream)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?
    };
    let mut rewound = false;
    if let Some((partition, tx_id, position)) = &next {
        rewound = sqlx::query(
            "update wh_feed_checkpoints
                set tx_id = $3::text::xid8, global_position = $4 - 1, updated_at = now()
              where perspective = $1 and partition = $2
                and (tx_id, global_position) >= ($3::text::xid8, $4)",
        )
        .bind(perspective)
        .bind(partition)
        .bind(tx_id)
        .bind(position)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if rewound {
            sqlx::query(
                "update wh_partition_leases
                    set owner = null, fence = fence + 1, expires_at = now()
                  where perspective = $1 and partition = $2 and owner is not null",
            )
            .bind(perspective)
            .bind(partition)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("select pg_notify($1, $2)")
            .bind(db.schema.channel(EVENTS_CHANNEL))
            .bind(partition.to_string())
            .execute(&mut *tx)
            .await?;
    }
    let runners: i64 = sqlx::query_scalar(
        "select count(*) from wh_instances
          where $1 = any(perspectives) and heartbeat_at > now() - interval '1 minute'",
    )
    .bind(perspective)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;

    let note = if runners == 0 {
        "no live instance runs this perspective: it applies when one starts"
    } else {
        "a runner applies it now"
    };
    if as_json {
        let out = json!({
            "action": action,
            "perspective": perspective,
            "stream": stream,
            "cursor_version": version,
            "failed_version": failed_version,
            "skipped": reason.is_some(),
            "reason": reason,
            "feed_rewound": rewound,
            "live_runners": runners,
        });
        println!("{out:#}");
    } else if reason.is_some() {
        println!(
            "Skipped the event at version {failed_version} of stream {stream} for perspective \
             `{perspective}` (recorded in its cursor); {note}."
        );
    } else {
        println!(
            "Cleared the failure of perspective `{perspective}` on stream {stream} (at version \
             {failed_version}); {note}."
        );
    }
    Ok(())
}

// ---- dead letters -----------------------------------------------------------------------

async fn dead_letters_list(db: &Db, limit: usize, as_json: bool) -> Outcome<()> {
    let queue = PgMessageQueue::new(db.pool.clone());
    let dead = queue.dead_letters(limit).await?;
    if as_json {
        let out: Vec<serde_json::Value> = dead
            .iter()
            .map(|d| {
                json!({
                    "message_id": d.message.id.as_uuid(),
                    "message_type": d.message.message_type,
                    "correlation_id": d.message.correlation_id.as_uuid(),
                    "attempts": d.attempts,
                    "error": d.error,
                    "dead_at_unix_ms": unix_ms(d.dead_at),
                    "payload": d.message.payload,
                })
            })
            .collect();
        println!("{:#}", json!(out));
        return Ok(());
    }
    if dead.is_empty() {
        println!("No dead letters.");
        return Ok(());
    }
    let mut table = Table::new(&["MESSAGE", "TYPE", "ATTEMPTS", "ERROR"]);
    for d in &dead {
        table.row(vec![
            d.message.id.as_uuid().to_string(),
            d.message.message_type.clone(),
            d.attempts.to_string(),
            d.error.clone(),
        ]);
    }
    table.print();
    Ok(())
}

fn unix_ms(at: std::time::SystemTime) -> u128 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

async fn dead_letters_replay(db: &Db, ids: &[Uuid], all: bool, as_json: bool) -> Outcome<()> {
    let queue = PgMessageQueue::new(db.pool.clone());
    let wanted: Vec<MessageId> = if all {
        let limit = whizbang_core::queue::limits::MAX_BATCH;
        queue
            .dead_letters(limit)
            .await?
            .into_iter()
            .map(|d| d.message.id)
            .collect()
    } else {
        ids.iter().copied().map(MessageId::from).collect()
    };
    let mut replayed = Vec::new();
    for chunk in wanted.chunks(whizbang_core::queue::limits::MAX_BATCH) {
        replayed.extend(queue.replay_dead_letters(chunk).await?);
    }
    if !replayed.is_empty() {
        // Wakes the inbox workers now (the library sends it on a task of
        // its own, which may not run before this process ends).
        sqlx::query("select pg_notify($1, '')")
            .bind(db.schema.channel(QUEUE_CHANNEL))
            .execute(&db.pool)
            .await?;
    }
    let missing: Vec<Uuid> = wanted
        .iter()
        .filter(|id| !replayed.contains(id))
        .map(MessageId::as_uuid)
        .collect();
    if as_json {
        let replayed: Vec<Uuid> = replayed.iter().map(MessageId::as_uuid).collect();
        println!(
            "{:#}",
            json!({ "replayed": replayed, "not_found": missing })
        );
    } else {
        println!("Replayed {} dead letters.", replayed.len());
        for id in &missing {
            println!("Not a dead letter (nothing done): {id}");
        }
    }
    if !missing.is_empty() && !all {
        return Err(Failure(format!(
            "{} of the ids asked for are not dead letters (the others were replayed)",
            missing.len()
        )));
    }
    Ok(())
}

// ---- tables -----------------------------------------------------------------------------

/// A plain text table: columns padded to their widest cell.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        // One line per row: newlines in a message would break the columns.
        self.rows
            .push(cells.into_iter().map(|c| c.replace('\n', " ")).collect());
    }

    fn print(&self) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let last = cells.len().saturating_sub(1);
            let mut out = String::new();
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                if i == last {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<w$}  "));
                }
            }
            println!("{}", out.trim_end());
        };
        line(&self.header);
        for row in &self.rows {
            line(row);
        }
        if self.rows.is_empty() {
            println!("(none)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn partitions_print_as_ranges() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[3]), "3");
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
    }
}

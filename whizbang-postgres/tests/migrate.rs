//! Schema migration tests against a real PostgreSQL server.
//!
//! Each `#[sqlx::test]` gets a fresh, empty database created from
//! `DATABASE_URL` (see `.ci/test`), so the tests run the migrations
//! themselves (`migrations = false`).

use sqlx::PgPool;

/// Primary-key or unique-constraint columns of `table`, in key order.
async fn constraint_columns(pool: &PgPool, constraint: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select a.attname::text
           from pg_constraint c
           cross join lateral unnest(c.conkey) with ordinality as k(attnum, ord)
           join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum
          where c.conname = $1
          order by k.ord",
    )
    .bind(constraint)
    .fetch_all(pool)
    .await
    .expect("query constraint columns")
}

/// Name and type (`p` primary key, `u` unique) of every key constraint on `table`.
async fn key_constraints(pool: &PgPool, table: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "select conname::text, contype::text
           from pg_constraint
          where conrelid = $1::regclass and contype in ('p', 'u')
          order by conname",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("query key constraints")
}

async fn insert_event(pool: &PgPool, stream: &str, version: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "insert into wh_events (event_id, stream_id, stream_version, partition, event_type, data)
         values (gen_random_uuid(), $1::uuid, $2, 0, 'OrderCreated', '{\"total_cents\": 100}')
         returning global_position",
    )
    .bind(stream)
    .bind(version)
    .fetch_one(pool)
    .await
}

const STREAM_A: &str = "0190d6a5-0000-7000-8000-00000000000a";
const STREAM_B: &str = "0190d6a5-0000-7000-8000-00000000000b";

#[sqlx::test(migrations = false)]
async fn migrations_create_the_tables_with_their_keys(pool: PgPool) {
    let before: Vec<String> = sqlx::query_scalar(
        "select tablename::text from pg_tables where tablename like 'wh\\_%' order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        before.is_empty(),
        "fresh database has no whizbang tables: {before:?}"
    );

    whizbang_postgres::migrate(&pool)
        .await
        .expect("migrations apply");

    let tables: Vec<String> = sqlx::query_scalar(
        "select tablename::text from pg_tables where tablename like 'wh\\_%' order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "wh_dead_letters",
            "wh_event_order",
            "wh_events",
            "wh_feed_checkpoints",
            "wh_instances",
            "wh_message_queue",
            "wh_operator_requests",
            "wh_outbox",
            "wh_partition_leases",
            "wh_perspective_cursors",
            "wh_perspective_rows",
            "wh_perspective_strategies",
            "wh_perspective_versions",
            "wh_processed_messages",
            "wh_rebuilds",
            "wh_streams",
            "wh_sync_log"
        ]
    );

    // wh_events: event_id pk, unique stream version, unique global position.
    assert_eq!(
        key_constraints(&pool, "wh_events").await,
        [
            ("wh_events_global_position_key".into(), "u".into()),
            ("wh_events_pkey".into(), "p".into()),
            ("wh_events_stream_version_key".into(), "u".into()),
        ]
    );
    assert_eq!(
        constraint_columns(&pool, "wh_events_pkey").await,
        ["event_id"]
    );
    assert_eq!(
        constraint_columns(&pool, "wh_events_stream_version_key").await,
        ["stream_id", "stream_version"]
    );
    assert_eq!(
        constraint_columns(&pool, "wh_events_global_position_key").await,
        ["global_position"]
    );

    // Cursors and rows: composite primary keys.
    assert_eq!(
        key_constraints(&pool, "wh_perspective_cursors").await,
        [("wh_perspective_cursors_pkey".into(), "p".into())]
    );
    assert_eq!(
        constraint_columns(&pool, "wh_perspective_cursors_pkey").await,
        ["perspective", "model_key"]
    );
    assert_eq!(
        key_constraints(&pool, "wh_perspective_rows").await,
        [("wh_perspective_rows_pkey".into(), "p".into())]
    );
    assert_eq!(
        constraint_columns(&pool, "wh_perspective_rows_pkey").await,
        ["perspective", "model_key"]
    );

    // The runner's feed scan has its index.
    let feed: String = sqlx::query_scalar("select pg_get_indexdef('wh_events_feed_idx'::regclass)")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        feed.contains("(partition, tx_id, global_position)"),
        "unexpected feed index: {feed}"
    );

    // The migration is recorded as applied.
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("select version, success from _sqlx_migrations order by version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let embedded: Vec<(i64, bool)> = whizbang_postgres::MIGRATOR
        .iter()
        .map(|m| (m.version, true))
        .collect();
    assert_eq!(applied, embedded);
    assert!(
        embedded.len() >= 4,
        "0001 events, 0002 runner, 0003 queue, 0004 outbox, 0005 queue tick, 0006 sync log, ..: {embedded:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn events_get_increasing_positions_and_defaults(pool: PgPool) {
    whizbang_postgres::migrate(&pool).await.unwrap();

    let first = insert_event(&pool, STREAM_A, 1).await.unwrap();
    let second = insert_event(&pool, STREAM_A, 2).await.unwrap();
    assert!(
        second > first,
        "global_position increases: {first} then {second}"
    );

    let (metadata, recent): (String, bool) = sqlx::query_as(
        "select metadata::text, created_at > now() - interval '1 minute'
           from wh_events where global_position = $1",
    )
    .bind(first)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(metadata, "{}");
    assert!(recent);

    // global_position is generated always: callers cannot choose it.
    let err = sqlx::query(
        "insert into wh_events (global_position, event_id, stream_id, stream_version, event_type, data)
         values (999, gen_random_uuid(), gen_random_uuid(), 1, 'X', '{}')",
    )
    .execute(&pool)
    .await
    .expect_err("explicit global_position is rejected");
    assert_eq!(sqlstate(&err), "428C9"); // generated_always

    // Versions start at 1.
    let err = insert_event(&pool, STREAM_B, 0)
        .await
        .expect_err("version 0 is rejected");
    assert_eq!(sqlstate(&err), "23514"); // check_violation
}

#[sqlx::test(migrations = false)]
async fn duplicate_stream_version_is_rejected(pool: PgPool) {
    whizbang_postgres::migrate(&pool).await.unwrap();

    insert_event(&pool, STREAM_A, 1).await.unwrap();
    let err = insert_event(&pool, STREAM_A, 1)
        .await
        .expect_err("a second event at the same stream version must fail");
    let db_err = err.as_database_error().expect("a database error");
    assert_eq!(db_err.code().as_deref(), Some("23505")); // unique_violation
    assert_eq!(db_err.constraint(), Some("wh_events_stream_version_key"));

    // The same version in another stream, and the next version, are fine.
    insert_event(&pool, STREAM_B, 1).await.unwrap();
    insert_event(&pool, STREAM_A, 2).await.unwrap();

    let count: i64 =
        sqlx::query_scalar("select count(*) from wh_events where stream_id = $1::uuid")
            .bind(STREAM_A)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(count, 2, "the rejected insert left nothing behind");
}

#[sqlx::test(migrations = false)]
async fn cursor_constraints_hold(pool: PgPool) {
    whizbang_postgres::migrate(&pool).await.unwrap();

    let (version, attempts, skipped): (i64, i32, String) = sqlx::query_as(
        "insert into wh_perspective_cursors (perspective, model_key)
         values ('OrderSummary', $1::uuid)
         returning version, attempts, skipped::text",
    )
    .bind(STREAM_A)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((version, attempts, skipped.as_str()), (0, 0, "[]"));

    for (what, sql) in [
        (
            "negative version",
            "update wh_perspective_cursors set version = -1",
        ),
        (
            "failed version without a message",
            "update wh_perspective_cursors set failed_version = 1",
        ),
        (
            "skipped is not an array",
            "update wh_perspective_cursors set skipped = '{}'",
        ),
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(what);
        assert_eq!(sqlstate(&err), "23514", "{what}"); // check_violation
    }

    sqlx::query("update wh_perspective_cursors set failed_version = 1, failure_message = 'boom'")
        .execute(&pool)
        .await
        .expect("a fully described failure is accepted");
}

#[sqlx::test(migrations = false)]
async fn migrate_twice_is_idempotent(pool: PgPool) {
    whizbang_postgres::migrate(&pool).await.expect("first run");
    insert_event(&pool, STREAM_A, 1).await.unwrap();

    whizbang_postgres::migrate(&pool)
        .await
        .expect("second run is a no-op");

    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let embedded = i64::try_from(whizbang_postgres::MIGRATOR.iter().count()).unwrap();
    assert_eq!(applied, embedded, "each migration is recorded once");
    let events: i64 = sqlx::query_scalar("select count(*) from wh_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 1, "data survives a second migrate");
}

#[tokio::test]
async fn connect_failure_names_the_url_without_the_password() {
    // Port 1 on loopback: nothing listens there, so the connection is refused.
    let url = "postgres://whizbang:hunter2@127.0.0.1:1/whizbang";
    let err = whizbang_postgres::connect(url)
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        matches!(err, whizbang_postgres::Error::Connect { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("postgres://whizbang:***@127.0.0.1:1/whizbang"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
}

fn sqlstate(err: &sqlx::Error) -> String {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.into_owned())
        .unwrap_or_else(|| panic!("expected a database error, got {err:?}"))
}

#[tokio::test]
async fn connect_failure_is_reported_promptly() {
    let started = std::time::Instant::now();
    let err = whizbang_postgres::connect("postgres://postgres@127.0.0.1:1/postgres")
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The cause is the socket error, not a pool timeout.
    let source = std::error::Error::source(&err).expect("has a source");
    assert!(
        matches!(
            source.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Io(_))
        ),
        "{source:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn connect_to_the_test_server_works(pool: PgPool) {
    // Connect to the same database the test harness created, by URL.
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for sqlx::test");
    let db: String = sqlx::query_scalar("select current_database()::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    // Swap the database name in DATABASE_URL (keeping any query string).
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url.as_str(), String::new()),
    };
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    let url = format!("{server}/{db}{query}");
    let connected = whizbang_postgres::connect(&url).await.expect("connects");
    whizbang_postgres::migrate(&connected)
        .await
        .expect("migrates through the new pool");
    let tables: i64 =
        sqlx::query_scalar("select count(*) from pg_tables where tablename like 'wh\\_%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(tables, 17);
}

#[sqlx::test(migrations = false)]
async fn a_backend_with_a_schema_migrates_in_it_and_twice_is_idempotent(pool: PgPool) {
    let options = whizbang_postgres::PostgresOptions::default().schema("svc_a");
    let connect = (*pool.connect_options()).clone();
    let pg = whizbang_postgres::Postgres::connect_with_options(connect.clone(), options.clone())
        .await
        .unwrap();
    // Two processes starting at once.
    let again = whizbang_postgres::Postgres::connect_with_options(connect, options)
        .await
        .unwrap();
    let (a, b) = tokio::join!(pg.migrate(), again.migrate());
    a.unwrap();
    b.unwrap();
    pg.migrate().await.expect("a second migrate is a no-op");
    let in_schema: Vec<String> = sqlx::query_scalar(
        "select tablename::text from pg_tables where schemaname = 'svc_a' and tablename like 'wh\\_%' order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(in_schema.len(), 17, "{in_schema:?}");
    let in_public: i64 = sqlx::query_scalar(
        "select count(*) from pg_tables where schemaname = 'public' and tablename like 'wh\\_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_public, 0, "nothing was created outside the schema");
    let applied: i64 = sqlx::query_scalar("select count(*) from svc_a._sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let embedded = i64::try_from(whizbang_postgres::MIGRATOR.iter().count()).unwrap();
    assert_eq!(
        applied, embedded,
        "each migration recorded once, in the schema"
    );
}

-- whizbang initial schema: the event store, its stream heads, per-model
-- perspective cursors and perspective read models. The runner's tables
-- (instances, partition leases, feed checkpoints) come in 0002.

-- The event store. One row per event, append-only (see the trigger below).
create table wh_events (
    -- Global append order. Identity values are allocated at insert time, so
    -- gaps appear after rollbacks and a lower position may commit after a
    -- higher one: never read it as gap-free, and never checkpoint on it alone.
    global_position bigint      generated always as identity,
    -- The appending transaction. A feed reader consumes only rows whose
    -- transaction is older than pg_snapshot_xmin(pg_current_snapshot()),
    -- ordered by (tx_id, global_position): that order never gains a row
    -- behind a checkpoint.
    tx_id           xid8        not null default pg_current_xact_id(),
    -- The stream's partition (wire::partition_of), written by the append.
    partition       smallint    not null check (partition >= 0),
    event_id        uuid        primary key,
    stream_id       uuid        not null,
    -- 1-based version within the stream, gap-free (wh_streams serialises it).
    stream_version  bigint      not null check (stream_version > 0),
    -- Stable registered name, never a Rust type path.
    event_type      text        not null check (event_type <> ''),
    data            jsonb       not null,
    -- {"correlation_id", "causation_id", "timestamp_us", "extra"}.
    metadata        jsonb       not null default '{}'::jsonb
                                check (jsonb_typeof(metadata) = 'object'),
    created_at      timestamptz not null default now(),
    constraint wh_events_global_position_key unique (global_position),
    -- Also serves "read a stream in version order".
    constraint wh_events_stream_version_key unique (stream_id, stream_version)
);

-- The runner's feed scan per leased partition:
-- (tx_id, global_position) > checkpoint and tx_id < snapshot xmin.
create index wh_events_feed_idx on wh_events (partition, tx_id, global_position);

-- "Which events of these types has perspective P not applied?" (sync waits
-- on open-ended filters): an index-only scan per handled type.
create index wh_events_type_idx
    on wh_events (event_type, stream_id, stream_version) include (event_id);

-- Events are immutable: no update or delete path, not even by mistake.
create function wh_events_immutable() returns trigger
    language plpgsql as $$
begin
    raise exception 'wh_events is append-only: % is not allowed', tg_op
        using errcode = 'restrict_violation',
              hint = 'Events are immutable. Append a compensating event instead.';
end;
$$;

create trigger wh_events_no_update_or_delete
    before update or delete on wh_events
    for each statement execute function wh_events_immutable();

-- One row per stream: its head version. An append upserts it
-- (insert .. on conflict do update set version = version + n), which locks
-- the row and so serialises appends per stream without a read-modify-write
-- race, also for ExpectedVersion::Any.
create table wh_streams (
    stream_id  uuid        primary key,
    version    bigint      not null check (version > 0),
    partition  smallint    not null check (partition >= 0),
    updated_at timestamptz not null default now()
);

-- One cursor per (perspective, model). Written only when a perspective
-- commits, never by an append: an append costs the same whatever the
-- number of perspectives. Applied status for sync is derived
-- (event applied <=> version >= its stream_version).
create table wh_perspective_cursors (
    perspective     text        not null check (perspective <> ''),
    -- The model's key: today the stream it folds (see whizbang's ModelKey).
    model_key       uuid        not null,
    -- Highest stream version applied or skipped (0 = none).
    version         bigint      not null default 0 check (version >= 0),
    -- Set when an apply failed: the version and the error.
    failed_version  bigint      check (failed_version > 0),
    failure_message text,
    -- Commits in a row that recorded a failure (0 once it applies again).
    attempts        integer     not null default 0 check (attempts >= 0),
    -- Events an operator skipped: [{version, event_id, reason, failure}].
    skipped         jsonb       not null default '[]'::jsonb
                                check (jsonb_typeof(skipped) = 'array'),
    updated_at      timestamptz not null default now(),
    primary key (perspective, model_key),
    constraint wh_perspective_cursors_failure_pair
        check ((failed_version is null) = (failure_message is null))
);

-- Read models that lenses query, one row per (perspective, model).
create table wh_perspective_rows (
    perspective text        not null check (perspective <> ''),
    model_key   uuid        not null,
    -- The cursor version the model reflects.
    version     bigint      not null check (version >= 0),
    data        jsonb       not null,
    updated_at  timestamptz not null default now(),
    primary key (perspective, model_key)
);

-- Lens containment filters (data @> $1) push down to this index.
create index wh_perspective_rows_data_idx
    on wh_perspective_rows using gin (data jsonb_path_ops);

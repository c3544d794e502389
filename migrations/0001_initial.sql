-- whizbang initial schema: the event store, per-stream perspective cursors and
-- perspective read models. Queue/outbox tables arrive in later migrations.

-- The event store. One row per event, append-only.
create table wh_events (
    -- Global append order for catch-up readers. Identity values are allocated
    -- at insert time, so gaps appear after rollbacks and a lower position may
    -- commit after a higher one: readers must not treat it as gap-free.
    global_position bigint generated always as identity,
    event_id        uuid        primary key,
    stream_id       uuid        not null,
    -- 1-based version within the stream; optimistic concurrency relies on the
    -- unique constraint below.
    stream_version  bigint      not null check (stream_version > 0),
    -- Stable registered name, never a Rust type path.
    event_type      text        not null check (event_type <> ''),
    data            jsonb       not null,
    metadata        jsonb       not null default '{}'::jsonb
                                check (jsonb_typeof(metadata) = 'object'),
    created_at      timestamptz not null default now(),
    constraint wh_events_global_position_key unique (global_position),
    -- Also serves "read a stream in version order" lookups.
    constraint wh_events_stream_version_key unique (stream_id, stream_version)
);

-- One row per (perspective, stream) that has ever had an event the perspective
-- handles; written at append time, which is how the runner finds work.
-- Applied status is derived (event applied <=> applied_version >= its
-- stream_version) rather than kept in a per-event ledger: events apply in
-- stream-version order, so one integer per stream says everything and costs
-- no extra write per event.
create table wh_perspective_cursors (
    perspective      text        not null check (perspective <> ''),
    stream_id        uuid        not null,
    -- Highest stream version this perspective has applied (0 = none).
    applied_version  bigint      not null default 0 check (applied_version >= 0),
    -- Latest stream version appended that this perspective handles.
    target_version   bigint      not null default 0 check (target_version >= 0),
    -- Lease held by a runner instance while it applies this stream.
    lease_owner      uuid,
    lease_expires_at timestamptz,
    status           text        not null default 'active'
                                 check (status in ('active', 'failed')),
    -- Set when status = 'failed': the error and the version that failed.
    error            text,
    failed_version   bigint,
    updated_at       timestamptz not null default now(),
    primary key (perspective, stream_id),
    -- A lease has both an owner and an expiry, or neither.
    constraint wh_perspective_cursors_lease_pair
        check ((lease_owner is null) = (lease_expires_at is null)),
    -- A failed cursor always says why and where.
    constraint wh_perspective_cursors_failed_details
        check (status <> 'failed' or (error is not null and failed_version is not null))
);

-- The runner's work query: active cursors behind their target, per perspective,
-- whose lease is free or expired. Partial, so it only holds pending work.
create index wh_perspective_cursors_pending_idx
    on wh_perspective_cursors (perspective, lease_expires_at nulls first)
    where applied_version < target_version and status = 'active';

-- Read models that lenses query, one row per (perspective, model id).
create table wh_perspective_rows (
    perspective text        not null check (perspective <> ''),
    id          uuid        not null,
    data        jsonb       not null,
    -- Stream version of the last event folded into this row.
    version     bigint      not null check (version >= 0),
    updated_at  timestamptz not null default now(),
    primary key (perspective, id)
);

-- whizbang runner schema: the processes that run perspectives, the
-- partitions each leases, and how far each perspective has read the event
-- feed of each partition.

-- One row per runner process. A process is live while its heartbeat is
-- younger than the lease duration; it deletes its row on a clean shutdown.
create table wh_instances (
    instance_id  uuid        primary key,
    -- The perspectives this process runs: the fair share of each
    -- perspective's partitions is counted among the live processes that run
    -- it, so a perspective only a newer build has is still run everywhere.
    perspectives text[]      not null default '{}',
    started_at   timestamptz not null default now(),
    heartbeat_at timestamptz not null default now()
);

-- Who runs perspective P on partition N. One row per (perspective,
-- partition), created by the first process that runs P. The fence is bumped
-- on every change of owner (take-over, release), so a statement fenced on
-- (owner, fence) by a process that lost the lease changes nothing.
create table wh_partition_leases (
    perspective text        not null check (perspective <> ''),
    partition   smallint    not null check (partition >= 0),
    owner       uuid,
    fence       bigint      not null default 0 check (fence >= 0),
    expires_at  timestamptz not null default '-infinity',
    primary key (perspective, partition)
);

-- "My leases" (renewal, release on shutdown).
create index wh_partition_leases_owner_idx on wh_partition_leases (owner);

-- How far perspective P has consumed partition N's feed: the last
-- (tx_id, global_position) read. The feed is wh_events in that order
-- restricted to transactions older than pg_snapshot_xmin, so no row can
-- appear behind a checkpoint. A perspective without a row starts at the
-- beginning, so one registered after events exist catches up over them.
create table wh_feed_checkpoints (
    perspective     text        not null check (perspective <> ''),
    partition       smallint    not null check (partition >= 0),
    tx_id           xid8        not null,
    global_position bigint      not null,
    updated_at      timestamptz not null default now(),
    primary key (perspective, partition)
);

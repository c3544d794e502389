-- The sync log: one row per explicit sync run (and any other run recorded
-- through whizbang's SyncLog hook: a strategy's, a rebuild), newest kept.
-- Written after the run, outside its transactions; pruned on each insert to
-- the retention the backend is configured with (a number of rows and/or an
-- age), so the table stays small.
create table wh_sync_log (
    id          bigint      generated always as identity primary key,
    perspective text        not null check (perspective <> ''),
    -- streams, all, full_streams, full_all (or another run's kind).
    mode        text        not null check (mode <> ''),
    -- What the run covered, in short: the first streams named and how many,
    -- or 'all streams'.
    target      text        not null,
    started_at  timestamptz not null,
    duration_us bigint      not null check (duration_us >= 0),
    applied     bigint      not null check (applied >= 0),
    skipped     bigint      not null check (skipped >= 0),
    failed      bigint      not null check (failed >= 0),
    -- succeeded, partially_failed, failed.
    outcome     text        not null,
    -- Why the run failed as a whole.
    error       text
);

-- For pruning by age (reads and the row retention go by id, the insert order).
create index wh_sync_log_started_at_idx on wh_sync_log (started_at desc, id desc);

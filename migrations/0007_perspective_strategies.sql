-- What each perspective's strategy is, as the runner that runs it declared
-- it at start: the operator tool cannot see the user's code. One row per
-- perspective, overwritten by every runner start (the newest build's
-- declaration wins).
create table wh_perspective_strategies (
    perspective text        primary key check (perspective <> ''),
    -- 'inline' or 'async'.
    mode        text        not null check (mode in ('inline', 'async')),
    -- As SyncStrategy::describe reads it: 'realtime', 'batch(100, 50ms)',
    -- 'scheduled(5s)', or a custom strategy's own text.
    strategy    text        not null check (strategy <> '' and octet_length(strategy) <= 200),
    -- The instance that wrote it last.
    declared_by uuid        not null,
    updated_at  timestamptz not null default now()
);

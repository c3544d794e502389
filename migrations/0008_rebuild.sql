-- whizbang rebuilds beside live and the operator's requests: the version of
-- the apply code each perspective's live models were built with, the
-- progress of each perspective's rebuild, and the sync/rebuild requests the
-- `whizbang` command line writes for a running service to carry out.

-- One row per perspective: the `#[perspective(version = N)]` its live models
-- were built with. Written at a first start (no rebuild needed) and by the
-- swap that ends a rebuild, in the swap's transaction.
create table wh_perspective_versions (
    perspective text        primary key check (perspective <> ''),
    version     integer     not null check (version >= 1),
    updated_at  timestamptz not null default now()
);

-- One row per perspective rebuilt (or being rebuilt): the version it is
-- rebuilt to and how far it got, readable by any process. The shadow
-- generation itself lives in wh_perspective_cursors / wh_perspective_rows
-- under the name '<perspective>~rebuild'; its cursors are what a resumed
-- rebuild starts from. The process that runs a rebuild holds a session
-- advisory lock on the perspective's name for as long as it runs, so a
-- killed process's rebuild is taken over at once.
create table wh_rebuilds (
    perspective  text             primary key check (perspective <> ''),
    version      integer          not null check (version >= 1),
    phase        text             not null
                                  check (phase in ('starting', 'building', 'swapping', 'done', 'failed')),
    -- Events the shadow reflects, out of the events of the streams covered.
    done         bigint           not null default 0 check (done >= 0),
    total        bigint           not null default 0 check (total >= 0),
    -- Events folded per second by the current run; time left at that rate.
    rate         double precision not null default 0,
    eta_ms       bigint,
    -- Events the shadow already reflected when the current run started.
    resumed_from bigint           not null default 0,
    error        text,
    started_at   timestamptz      not null default now(),
    updated_at   timestamptz      not null default now()
);

-- Work the command line asks of a running service ('sync': catch the
-- perspective up to the head now; 'rebuild': rebuild it beside live). A
-- service that runs the perspective claims a request (FOR UPDATE SKIP
-- LOCKED, a lease it renews while it works) and reports progress and the
-- outcome here; the command line polls the row. A NOTIFY on the channel
-- wh_channel('wh_requests') wakes the services.
create table wh_operator_requests (
    request_id       uuid             primary key,
    kind             text             not null check (kind in ('sync', 'rebuild')),
    perspective      text             not null check (perspective <> ''),
    status           text             not null default 'requested'
                                      check (status in ('requested', 'running', 'done', 'failed')),
    owner            uuid,
    lease_expires_at timestamptz,
    done             bigint           not null default 0 check (done >= 0),
    total            bigint           not null default 0 check (total >= 0),
    rate             double precision not null default 0,
    eta_ms           bigint,
    error            text,
    requested_at     timestamptz      not null default now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz      not null default now(),
    constraint wh_operator_requests_failed_has_error
        check ((status = 'failed') = (error is not null))
);

-- "The open requests", oldest first.
create index wh_operator_requests_open_idx
    on wh_operator_requests (requested_at) where status in ('requested', 'running');

-- whizbang outbox: one row per outbound event (`#[event(publish)]`),
-- written by the event store in the append's own transaction, so a row
-- exists exactly when its event committed. Outbox publishers lease rows
-- (SKIP LOCKED, a lease owner and an expiry, attempts counted), publish them
-- through a transport, mark them published, retry a failed publish after a
-- backoff and dead-letter a row past the attempt limit.
create table wh_outbox (
    -- The event's id: the message id the receiving inbox deduplicates on.
    message_id     uuid        primary key,
    -- The event's stable wire name.
    message_type   text        not null
                               check (message_type <> '' and octet_length(message_type) <= 255),
    payload        jsonb       not null,
    correlation_id uuid        not null,
    causation_id   uuid,
    headers        jsonb       not null default '{}'::jsonb
                               check (jsonb_typeof(headers) = 'object'),
    -- The event's timestamp.
    enqueued_at    timestamptz not null,
    -- Where the event sits (for the outbox lifecycle stages' receptors).
    stream_id      uuid        not null,
    stream_version bigint      not null check (stream_version > 0),
    -- 'pending' until published or dead. A pending row with a lease_owner is
    -- leased until available_at; without one it waits until available_at
    -- (its backoff after a failed publish).
    status         text        not null default 'pending'
                               check (status in ('pending', 'published', 'dead')),
    lease_owner    uuid,
    available_at   timestamptz not null default now(),
    -- Leases granted so far, take-overs of expired leases included.
    attempts       integer     not null default 0 check (attempts >= 0),
    last_error     text,
    published_at   timestamptz,
    dead_at        timestamptz,
    constraint wh_outbox_owner_only_pending
        check (lease_owner is null or status = 'pending')
);

-- "The next rows to publish", read with FOR UPDATE SKIP LOCKED.
create index wh_outbox_pending_idx on wh_outbox (available_at, message_id)
    where status = 'pending';

-- Dead letters, oldest first; published rows by age (for pruning).
create index wh_outbox_dead_idx on wh_outbox (dead_at, message_id) where status = 'dead';
create index wh_outbox_published_idx on wh_outbox (published_at) where status = 'published';

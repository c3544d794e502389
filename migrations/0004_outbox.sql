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

-- The NOTIFY channel `base` in this schema: `base` in `public`, and
-- `base.<schema>` in any other, so services sharing a database in their own
-- schemas do not wake (or mislead) each other. The Rust side names the
-- channels by the same rule from the schema it set (`search_path`).
create function wh_channel(base text) returns text
    language sql stable
    as $$ select case when current_schema() = 'public' then base
                      else base || '.' || current_schema() end $$;

-- Enqueue a message delivered by another service's transport, waiting for
-- this schema's inbox workers (not leased), atomically and idempotently by
-- its id. Answers 'queued' (stored now), 'exists' (the id waits or is
-- leased), 'processed' or 'dead'. Wakes this schema's queue workers when it
-- stored the message.
--
-- `set search_path from current` pins the schema the migration ran in, so
-- a caller whose session is in another schema (service A's transport
-- delivering into service B's inbox) reaches B's tables. Like
-- wh_enqueue_and_lease, it checks for a processed record or dead letter
-- again after its insert, in a new snapshot.
create function wh_enqueue(
    p_message_id     uuid,
    p_message_type   text,
    p_payload        jsonb,
    p_correlation_id uuid,
    p_causation_id   uuid,
    p_headers        jsonb,
    p_enqueued_at    timestamptz
) returns text
    language plpgsql volatile
    set search_path from current
    as $$
declare
    v_inserted boolean;
begin
    if exists (select 1 from wh_processed_messages p where p.message_id = p_message_id) then
        return 'processed';
    end if;
    if exists (select 1 from wh_dead_letters d where d.message_id = p_message_id) then
        return 'dead';
    end if;
    insert into wh_message_queue as q
        (message_id, message_type, payload, correlation_id, causation_id, headers,
         enqueued_at, status, lease_owner, available_at, attempts)
    values
        (p_message_id, p_message_type, p_payload, p_correlation_id, p_causation_id, p_headers,
         p_enqueued_at, 'queued', null, now(), 0)
    on conflict (message_id) do nothing
    returning true into v_inserted;
    if v_inserted is null then
        return 'exists';
    end if;
    if exists (select 1 from wh_processed_messages p where p.message_id = p_message_id) then
        delete from wh_message_queue q where q.message_id = p_message_id;
        return 'processed';
    end if;
    if exists (select 1 from wh_dead_letters d where d.message_id = p_message_id) then
        delete from wh_message_queue q where q.message_id = p_message_id;
        return 'dead';
    end if;
    perform pg_notify(wh_channel('wh_queue'), '');
    return 'queued';
end;
$$;

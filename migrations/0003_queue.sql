-- whizbang message queue: the messages waiting or leased, the record of
-- those processed (idempotency), and the dead letters. The inbox and the
-- outbox are built on these. A message id is in at most one of the three
-- tables at any time; wh_enqueue_and_lease keeps it so under concurrency.

-- The messages waiting for a lease or leased, one row per message id.
create table wh_message_queue (
    message_id     uuid        primary key,
    -- The message's stable wire name, never a Rust type path.
    message_type   text        not null
                               check (message_type <> '' and octet_length(message_type) <= 255),
    payload        jsonb       not null,
    correlation_id uuid        not null,
    causation_id   uuid,
    headers        jsonb       not null default '{}'::jsonb
                               check (jsonb_typeof(headers) = 'object'),
    -- When the sender first enqueued it.
    enqueued_at    timestamptz not null,
    -- 'leased' while an instance holds it (lease_owner set), 'queued' while
    -- it waits (after a failed attempt, a release or a replay).
    status         text        not null check (status in ('queued', 'leased')),
    lease_owner    uuid,
    -- Leased: when the lease expires (another instance may then take the
    -- message over). Queued: since when it may be leased. Either way the
    -- message is leasable once available_at <= now().
    available_at   timestamptz not null,
    -- Leases granted so far, take-overs of expired leases included (a
    -- release gives one back). At the limit the message goes to
    -- wh_dead_letters instead of being leased again.
    attempts       integer     not null default 0 check (attempts >= 0),
    -- The error of the last failed attempt.
    last_error     text,
    constraint wh_message_queue_owner_iff_leased
        check ((status = 'leased') = (lease_owner is not null))
);

-- "The next leasable messages": available_at <= now() ordered by
-- available_at, read with FOR UPDATE SKIP LOCKED so concurrent instances
-- take disjoint batches. Not a partial index: every row of this table is a
-- candidate once its time comes (the processed and dead messages live in
-- their own tables), and a predicate on now() cannot be indexed.
create index wh_message_queue_available_idx on wh_message_queue (available_at, message_id);

-- One row per processed message, kept for the retention window so a
-- redelivered id is refused; deleted in batches by age.
create table wh_processed_messages (
    message_id   uuid        primary key,
    -- The handler (consumer) that processed it.
    handler      text        not null check (handler <> ''),
    processed_at timestamptz not null default now()
);

-- Pruning by age, oldest first.
create index wh_processed_messages_processed_at_idx
    on wh_processed_messages (processed_at);

-- Messages that used up their attempts, with the last error. A replay
-- moves one back to wh_message_queue.
create table wh_dead_letters (
    message_id     uuid        primary key,
    message_type   text        not null,
    payload        jsonb       not null,
    correlation_id uuid        not null,
    causation_id   uuid,
    headers        jsonb       not null default '{}'::jsonb,
    enqueued_at    timestamptz not null,
    attempts       integer     not null check (attempts >= 0),
    error          text        not null,
    dead_at        timestamptz not null default now()
);

-- Listing, oldest first.
create index wh_dead_letters_dead_at_idx on wh_dead_letters (dead_at, message_id);

-- Enqueue a message and lease it to p_owner, atomically and idempotently by
-- its id. Answers 'leased' (with the lease's expiry), 'queued' (the id waits
-- or is leased), 'processed' or 'dead'.
--
-- Why a function and not one statement: a statement sees one snapshot. If a
-- complete of the same id (delete from the queue, insert the processed
-- record) commits while our insert waits on its row, one statement would
-- insert the id again and lease a processed message. Here the insert waits
-- for that transaction, and the check after it runs in a new snapshot
-- (READ COMMITTED, a volatile function), which sees the processed record or
-- dead letter and takes the insert back. One round trip still.
create function wh_enqueue_and_lease(
    p_message_id     uuid,
    p_message_type   text,
    p_payload        jsonb,
    p_correlation_id uuid,
    p_causation_id   uuid,
    p_headers        jsonb,
    p_enqueued_at    timestamptz,
    p_owner          uuid,
    p_lease          interval
) returns table (outcome text, lease_expires_at timestamptz)
    language plpgsql volatile as $$
declare
    v_expires timestamptz;
begin
    -- The common redelivery answer, without touching the queue.
    if exists (select 1 from wh_processed_messages p where p.message_id = p_message_id) then
        return query select 'processed'::text, null::timestamptz;
        return;
    end if;
    if exists (select 1 from wh_dead_letters d where d.message_id = p_message_id) then
        return query select 'dead'::text, null::timestamptz;
        return;
    end if;

    insert into wh_message_queue as q
        (message_id, message_type, payload, correlation_id, causation_id, headers,
         enqueued_at, status, lease_owner, available_at, attempts)
    values
        (p_message_id, p_message_type, p_payload, p_correlation_id, p_causation_id, p_headers,
         p_enqueued_at, 'leased', p_owner, now() + p_lease, 1)
    on conflict (message_id) do nothing
    returning q.available_at into v_expires;
    if v_expires is null then
        return query select 'queued'::text, null::timestamptz;
        return;
    end if;

    -- A new snapshot: a complete or dead-lettering of this id that committed
    -- while the insert waited is visible now.
    if exists (select 1 from wh_processed_messages p where p.message_id = p_message_id) then
        delete from wh_message_queue q where q.message_id = p_message_id;
        return query select 'processed'::text, null::timestamptz;
        return;
    end if;
    if exists (select 1 from wh_dead_letters d where d.message_id = p_message_id) then
        delete from wh_message_queue q where q.message_id = p_message_id;
        return query select 'dead'::text, null::timestamptz;
        return;
    end if;
    return query select 'leased'::text, v_expires;
end;
$$;

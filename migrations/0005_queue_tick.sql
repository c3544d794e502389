-- One round trip per queue worker tick: wh_queue_tick records a worker's
-- completions and failures, renews its leases, leases new messages and
-- measures the lag, in that order, in one call. An idle worker's tick is
-- one cheap call (an index probe for leasable rows).
--
-- Why a function and not one statement: each step must see the ones before
-- it (a message failed with no backoff is leasable again; a renewed lease
-- is not taken over by the lease step), and a statement's data-modifying
-- parts all see one snapshot. Each step's statement here sees the previous
-- ones. The steps only touch rows p_owner holds (or leasable ones, SKIP
-- LOCKED), so a concurrent tick of another instance never blocks on them.
--
-- Answers one row per outcome, kind:
--   'completed' message_id                 removed, recorded processed
--   'retry'     message_id, attempts, at   waits again until `at` (backoff)
--   'dead'      message_id, attempts       moved to the dead letters
--   'renewed'   message_id, at             lease extended to `at`
--   'leased'    the message, attempts, at  newly leased until `at`
--   'lag'       depth, at                  leasable messages (counted up to
--                                          p_lag_cap) and the oldest one's
--                                          available time (null when none)
-- Ids of p_complete, p_fail and p_renew that p_owner does not hold are left
-- out (the caller answers them lost); nothing is changed for them.
create function wh_queue_tick(
    p_owner            uuid,
    p_complete         uuid[],
    p_handlers         text[],
    p_fail             uuid[],
    p_errors           text[],
    p_renew            uuid[],
    p_lease            interval,
    p_max              integer,
    p_attempt_limit    integer,
    p_backoff_base     interval,
    p_backoff_cap      interval,
    p_expired_before   text,
    p_expired_after    text,
    p_lag_cap          integer
) returns table (
    kind           text,
    message_id     uuid,
    attempts       integer,
    at             timestamptz,
    message_type   text,
    payload        text,
    correlation_id uuid,
    causation_id   uuid,
    headers        text,
    enqueued_at    timestamptz,
    last_error     text,
    depth          bigint
)
    language plpgsql volatile as $$
#variable_conflict use_column
begin
    if cardinality(p_complete) > 0 then
        return query
        with done as (
            delete from wh_message_queue q
             using unnest(p_complete, p_handlers) as c(id, handler)
             where q.message_id = c.id and q.lease_owner = p_owner
            returning q.message_id, c.handler
        ), recorded as (
            insert into wh_processed_messages (message_id, handler, processed_at)
            select d.message_id, d.handler, now() from done d
            on conflict (message_id) do update
                set handler = excluded.handler, processed_at = excluded.processed_at
        )
        select 'completed'::text, d.message_id, null::integer, null::timestamptz,
               null::text, null::text, null::uuid, null::uuid, null::text,
               null::timestamptz, null::text, null::bigint
          from done d;
    end if;

    if cardinality(p_fail) > 0 then
        return query
        with held as materialized (
            select q.message_id, q.attempts, f.error
              from wh_message_queue q
              join unnest(p_fail, p_errors) as f(id, error) on q.message_id = f.id
             where q.lease_owner = p_owner
               for update of q
        ), dead as (
            delete from wh_message_queue q
             using held h
             where q.message_id = h.message_id and h.attempts >= p_attempt_limit
            returning q.*, h.error as failure
        ), buried as (
            insert into wh_dead_letters
                (message_id, message_type, payload, correlation_id, causation_id, headers,
                 enqueued_at, attempts, error, dead_at)
            select d.message_id, d.message_type, d.payload, d.correlation_id, d.causation_id,
                   d.headers, d.enqueued_at, d.attempts, d.failure, now()
              from dead d
        ), retry as (
            update wh_message_queue q
               set status = 'queued', lease_owner = null, last_error = h.error,
                   available_at = now() + least(
                       p_backoff_cap,
                       p_backoff_base * power(2::float8, least(greatest(h.attempts - 1, 0), 40)))
              from held h
             where q.message_id = h.message_id and h.attempts < p_attempt_limit
            returning q.message_id, q.attempts, q.available_at
        )
        select 'retry'::text, r.message_id, r.attempts, r.available_at,
               null::text, null::text, null::uuid, null::uuid, null::text,
               null::timestamptz, null::text, null::bigint
          from retry r
        union all
        select 'dead'::text, d.message_id, d.attempts, null::timestamptz,
               null::text, null::text, null::uuid, null::uuid, null::text,
               null::timestamptz, null::text, null::bigint
          from dead d;
    end if;

    if cardinality(p_renew) > 0 then
        return query
        update wh_message_queue q
           set available_at = now() + p_lease
         where q.message_id = any(p_renew) and q.lease_owner = p_owner
        returning 'renewed'::text, q.message_id, q.attempts, q.available_at,
                  null::text, null::text, null::uuid, null::uuid, null::text,
                  null::timestamptz, null::text, null::bigint;
    end if;

    if p_max > 0 then
        return query
        with candidates as materialized (
            select q.message_id
              from wh_message_queue q
             where q.available_at <= now()
             order by q.available_at, q.message_id
             limit p_max
               for update skip locked
        ), dead as (
            delete from wh_message_queue q
             using candidates c
             where q.message_id = c.message_id and q.attempts >= p_attempt_limit
            returning q.*
        ), buried as (
            insert into wh_dead_letters
                (message_id, message_type, payload, correlation_id, causation_id, headers,
                 enqueued_at, attempts, error, dead_at)
            select d.message_id, d.message_type, d.payload, d.correlation_id, d.causation_id,
                   d.headers, d.enqueued_at, d.attempts,
                   case when d.status = 'queued' and d.last_error is not null then d.last_error
                        else p_expired_before || d.attempts::text || p_expired_after end,
                   now()
              from dead d
        ), leased as (
            update wh_message_queue q
               set status = 'leased',
                   lease_owner = p_owner,
                   available_at = now() + p_lease,
                   attempts = q.attempts + 1
              from candidates c
             where q.message_id = c.message_id and q.attempts < p_attempt_limit
            returning q.*
        )
        select 'leased'::text, l.message_id, l.attempts, l.available_at,
               l.message_type, l.payload::text, l.correlation_id, l.causation_id,
               l.headers::text, l.enqueued_at, l.last_error, null::bigint
          from leased l
         order by l.available_at, l.message_id;
    end if;

    if p_lag_cap > 0 then
        return query
        select 'lag'::text, null::uuid, null::integer, min(s.available_at),
               null::text, null::text, null::uuid, null::uuid, null::text,
               null::timestamptz, null::text, count(*)
          from (select q.available_at
                  from wh_message_queue q
                 where q.available_at <= now()
                 order by q.available_at
                 limit p_lag_cap) s;
    end if;
end;
$$;

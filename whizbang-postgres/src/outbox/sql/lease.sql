-- $1 owner, $2 max, $3 lease (µs), $4 attempt limit, $5 and $6 the text
-- around the attempt count of the error a row gets when its last lease
-- expired. Takes up to $2 pending rows whose time came (waiting, or leased
-- and expired) with SKIP LOCKED; those already at the attempt limit are
-- dead-lettered, the others leased to $1.
with candidates as materialized (
    select message_id
      from wh_outbox
     where status = 'pending' and available_at <= now()
     order by available_at, message_id
     limit $2
       for update skip locked
), dead as (
    update wh_outbox o
       set status = 'dead',
           dead_at = now(),
           last_error = case when o.lease_owner is null and o.last_error is not null
                             then o.last_error
                             else $5::text || o.attempts::text || $6::text end,
           lease_owner = null
      from candidates c
     where o.message_id = c.message_id and o.attempts >= $4
    returning o.message_id
), leased as (
    update wh_outbox o
       set lease_owner = $1,
           available_at = now() + $3 * interval '1 microsecond',
           attempts = o.attempts + 1
      from candidates c
     where o.message_id = c.message_id and o.attempts < $4
    returning o.*
)
select message_id, message_type, payload::text as payload, correlation_id, causation_id,
       headers::text as headers,
       (extract(epoch from enqueued_at) * 1000000)::int8 as enqueued_us,
       attempts,
       (extract(epoch from available_at) * 1000000)::int8 as lease_expires_us,
       last_error, stream_id, stream_version
  from leased
 order by available_at, message_id

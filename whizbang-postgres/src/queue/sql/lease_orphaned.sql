-- $1 owner, $2 max, $3 lease (µs), $4 attempt limit, $5 and $6 the text
-- around the attempt count of the error a dead letter gets when its last
-- lease expired.
-- Takes up to $2 messages that wait or whose lease expired (SKIP LOCKED:
-- concurrent callers take disjoint batches); those already at the attempt
-- limit go to the dead letters, the others are leased to $1.
with candidates as materialized (
    select message_id
      from wh_message_queue
     where available_at <= now()
     order by available_at, message_id
     limit $2
       for update skip locked
), dead as (
    delete from wh_message_queue q
     using candidates c
     where q.message_id = c.message_id and q.attempts >= $4
    returning q.*
), buried as (
    insert into wh_dead_letters
        (message_id, message_type, payload, correlation_id, causation_id, headers,
         enqueued_at, attempts, error, dead_at)
    select message_id, message_type, payload, correlation_id, causation_id, headers,
           enqueued_at, attempts,
           case when status = 'queued' and last_error is not null then last_error
                else $5::text || attempts::text || $6::text end,
           now()
      from dead
), leased as (
    update wh_message_queue q
       set status = 'leased',
           lease_owner = $1,
           available_at = now() + $3 * interval '1 microsecond',
           attempts = q.attempts + 1
      from candidates c
     where q.message_id = c.message_id and q.attempts < $4
    returning q.*
)
select message_id, message_type, payload::text as payload, correlation_id, causation_id,
       headers::text as headers,
       (extract(epoch from enqueued_at) * 1000000)::int8 as enqueued_us,
       attempts,
       (extract(epoch from available_at) * 1000000)::int8 as lease_expires_us,
       last_error
  from leased
 order by available_at, message_id

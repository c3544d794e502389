-- $1 message id, $2 owner, $3 error, $4 attempt limit, $5 and $6 the retry
-- backoff's base and cap (µs). Below the limit the message waits again with
-- the error, leasable after base * 2^(attempts - 1) (at most the cap); at the
-- limit it moves to the dead letters. No row back means $2 does not hold the lease (nothing changed).
with held as materialized (
    select message_id, attempts
      from wh_message_queue
     where message_id = $1 and lease_owner = $2
       for update
), dead as (
    delete from wh_message_queue q
     using held h
     where q.message_id = h.message_id and h.attempts >= $4
    returning q.*
), buried as (
    insert into wh_dead_letters
        (message_id, message_type, payload, correlation_id, causation_id, headers,
         enqueued_at, attempts, error, dead_at)
    select message_id, message_type, payload, correlation_id, causation_id, headers,
           enqueued_at, attempts, $3, now()
      from dead
), retry as (
    update wh_message_queue q
       set status = 'queued', lease_owner = null, last_error = $3,
           available_at = now() + least(
               $6::float8, $5::float8 * power(2::float8, least(greatest(h.attempts - 1, 0), 40)))
               * interval '1 microsecond'
      from held h
     where q.message_id = h.message_id and h.attempts < $4
)
select attempts from held

-- $1 message ids. Moves those in the dead letters back to the queue, waiting,
-- attempts at zero, the error kept as the last error. Answers the ids moved.
with moved as (
    delete from wh_dead_letters
     where message_id = any($1)
    returning *
), queued as (
    insert into wh_message_queue
        (message_id, message_type, payload, correlation_id, causation_id, headers,
         enqueued_at, status, lease_owner, available_at, attempts, last_error)
    select message_id, message_type, payload, correlation_id, causation_id, headers,
           enqueued_at, 'queued', null, now(), 0, error
      from moved
    returning message_id
)
select message_id from queued

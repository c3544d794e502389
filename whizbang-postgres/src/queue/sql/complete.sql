-- $1 message id, $2 owner, $3 handler. Removes the message $2 holds and
-- records it processed, in one statement; no row back means $2 does not hold
-- the lease (nothing changed).
with done as (
    delete from wh_message_queue
     where message_id = $1 and lease_owner = $2
    returning message_id
), recorded as (
    insert into wh_processed_messages (message_id, handler, processed_at)
    select message_id, $3, now() from done
    on conflict (message_id) do update
        set handler = excluded.handler, processed_at = excluded.processed_at
)
select message_id from done

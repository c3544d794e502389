-- $1 message ids (distinct), $2 owner. Gives every lease back, or none: only
-- when $2 holds all of them. A released lease gives its attempt back.
-- Answers the ids $2 holds.
with held as materialized (
    select message_id
      from wh_message_queue
     where message_id = any($1) and lease_owner = $2
       for update
), released as (
    update wh_message_queue q
       set status = 'queued', lease_owner = null, available_at = now(),
           attempts = greatest(q.attempts - 1, 0)
      from held h
     where q.message_id = h.message_id
       and (select count(*) from held) = cardinality($1)
)
select array(select message_id from held) as held

-- $1 message ids (distinct), $2 owner, $3 lease (µs). Renews every lease or
-- none: only when $2 holds all of them. Answers the ids $2 holds and the new
-- expiry.
with held as materialized (
    select message_id
      from wh_message_queue
     where message_id = any($1) and lease_owner = $2
       for update
), renewed as (
    update wh_message_queue q
       set available_at = now() + $3 * interval '1 microsecond'
      from held h
     where q.message_id = h.message_id
       and (select count(*) from held) = cardinality($1)
)
select array(select message_id from held) as held,
       (extract(epoch from now() + $3 * interval '1 microsecond') * 1000000)::int8
           as lease_expires_us

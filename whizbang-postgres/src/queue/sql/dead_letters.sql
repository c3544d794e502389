-- $1 max. The oldest dead letters first.
select message_id, message_type, payload::text as payload, correlation_id, causation_id,
       headers::text as headers,
       (extract(epoch from enqueued_at) * 1000000)::int8 as enqueued_us,
       attempts, error,
       (extract(epoch from dead_at) * 1000000)::int8 as dead_us
  from wh_dead_letters
 order by dead_at, message_id
 limit $1

-- $1 max. Dead rows, oldest first.
select message_id, message_type, payload::text as payload, correlation_id, causation_id,
       headers::text as headers,
       (extract(epoch from enqueued_at) * 1000000)::int8 as enqueued_us,
       attempts, coalesce(last_error, '') as error,
       (extract(epoch from dead_at) * 1000000)::int8 as dead_us
  from wh_outbox
 where status = 'dead'
 order by dead_at, message_id
 limit $1

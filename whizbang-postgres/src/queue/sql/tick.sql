-- One worker tick (see wh_queue_tick in 0005_queue_tick.sql): $1 owner,
-- $2/$3 completions (ids, handlers), $4/$5 failures (ids, errors), $6
-- renewals, $7 lease (µs), $8 how many to lease, $9 attempt limit, $10/$11
-- retry backoff base and cap (µs), $12/$13 the text around the attempt count
-- of an expired lease's dead letter, $14 the lag count cap (0: no lag).
select kind, message_id, attempts,
       (extract(epoch from at) * 1000000)::int8 as at_us,
       message_type, payload, correlation_id, causation_id, headers,
       (extract(epoch from enqueued_at) * 1000000)::int8 as enqueued_us,
       last_error, depth,
       (extract(epoch from now()) * 1000000)::int8 as now_us
  from wh_queue_tick($1, $2, $3, $4, $5, $6, $7 * interval '1 microsecond', $8::int4, $9,
                     $10 * interval '1 microsecond', $11 * interval '1 microsecond',
                     $12, $13, $14::int4)

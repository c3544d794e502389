-- $1 message id, $2 type, $3 payload (JSON text), $4 correlation id,
-- $5 causation id, $6 headers (JSON text), $7 enqueued at (µs since the
-- epoch), $8 owner, $9 lease (µs). See wh_enqueue_and_lease in 0003_queue.sql.
select outcome,
       (extract(epoch from lease_expires_at) * 1000000)::int8 as lease_expires_us
  from wh_enqueue_and_lease($1, $2, $3::jsonb, $4, $5, $6::jsonb,
                            'epoch'::timestamptz + $7 * interval '1 microsecond',
                            $8, $9 * interval '1 microsecond')

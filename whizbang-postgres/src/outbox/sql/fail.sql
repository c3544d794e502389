-- $1 message id, $2 owner, $3 error, $4 attempt limit, $5 backoff (µs).
-- Below the limit the row waits $5 before another lease; at the limit it is
-- dead. Returns the attempts; no row back: $2 does not hold the lease.
update wh_outbox
   set last_error = $3,
       lease_owner = null,
       status = case when attempts >= $4 then 'dead' else 'pending' end,
       dead_at = case when attempts >= $4 then now() end,
       available_at = now() + $5 * interval '1 microsecond'
 where message_id = $1 and lease_owner = $2 and status = 'pending'
returning attempts

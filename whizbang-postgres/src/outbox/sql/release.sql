-- $1 message ids, $2 owner. Gives back the leases $2 holds (and their
-- attempts): the rows can be leased at once. Others are left alone.
update wh_outbox
   set lease_owner = null, available_at = now(), attempts = greatest(attempts - 1, 0)
 where message_id = any($1) and lease_owner = $2 and status = 'pending'

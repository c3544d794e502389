-- $1 message id, $2 owner. No row back: $2 does not hold the lease (it was
-- taken over, or the row is no longer pending); nothing changed.
update wh_outbox
   set status = 'published', lease_owner = null, published_at = now()
 where message_id = $1 and lease_owner = $2 and status = 'pending'
returning message_id

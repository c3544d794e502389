-- $1 message (event) id.
select status, attempts, last_error from wh_outbox where message_id = $1

-- $1 message id. Its processed record, if kept.
select handler, (extract(epoch from processed_at) * 1000000)::int8 as processed_us
  from wh_processed_messages
 where message_id = $1

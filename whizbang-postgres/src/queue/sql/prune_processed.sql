-- $1 retention window (µs), $2 batch. Deletes up to $2 processed records
-- older than the window, oldest first (SKIP LOCKED: concurrent pruners take
-- disjoint batches).
with old as (
    select message_id
      from wh_processed_messages
     where processed_at < now() - $1 * interval '1 microsecond'
     order by processed_at
     limit $2
       for update skip locked
)
delete from wh_processed_messages p
 using old
 where p.message_id = old.message_id

-- $1 age (µs), $2 batch. Deletes up to $2 rows published before now() - $1,
-- oldest first; returns how many.
with gone as (
    delete from wh_outbox
     where message_id in (
         select message_id from wh_outbox
          where status = 'published'
            and published_at < now() - $1 * interval '1 microsecond'
          order by published_at
          limit $2)
    returning 1
)
select count(*)::int8 from gone

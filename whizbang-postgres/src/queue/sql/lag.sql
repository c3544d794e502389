-- $1 the count cap. The messages leasable now (counted up to $1) and how long
-- the oldest has been leasable (µs), through wh_message_queue_available_idx.
select count(*) as depth,
       coalesce((extract(epoch from now() - min(s.available_at)) * 1000000)::int8, 0) as oldest_us
  from (select available_at
          from wh_message_queue
         where available_at <= now()
         order by available_at
         limit $1) s

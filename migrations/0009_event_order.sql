-- The global order keyed (multi-stream) perspectives consume with one
-- cursor each: wh_events in the feed's safe order ((tx_id, global_position),
-- only transactions below the snapshot xmin horizon, see 0001), numbered
-- without gaps. A sequencer appends to it under an exclusive lock (readers
-- never wait): the events after the last numbered one, below the horizon,
-- in feed order, numbered from the last number on. Every transaction below
-- the horizon has ended, so no event can later join the order behind a
-- number already given, and a cursor on feed_seq never misses one.
create table wh_event_order (
    feed_seq        bigint primary key check (feed_seq > 0),
    event_id        uuid   not null unique references wh_events (event_id),
    -- The event's place in the feed order, to find where the next run starts.
    tx_id           xid8   not null,
    global_position bigint not null
);

-- The sequencer's scan: events after the last numbered one, in feed order,
-- across partitions.
create index wh_events_order_idx on wh_events (tx_id, global_position);

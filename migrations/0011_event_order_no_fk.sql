-- The global order's rows no longer reference wh_events by foreign key.
-- The sequencer inserts only ids it has just read from wh_events in the same
-- statement, and events are never deleted, so the key guarded nothing; but
-- its check took a KEY SHARE row lock on every event numbered, a write to
-- each event row's header: half the sequencer's time, and a run that waited
-- for any transaction holding such a row FOR UPDATE. The unique index on
-- event_id stays (an event is numbered once; waits look numbers up by id).
alter table wh_event_order drop constraint wh_event_order_event_id_fkey;

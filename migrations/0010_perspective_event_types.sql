-- The event types each perspective handles, as the runner that runs it
-- declared them at start (with its strategy), so that the operator tool can
-- count as lag the streams with handled events and no cursor yet (events
-- the runner has not read). Null: not declared (a runner of an older build)
-- or not counted per stream (a keyed perspective, whose one cursor is not a
-- stream's).
alter table wh_perspective_strategies add column event_types text[];

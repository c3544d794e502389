-- $1 event ids, $2 types, $3 payloads (JSON text), $4 correlation ids,
-- $5 causation ids, $6 headers (JSON text), $7 timestamps (µs since the
-- epoch), $8 stream ids, $9 stream versions, $10 the outbox channel.
-- Runs in the append's transaction: the rows commit or roll back with their
-- events, and the NOTIFY that wakes the publishers is delivered only then.
with written as (
insert into wh_outbox
    (message_id, message_type, payload, correlation_id, causation_id, headers,
     enqueued_at, stream_id, stream_version)
select o.id, o.type, o.payload::jsonb, o.correlation, o.causation, o.headers::jsonb,
       'epoch'::timestamptz + o.enqueued * interval '1 microsecond', o.stream, o.version
  from unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::text[],
              $7::int8[], $8::uuid[], $9::int8[])
       as o(id, type, payload, correlation, causation, headers, enqueued, stream, version)
returning 1
)
select pg_notify($10, '') where exists (select 1 from written)

//! The event store on PostgreSQL: `wh_events` and its stream heads `wh_streams`.

use crate::wire;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use uuid::Uuid;
use whizbang_core::backend::{
    BoxFuture, EventLocation, EventMetadata, EventStore, InlineAppended, InlineApply, StoredEvent,
    StreamAppend,
};
use whizbang_core::error::Stored;
use whizbang_core::{Error, EventId, MessageId, Metadata, Result, StreamId};

/// The backend name in [`Error::Backend`].
pub(crate) const BACKEND: &str = "postgres";

/// Maps a driver error of `operation` (a verb phrase) to [`Error::Backend`].
pub(crate) fn db_error(
    operation: impl Into<String>,
    stored: Stored,
) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::backend(BACKEND, operation, stored, source)
}

/// A stored number that must fit a `u64` (versions, positions: the schema
/// keeps them non-negative).
pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

/// A version to bind: `u64` values above `i64::MAX` cannot be stored.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| {
        Error::InvalidInput(format!(
            "{what} {value} is larger than PostgreSQL's bigint can hold (at most {}); \
             nothing was stored",
            i64::MAX
        ))
    })
}

/// The event log on PostgreSQL. Cheap to clone (it shares the pool).
///
/// - An append is one transaction holding one statement: an upsert of the
///   stream heads (`wh_streams`, whose row lock serialises appends per
///   stream, so [`ExpectedVersion::Any`](whizbang_core::ExpectedVersion::Any)
///   never races), an `INSERT .. SELECT FROM unnest(..)` of every event at the
///   versions after its head, and a `NOTIFY` on the events channel naming the
///   partitions touched; then `COMMIT`. A version mismatch or a duplicate id
///   rolls the whole transaction back.
/// - [`StoredEvent::position`] is `wh_events.global_position`: it rises in
///   append order within one append but is **not gap-free** (a rolled-back
///   append burns positions) and a lower position may commit after a higher
///   one. Order a feed by `(tx_id, global_position)` instead (see the
///   migration).
/// - [`StoredEvent::typed`] is always `None`: readers decode `data`.
/// - Events are immutable: a trigger rejects `UPDATE` and `DELETE` on `wh_events`.
/// - [`append_inline`](EventStore::append_inline) applies the inline
///   perspectives the runtime hands it in the append's transaction, before
///   `COMMIT`: each touched cursor is created if missing and locked
///   (`for update`, ordered by perspective and key) with its model, the
///   runtime's fold runs, and one statement writes the cursors (fenced on
///   the version locked; a failure with its version and message), the models
///   and one `NOTIFY` on the applied channel. A model moved by a claim this
///   append waited for, and events a lagging cursor has not applied, are read
///   again after the lock. Dropping the future rolls everything back.
#[derive(Clone, Debug)]
pub struct PgEventStore {
    pool: PgPool,
}

impl PgEventStore {
    /// An event store over `pool` (migrated with [`migrate`](crate::migrate)).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        PgEventStore { pool }
    }

    /// The pool this store uses.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends `streams` in one transaction and, with `inline`, applies its
    /// inline perspectives before the commit (see [`crate::inline`]).
    /// Returns the stored events and the inline targets applied.
    async fn append_all(
        &self,
        streams: Vec<StreamAppend>,
        inline: Option<&dyn InlineApply>,
    ) -> Result<(Vec<Arc<StoredEvent>>, Vec<usize>)> {
        let plan = Plan::of(&streams)?;
        let what = || plan.describe();
        let rows = Rows::of(&streams)?;
        let partitions: Vec<i16> = rows
            .partitions
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let heads_ids: Vec<Uuid> = plan.added.iter().map(|(s, _)| s.as_uuid()).collect();
        let heads_added: Vec<i64> = plan.added.iter().map(|(_, n)| *n).collect();
        let heads_partitions: Vec<i16> = plan
            .added
            .iter()
            .map(|(s, _)| wire::partition_of(*s))
            .collect();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db_error(what(), Stored::Nothing))?;
        // One statement: move every head forward (locking it until commit,
        // in stream-id order so two appends never deadlock; streams that gain
        // nothing are only read), insert the events at the versions that
        // follow their stream's head, and NOTIFY the partitions touched
        // (evaluated once, delivered at commit, dropped with a rollback).
        // The expectations are checked on what it returns, before COMMIT.
        let answer: Vec<(i16, Uuid, i64, i64)> = sqlx::query_as(
            "with added as (
                 select h.stream_id, h.added, h.partition, h.ord
                   from unnest($1::uuid[], $2::int8[], $3::int2[]) with ordinality
                        as h(stream_id, added, partition, ord)
             ), heads as (
                 insert into wh_streams (stream_id, version, partition)
                 select a.stream_id, a.added, a.partition from added a
                  where a.added > 0
                  order by a.ord
                 on conflict (stream_id) do update
                    set version = wh_streams.version + excluded.version, updated_at = now()
                 returning stream_id, version
             ), kept as (
                 select s.stream_id, s.version from wh_streams s
                   join added a on a.stream_id = s.stream_id and a.added = 0
             ), stored as (
                 insert into wh_events
                     (event_id, stream_id, stream_version, partition, event_type, data, metadata)
                 select e.event_id, e.stream_id, h.version - a.added + e.place, e.partition,
                        e.event_type, e.data::jsonb, e.metadata::jsonb
                   from unnest($4::uuid[], $5::uuid[], $6::int8[], $7::int2[], $8::text[],
                               $9::text[], $10::text[]) with ordinality
                        as e(event_id, stream_id, place, partition, event_type, data,
                             metadata, ord)
                   join heads h on h.stream_id = e.stream_id
                   join added a on a.stream_id = e.stream_id
                  order by e.ord
                 on conflict (event_id) do nothing
                 returning event_id, stream_version, global_position
             ), notified as materialized (select pg_notify($11, $12))
             select 0::int2, h.stream_id, h.version - a.added, 0::int8
               from heads h join added a on a.stream_id = h.stream_id
             union all
             select 0::int2, k.stream_id, k.version, 0::int8 from kept k
             union all
             select 1::int2, s.event_id, s.stream_version, s.global_position
               from stored s left join notified on true",
        )
        .bind(&heads_ids)
        .bind(&heads_added)
        .bind(&heads_partitions)
        .bind(&rows.event_ids)
        .bind(&rows.stream_ids)
        .bind(&rows.offsets)
        .bind(&rows.partitions)
        .bind(&rows.types)
        .bind(&rows.data)
        .bind(&rows.metadata)
        .bind(wire::channel(&self.pool, wire::EVENTS_CHANNEL))
        .bind(wire::encode_partitions(&partitions))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error(what(), Stored::Nothing))?;
        let mut before: HashMap<StreamId, u64> = HashMap::with_capacity(plan.added.len());
        let mut stored: HashMap<Uuid, (i64, i64)> = HashMap::with_capacity(plan.events);
        for (kind, id, version, position) in answer {
            if kind == 0 {
                before.insert(StreamId::from(id), to_u64(version));
            } else {
                stored.insert(id, (version, position));
            }
        }
        // A mismatch or a duplicate id: the transaction rolls back on drop.
        plan.check(&streams, &before)?;
        if plan.events == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        if let Some(dup) = rows.event_ids.iter().find(|id| !stored.contains_key(id)) {
            return Err(Error::DuplicateEventId {
                event_id: EventId::from(*dup),
            });
        }
        // The outbox rows of outbound events (`#[event(publish)]`), in this
        // transaction: they commit or roll back with the events.
        crate::outbox::write(&mut tx, &streams, &stored, &self.pool).await?;
        let events = Rows::stored(streams, &stored);
        let applied = match inline {
            Some(inline) => {
                let channel = wire::channel(&self.pool, wire::APPLIED_CHANNEL);
                crate::inline::apply(&mut tx, inline, &events, &before, &channel).await?
            }
            None => Vec::new(),
        };
        tx.commit()
            .await
            .map_err(db_error(what(), Stored::Unknown))?;
        tracing::debug!(
            events = plan.events,
            streams = plan.added.len(),
            inline = applied.len(),
            "appended events"
        );
        Ok((events, applied))
    }
}

/// What an append adds to each distinct stream, in stream-id order (the
/// order the heads are locked in, so two appends never deadlock).
struct Plan {
    added: Vec<(StreamId, i64)>,
    events: usize,
}

impl Plan {
    fn of(streams: &[StreamAppend]) -> Result<Self> {
        let mut seen = HashSet::new();
        for e in streams.iter().flat_map(|s| &s.events) {
            if !seen.insert(e.event_id) {
                return Err(Error::DuplicateEventId {
                    event_id: e.event_id,
                });
            }
        }
        let mut added: HashMap<StreamId, u64> = HashMap::new();
        for s in streams {
            *added.entry(s.stream_id).or_default() += s.events.len() as u64;
        }
        let mut added = added
            .into_iter()
            .map(|(stream, n)| Ok((stream, to_i64(n, "the number of events appended")?)))
            .collect::<Result<Vec<_>>>()?;
        added.sort_unstable_by_key(|(stream, _)| *stream);
        Ok(Plan {
            added,
            events: seen.len(),
        })
    }

    fn describe(&self) -> String {
        match self.added.as_slice() {
            [(stream, _)] => format!("append {} events to stream {stream}", self.events),
            _ => format!(
                "append {} events to {} streams",
                self.events,
                self.added.len()
            ),
        }
    }

    /// Checks each entry's expectation against its stream's version plus what
    /// earlier entries of the same call add.
    fn check(&self, streams: &[StreamAppend], before: &HashMap<StreamId, u64>) -> Result<()> {
        let mut current = before.clone();
        for s in streams {
            let version = current.entry(s.stream_id).or_default();
            if !s.expected.admits(*version) {
                return Err(Error::Concurrency {
                    stream: s.stream_id,
                    expected: s.expected,
                    actual: *version,
                });
            }
            *version += s.events.len() as u64;
        }
        Ok(())
    }
}

/// The columns of an append, one array per column (bound to `unnest`).
struct Rows {
    event_ids: Vec<Uuid>,
    stream_ids: Vec<Uuid>,
    /// 1-based place of the event among this append's events of its stream:
    /// its version is the stream's head before the append plus this.
    offsets: Vec<i64>,
    partitions: Vec<i16>,
    types: Vec<&'static str>,
    data: Vec<String>,
    metadata: Vec<String>,
}

impl Rows {
    fn of(streams: &[StreamAppend]) -> Result<Self> {
        let n = streams.iter().map(|s| s.events.len()).sum();
        let mut rows = Rows {
            event_ids: Vec::with_capacity(n),
            stream_ids: Vec::with_capacity(n),
            offsets: Vec::with_capacity(n),
            partitions: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
        };
        let mut next: HashMap<StreamId, i64> = HashMap::new();
        for s in streams {
            let partition = wire::partition_of(s.stream_id);
            for e in &s.events {
                let offset = next.entry(s.stream_id).or_default();
                *offset += 1;
                rows.event_ids.push(e.event_id.as_uuid());
                rows.stream_ids.push(s.stream_id.as_uuid());
                rows.offsets.push(*offset);
                rows.partitions.push(partition);
                rows.types.push(e.event_type);
                rows.data.push(e.data.get().to_owned());
                rows.metadata.push(encode_metadata(&e.metadata)?);
            }
        }
        Ok(rows)
    }

    /// The appended events as stored (`stored`: id -> version, position),
    /// in the order given.
    fn stored(
        streams: Vec<StreamAppend>,
        stored: &HashMap<Uuid, (i64, i64)>,
    ) -> Vec<Arc<StoredEvent>> {
        let mut out = Vec::with_capacity(stored.len());
        for s in streams {
            for e in s.events {
                let (version, position) = stored
                    .get(&e.event_id.as_uuid())
                    .copied()
                    .unwrap_or_default();
                out.push(Arc::new(StoredEvent {
                    position: to_u64(position),
                    event_id: e.event_id,
                    stream_id: s.stream_id,
                    stream_version: to_u64(version),
                    event_type: Cow::Borrowed(e.event_type),
                    data: e.data,
                    metadata: e.metadata,
                    typed: None,
                }));
            }
        }
        out
    }
}

/// `wh_events.metadata` as stored.
#[derive(Serialize, Deserialize)]
struct MetadataDoc {
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    /// Microseconds since the Unix epoch (negative before it).
    timestamp_us: i64,
    #[serde(default)]
    extra: Metadata,
}

fn encode_metadata(m: &EventMetadata) -> Result<String> {
    let timestamp_us = match m.timestamp.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    };
    let doc = MetadataDoc {
        correlation_id: m.correlation_id.as_uuid(),
        causation_id: m.causation_id.map(|c| c.as_uuid()),
        timestamp_us,
        extra: m.extra.clone(),
    };
    serde_json::to_string(&doc).map_err(|source| Error::Serialization {
        type_name: "event metadata",
        source,
    })
}

fn decode_metadata(json: &str) -> std::result::Result<EventMetadata, serde_json::Error> {
    let doc: MetadataDoc = serde_json::from_str(json)?;
    let offset = Duration::from_micros(doc.timestamp_us.unsigned_abs());
    let timestamp = if doc.timestamp_us >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
    .unwrap_or(UNIX_EPOCH);
    Ok(EventMetadata {
        correlation_id: MessageId::from(doc.correlation_id),
        causation_id: doc.causation_id.map(MessageId::from),
        timestamp,
        extra: doc.extra,
    })
}

/// Where an event sits, as read: id, stream, version, type.
pub(crate) type LocationRow = (Uuid, Uuid, i64, String);

pub(crate) fn location(row: LocationRow) -> EventLocation {
    let (event_id, stream_id, version, event_type) = row;
    EventLocation {
        event_id: EventId::from(event_id),
        stream_id: StreamId::from(stream_id),
        stream_version: to_u64(version),
        event_type: Cow::Owned(event_type),
    }
}

/// One `wh_events` row as read: position, id, stream, version, type, data, metadata.
pub(crate) type EventRow = (i64, Uuid, Uuid, i64, String, String, String);

pub(crate) fn decode_event(row: EventRow) -> std::result::Result<StoredEvent, serde_json::Error> {
    let (position, event_id, stream_id, version, event_type, data, metadata) = row;
    decode_event_row((
        position,
        event_id,
        stream_id,
        version,
        event_type,
        data,
        Some(metadata),
    ))
}

/// An event row whose metadata may not have been read (`None`): the event
/// then carries empty metadata (nil correlation id, no causation, the
/// epoch, no extra), for applies that never read it.
pub(crate) fn decode_event_row(
    row: (i64, Uuid, Uuid, i64, String, String, Option<String>),
) -> std::result::Result<StoredEvent, serde_json::Error> {
    let (position, event_id, stream_id, version, event_type, data, metadata) = row;
    let metadata = match metadata {
        Some(json) => decode_metadata(&json)?,
        None => EventMetadata {
            correlation_id: MessageId::from(Uuid::nil()),
            causation_id: None,
            timestamp: UNIX_EPOCH,
            extra: Metadata::default(),
        },
    };
    Ok(StoredEvent {
        position: to_u64(position),
        event_id: EventId::from(event_id),
        stream_id: StreamId::from(stream_id),
        stream_version: to_u64(version),
        event_type: Cow::Owned(event_type),
        data: serde_json::value::RawValue::from_string(data)?,
        metadata,
        typed: None,
    })
}

impl EventStore for PgEventStore {
    fn append(&self, streams: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>> {
        Box::pin(async move { Ok(self.append_all(streams, None).await?.0) })
    }

    /// Applies the inline perspectives in the append's transaction: see
    /// [`PgEventStore`].
    fn append_inline<'a>(
        &'a self,
        streams: Vec<StreamAppend>,
        inline: &'a dyn InlineApply,
    ) -> BoxFuture<'a, Result<InlineAppended>> {
        Box::pin(async move {
            let (events, applied) = self.append_all(streams, Some(inline)).await?;
            Ok(InlineAppended::new(events, applied))
        })
    }

    fn read_stream(
        &self,
        stream: StreamId,
        after_version: u64,
    ) -> BoxFuture<'_, Result<Vec<Arc<StoredEvent>>>> {
        Box::pin(async move {
            let what = || format!("read stream {stream} after version {after_version}");
            let after = i64::try_from(after_version).unwrap_or(i64::MAX);
            let rows: Vec<EventRow> = sqlx::query_as(
                "select global_position, event_id, stream_id, stream_version, event_type,
                        data::text, metadata::text
                   from wh_events
                  where stream_id = $1 and stream_version > $2
                  order by stream_version",
            )
            .bind(stream.as_uuid())
            .bind(after)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error(what(), Stored::Nothing))?;
            rows.into_iter()
                .map(|row| {
                    decode_event(row).map(Arc::new).map_err(|source| {
                        Error::backend(
                            BACKEND,
                            format!(
                                "{}: a stored event's data or metadata is not what whizbang \
                                 writes (was the row written by hand?)",
                                what()
                            ),
                            Stored::Nothing,
                            source,
                        )
                    })
                })
                .collect()
        })
    }

    fn stream_version(&self, stream: StreamId) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let version: Option<i64> =
                sqlx::query_scalar("select version from wh_streams where stream_id = $1")
                    .bind(stream.as_uuid())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error(
                        format!("read the version of stream {stream}"),
                        Stored::Nothing,
                    ))?;
            Ok(version.map_or(0, to_u64))
        })
    }

    /// One query: per stream, its last event of those types (an index-only
    /// scan of `wh_events_type_idx`), against the perspective's cursor when
    /// `behind` names it (streams already caught up are left out).
    fn streams_with_types<'a>(
        &'a self,
        behind: Option<&'a str>,
        event_types: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<StreamId>>> {
        Box::pin(async move {
            if event_types.is_empty() {
                return Ok(Vec::new());
            }
            let rows: Vec<Uuid> = sqlx::query_scalar(
                "select h.stream_id
                   from (select stream_id, max(stream_version) as head
                           from wh_events where event_type = any($2)
                          group by stream_id) h
                   left join wh_perspective_cursors c
                     on c.perspective = $1 and c.model_key = h.stream_id
                  where $1::text is null or c.version is null or c.version < h.head
                  order by h.stream_id",
            )
            .bind(behind)
            .bind(event_types)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error(
                "list the streams holding a perspective's events",
                Stored::Nothing,
            ))?;
            Ok(rows.into_iter().map(StreamId::from).collect())
        })
    }

    fn stream_heads<'a>(
        &'a self,
        event_types: &'a [&'static str],
    ) -> BoxFuture<'a, Result<Vec<(StreamId, u64)>>> {
        Box::pin(crate::rebuild::stream_heads(&self.pool, event_types))
    }

    fn locate<'a>(&'a self, ids: &'a [EventId]) -> BoxFuture<'a, Result<Vec<EventLocation>>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let uuids: Vec<Uuid> = ids.iter().map(EventId::as_uuid).collect();
            let rows: Vec<LocationRow> = sqlx::query_as(
                "select event_id, stream_id, stream_version, event_type
                   from wh_events where event_id = any($1)",
            )
            .bind(&uuids)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error(
                format!("locate {} events", ids.len()),
                Stored::Nothing,
            ))?;
            Ok(rows.into_iter().map(location).collect())
        })
    }

    /// The gap-free numbering of the feed's safe order (see the `keyed`
    /// module): events carry their number as `position`.
    fn read_global(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<Arc<StoredEvent>>>>> {
        Box::pin(async move {
            crate::keyed::read_global(&self.pool, after, limit)
                .await
                .map(Some)
        })
    }

    fn global_positions<'a>(
        &'a self,
        ids: &'a [EventId],
    ) -> BoxFuture<'a, Result<Option<whizbang_core::backend::GlobalPositions>>> {
        Box::pin(async move {
            crate::keyed::global_positions(&self.pool, ids)
                .await
                .map(Some)
        })
    }
}

//! What travels between processes outside the tables: the NOTIFY channels and
//! their payloads, and the partition a stream falls into.
//!
//! Both sides live here so the writer (an append, a perspective commit) and
//! the reader (a LISTEN loop) cannot drift apart.

use whizbang_core::StreamId;

/// Channel an append NOTIFYs (inside its transaction, once per transaction)
/// so runners in other processes look for new work at once. The payload is
/// the partitions the append touched, comma-separated (see [`encode_partitions`]).
pub(crate) const EVENTS_CHANNEL: &str = "whizbang_events";

/// Channel a perspective commit NOTIFYs (inside its transaction, once per
/// transaction) so waiters in other processes re-ask at once. The payload is
/// [`encode_applied`]'s.
pub(crate) const APPLIED_CHANNEL: &str = "whizbang_applied";

/// The schema a pool's connections work in, when it was set through
/// [`PostgresOptions::schema`](crate::PostgresOptions::schema) (a
/// `search_path` startup option): `None` otherwise.
pub(crate) fn schema_of(pool: &sqlx::PgPool) -> Option<String> {
    let options = pool.connect_options();
    let startup = options.get_options()?;
    startup
        .split(' ')
        .rev()
        .find_map(|o| o.strip_prefix("search_path="))
        .map(str::to_owned)
}

/// The name of NOTIFY channel `base` for the connections of `pool`: `base`
/// itself, or `base.<schema>` when the pool works in a schema of its own
/// (not `public`), so services sharing a database in their own schemas
/// neither wake nor mislead each other. The same rule as the SQL function
/// `wh_channel` (migration `0004_outbox.sql`) and [`SchemaName::channel`](crate::SchemaName::channel).
pub(crate) fn channel(pool: &sqlx::PgPool, base: &str) -> String {
    match schema_of(pool) {
        Some(schema) if schema != "public" => format!("{base}.{schema}"),
        _ => base.to_owned(),
    }
}

/// How many partitions streams fall into. Fixed: each stored event carries
/// its partition, so changing this would mean rewriting the event table.
pub(crate) const PARTITIONS: i16 = 16;

/// The partition of a stream: stable across processes and builds (it only
/// reads the id's bytes).
pub(crate) fn partition_of(stream: StreamId) -> i16 {
    let uuid = stream.as_uuid();
    let bytes = uuid.as_bytes();
    // The last bytes of a UUID v7 are random; the first are the timestamp.
    let tail = u16::from_be_bytes([bytes[14], bytes[15]]);
    (tail % PARTITIONS as u16) as i16
}

/// The payload of an [`EVENTS_CHANNEL`] notification.
pub(crate) fn encode_partitions(partitions: &[i16]) -> String {
    let mut out = String::with_capacity(partitions.len() * 3);
    for (i, p) in partitions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&p.to_string());
    }
    out
}

/// The partitions named by an [`EVENTS_CHANNEL`] payload; `None` when it is
/// not one of ours (a reader then rescans everything it leases).
pub(crate) fn decode_partitions(payload: &str) -> Option<Vec<i16>> {
    payload
        .split(',')
        .map(|p| {
            p.parse::<i16>()
                .ok()
                .filter(|p| (0..PARTITIONS).contains(p))
        })
        .collect()
}

/// The payload of an [`APPLIED_CHANNEL`] notification: `perspective`'s cursor
/// on `stream` is now at `version`. Format `<version> <stream> <perspective>`
/// (the name last: it is the only part that may hold spaces). Far below the
/// 8,000-byte NOTIFY limit: perspective names are bounded by the registry's
/// validation.
pub(crate) fn encode_applied(perspective: &str, stream: StreamId, version: u64) -> String {
    format!("{version} {stream} {perspective}")
}

/// An [`APPLIED_CHANNEL`] payload decoded: (perspective, stream, version);
/// `None` when it is not one of ours.
pub(crate) fn decode_applied(payload: &str) -> Option<(&str, StreamId, u64)> {
    let mut parts = payload.splitn(3, ' ');
    let version = parts.next()?.parse().ok()?;
    let stream = parts.next()?.parse::<uuid::Uuid>().ok()?;
    let perspective = parts.next().filter(|p| !p.is_empty())?;
    Some((perspective, StreamId::from(stream), version))
}

/// The payloads of one [`APPLIED_CHANNEL`] notification per chunk for a
/// transaction that committed `perspective` on many streams: one
/// [`encode_applied`] entry per line, each payload below 7,900 bytes (the
/// server's cap is 8,000).
pub(crate) fn encode_applied_many(perspective: &str, entries: &[(StreamId, u64)]) -> Vec<String> {
    encode_applied_lines(entries.iter().map(|(s, v)| (perspective, *s, *v)))
}

/// The payloads of one [`APPLIED_CHANNEL`] notification per chunk for a
/// transaction that committed (perspective, stream, version) `entries` of
/// any perspectives: as [`encode_applied_many`], one entry per line.
pub(crate) fn encode_applied_lines<'a>(
    entries: impl IntoIterator<Item = (&'a str, StreamId, u64)>,
) -> Vec<String> {
    const CAP: usize = 7_900;
    let mut out = Vec::new();
    let mut payload = String::new();
    for (perspective, stream, version) in entries {
        let entry = encode_applied(perspective, stream, version);
        if !payload.is_empty() && payload.len() + 1 + entry.len() > CAP {
            out.push(std::mem::take(&mut payload));
        }
        if !payload.is_empty() {
            payload.push('\n');
        }
        payload.push_str(&entry);
    }
    if !payload.is_empty() {
        out.push(payload);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_round_trips_with_spaces_in_the_name() {
        let s = StreamId::new();
        let payload = encode_applied("orders summary", s, 7);
        assert_eq!(decode_applied(&payload), Some(("orders summary", s, 7)));
        assert_eq!(decode_applied("garbage"), None);
        assert_eq!(decode_applied("1 not-a-uuid p"), None);
    }

    #[test]
    fn many_applied_entries_split_into_payloads_below_the_cap() {
        let entries: Vec<(StreamId, u64)> = (1..=300).map(|v| (StreamId::new(), v)).collect();
        let payloads = encode_applied_many("orders summary", &entries);
        assert!(payloads.len() > 1);
        let decoded: Vec<(StreamId, u64)> = payloads
            .iter()
            .inspect(|p| assert!(p.len() <= 7_900))
            .flat_map(|p| p.lines())
            .map(|line| {
                let (name, stream, version) = decode_applied(line).expect("decodes");
                assert_eq!(name, "orders summary");
                (stream, version)
            })
            .collect();
        assert_eq!(decoded, entries);
    }

    #[test]
    fn partitions_round_trip_and_reject_foreign_payloads() {
        assert_eq!(
            decode_partitions(&encode_partitions(&[0, 3, 15])),
            Some(vec![0, 3, 15])
        );
        assert_eq!(decode_partitions("16"), None);
        assert_eq!(decode_partitions("x"), None);
    }

    #[test]
    fn partition_is_in_range_and_stable() {
        for _ in 0..1000 {
            let s = StreamId::new();
            let p = partition_of(s);
            assert!((0..PARTITIONS).contains(&p));
            assert_eq!(p, partition_of(s));
        }
    }
}

//! Counting lost and duplicated work, and checking models against a fresh fold.
//!
//! **The ledger.** A table of side effects, `wh_test_ledger (key unique,
//! attempts)`. A worker calls [`record`] in the same transaction as its work:
//! the first commit of a key inserts it with `attempts = 1`, any later commit
//! of the same key (work done twice) counts up. [`check`] compares the keys
//! that should have been done with what committed and returns a [`Tally`]:
//! expected, seen, lost (never committed) and duplicated (committed more than
//! once). [`Tally::assert_exact`] fails with a readable message.
//!
//! **The fresh fold.** [`fresh_fold`] reads a stream's events from
//! `wh_events` in version order, folds them with the test's own apply
//! function and compares the result with the stored model in
//! `wh_perspective_rows`; [`check_all_folds`] does so for every stream, and
//! [`version_gaps`] lists streams whose versions are not 1..=n.

use serde::Serialize;
use serde_json::Value;
use sqlx::{Executor as _, PgConnection, PgPool};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Creates the ledger table (if it is not there yet).
///
/// # Errors
/// The server's error.
pub async fn install(pool: &PgPool) -> Result<(), sqlx::Error> {
    pool.execute(
        "create table if not exists wh_test_ledger (
             key        text        primary key,
             attempts   integer     not null default 1 check (attempts > 0),
             first_at   timestamptz not null default clock_timestamp(),
             last_at    timestamptz not null default clock_timestamp()
         )",
    )
    .await?;
    Ok(())
}

/// Records that the work named `key` is done, on `conn` (the work's own
/// transaction, so it commits or rolls back with the work).
///
/// # Errors
/// The server's error.
pub async fn record(conn: &mut PgConnection, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into wh_test_ledger (key) values ($1)
         on conflict (key) do update
         set attempts = wh_test_ledger.attempts + 1, last_at = clock_timestamp()",
    )
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Compares the keys in `expected` with what the ledger holds.
///
/// # Errors
/// The server's error.
pub async fn check(
    pool: &PgPool,
    expected: impl IntoIterator<Item = String>,
) -> Result<Tally, sqlx::Error> {
    let rows: Vec<(String, i32)> = sqlx::query_as("select key, attempts from wh_test_ledger")
        .fetch_all(pool)
        .await?;
    let seen = rows
        .into_iter()
        .map(|(key, attempts)| (key, u64::try_from(attempts).unwrap_or(0)))
        .collect();
    Ok(Tally::of(expected, seen))
}

/// What a ledger check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// How many keys should have been done.
    pub expected: usize,
    /// How many distinct keys committed (expected or not).
    pub seen: usize,
    /// Expected keys that never committed.
    pub lost: Vec<String>,
    /// Keys that committed more than once, with how many times.
    pub duplicated: Vec<(String, u64)>,
    /// Keys that committed but were not expected.
    pub unexpected: Vec<String>,
}

impl Tally {
    /// Compares `expected` keys with `seen` (each key with the number of
    /// times it committed). Usable for any count, not only the ledger's: a
    /// test may count events per key in `wh_events` and tally them here.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use whizbang_tests::pg::ledger::Tally;
    ///
    /// let seen = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)]);
    /// let tally = Tally::of(["a", "b", "c"].map(String::from), seen);
    /// assert_eq!(tally.lost, ["c"]);
    /// assert_eq!(tally.duplicated, [("b".to_owned(), 2)]);
    /// assert!(!tally.is_exact());
    /// ```
    pub fn of(expected: impl IntoIterator<Item = String>, seen: BTreeMap<String, u64>) -> Tally {
        let expected: BTreeSet<String> = expected.into_iter().collect();
        Tally {
            expected: expected.len(),
            seen: seen.len(),
            lost: expected
                .iter()
                .filter(|k| !seen.contains_key(*k))
                .cloned()
                .collect(),
            duplicated: seen
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(k, n)| (k.clone(), *n))
                .collect(),
            unexpected: seen
                .keys()
                .filter(|k| !expected.contains(*k))
                .cloned()
                .collect(),
        }
    }

    /// Nothing lost, nothing duplicated, nothing unexpected.
    pub fn is_exact(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.unexpected.is_empty()
    }

    /// `(expected, seen, lost, duplicated)` as counts.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.expected,
            self.seen,
            self.lost.len(),
            self.duplicated.len(),
        )
    }

    /// Fails unless [`is_exact`](Self::is_exact), saying what was lost and
    /// what was done twice.
    ///
    /// # Panics
    /// When anything was lost, duplicated or unexpected.
    #[track_caller]
    pub fn assert_exact(&self) {
        assert!(self.is_exact(), "{self}");
    }
}

/// At most this many keys of each kind are named in a message.
const SHOWN: usize = 20;

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expected {} keys, saw {}: {} lost, {} duplicated, {} unexpected",
            self.expected,
            self.seen,
            self.lost.len(),
            self.duplicated.len(),
            self.unexpected.len()
        )?;
        if !self.lost.is_empty() {
            write!(f, "\n  lost (never committed): {}", first(&self.lost))?;
        }
        if !self.duplicated.is_empty() {
            let dups: Vec<String> = self
                .duplicated
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect();
            write!(
                f,
                "\n  duplicated (committed more than once): {}",
                first(&dups)
            )?;
        }
        if !self.unexpected.is_empty() {
            write!(
                f,
                "\n  unexpected (never asked for): {}",
                first(&self.unexpected)
            )?;
        }
        Ok(())
    }
}

fn first(keys: &[String]) -> String {
    let mut shown = keys
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        shown.push_str(&format!(" .. and {} more", keys.len() - SHOWN));
    }
    shown
}

/// One event of a stream, as a fold sees it.
#[derive(Clone, Debug)]
pub struct FoldEvent {
    /// Its version in the stream.
    pub version: u64,
    /// Its registered type name.
    pub event_type: String,
    /// Its payload.
    pub data: Value,
}

/// A stored model compared with a fresh fold of its stream.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldCheck {
    /// The stream.
    pub stream: uuid::Uuid,
    /// How many events the stream holds (its last version).
    pub events: u64,
    /// The fold of every event, as JSON.
    pub expected: Value,
    /// The stored model (`None`: no row).
    pub stored: Option<Value>,
    /// The version the stored row says it reflects.
    pub stored_version: Option<u64>,
}

impl FoldCheck {
    /// The stored model equals the fold and reflects every event.
    pub fn matches(&self) -> bool {
        self.stored.as_ref() == Some(&self.expected) && self.stored_version == Some(self.events)
    }
}

impl fmt::Display for FoldCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream {}: {} events fold to {}, stored model {} at version {}",
            self.stream,
            self.events,
            self.expected,
            self.stored
                .as_ref()
                .map_or_else(|| "(none)".to_owned(), Value::to_string),
            self.stored_version
                .map_or_else(|| "(none)".to_owned(), |v| v.to_string()),
        )
    }
}

/// Folds `stream`'s events (in version order, from `wh_events`) into a
/// `M::default()` with `apply`, and compares with `perspective`'s stored
/// model for the stream.
///
/// # Errors
/// The server's error.
pub async fn fresh_fold<M: Default + Serialize>(
    pool: &PgPool,
    perspective: &str,
    stream: uuid::Uuid,
    mut apply: impl FnMut(&mut M, &FoldEvent),
) -> Result<FoldCheck, sqlx::Error> {
    // JSON is read as text and parsed here: sqlx's json feature stays off.
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "select stream_version, event_type, data::text from wh_events
         where stream_id = $1 order by stream_version",
    )
    .bind(stream)
    .fetch_all(pool)
    .await?;
    let mut model = M::default();
    let mut events = 0;
    for (version, event_type, data) in rows {
        let event = FoldEvent {
            version: u64::try_from(version).unwrap_or(0),
            event_type,
            data: parse(&data),
        };
        events = event.version;
        apply(&mut model, &event);
    }
    let stored: Option<(i64, String)> = sqlx::query_as(
        "select version, data::text from wh_perspective_rows where perspective = $1 and model_key = $2",
    )
    .bind(perspective)
    .bind(stream)
    .fetch_optional(pool)
    .await?;
    Ok(FoldCheck {
        stream,
        events,
        expected: serde_json::to_value(&model).unwrap_or(Value::Null),
        stored_version: stored.as_ref().map(|(v, _)| u64::try_from(*v).unwrap_or(0)),
        stored: stored.map(|(_, data)| parse(&data)),
    })
}

/// `text` as JSON; text that is not JSON (it cannot be, from a jsonb column)
/// becomes a JSON string so that a comparison shows it.
fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Every stream in `wh_events`, in id order.
///
/// # Errors
/// The server's error.
pub async fn streams(pool: &PgPool) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    sqlx::query_scalar("select stream_id from wh_streams order by stream_id")
        .fetch_all(pool)
        .await
}

/// [`fresh_fold`] for every stream; the checks that do not match.
///
/// # Errors
/// The server's error.
pub async fn check_all_folds<M: Default + Serialize>(
    pool: &PgPool,
    perspective: &str,
    mut apply: impl FnMut(&mut M, &FoldEvent),
) -> Result<Vec<FoldCheck>, sqlx::Error> {
    let mut wrong = Vec::new();
    for stream in streams(pool).await? {
        let check = fresh_fold(pool, perspective, stream, &mut apply).await?;
        if !check.matches() {
            wrong.push(check);
        }
    }
    Ok(wrong)
}

/// Streams whose versions are not exactly 1..=n, each with a description.
///
/// # Errors
/// The server's error.
pub async fn version_gaps(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(uuid::Uuid, i64, i64, i64, Option<i64>)> = sqlx::query_as(
        "select e.stream_id, count(*), min(e.stream_version), max(e.stream_version), s.version
         from wh_events e left join wh_streams s on s.stream_id = e.stream_id
         group by e.stream_id, s.version
         having count(*) <> max(e.stream_version) or min(e.stream_version) <> 1
             or s.version is distinct from max(e.stream_version)",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(stream, n, min, max, head)| {
            format!("stream {stream}: {n} events, versions {min}..={max}, head {head:?}")
        })
        .collect())
}

/// How many events carry each value of `data->>field`, per stream: the
/// "seen" side of a [`Tally`] when each appended event has a unique key.
///
/// # Errors
/// The server's error.
pub async fn event_keys(pool: &PgPool, field: &str) -> Result<BTreeMap<String, u64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select stream_id::text || ':' || coalesce(data->>$1, '?'), count(*)
         from wh_events group by 1",
    )
    .bind(field)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(k, n)| (k, u64::try_from(n).unwrap_or(0)))
        .collect())
}

/// Asserts the end state every runner-process test checks: the events
/// `stream:1..=versions` of each of `streams` are stored, each once and
/// nothing else; versions are gap-free; and every model of `perspective`
/// equals a fresh fold with `apply` (so each event was applied once, in
/// order). Returns the expected event keys for the tests' applied-log checks.
///
/// # Panics
/// On the first check that fails, with what differs; when a query fails.
pub async fn assert_stored_once_and_folded<M: Default + Serialize>(
    pool: &PgPool,
    streams: &[impl fmt::Display],
    versions: u64,
    perspective: &str,
    apply: impl FnMut(&mut M, &FoldEvent),
) -> BTreeSet<String> {
    let expected: BTreeSet<String> = streams
        .iter()
        .flat_map(|s| (1..=versions).map(move |v| format!("{s}:{v}")))
        .collect();
    let stored = event_keys(pool, "seq")
        .await
        .expect("read the stored events");
    Tally::of(expected.clone(), stored).assert_exact();
    let gaps = version_gaps(pool).await.expect("read the stream versions");
    assert!(gaps.is_empty(), "versions not gap-free: {gaps:#?}");
    let wrong = check_all_folds(pool, perspective, apply)
        .await
        .expect("fold every stream");
    assert!(
        wrong.is_empty(),
        "{} models differ from a fresh fold, e.g.:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(10)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    expected
}

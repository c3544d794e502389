//! SIGKILL a rebuilding process, then rebuild again: the second run resumes
//! from the shadow's cursors (it applies exactly the events the shadow did
//! not reflect when the first process died) and ends with every live model
//! equal to a fresh fold of its stream.
//!
//! The parent appends the events; `pg_rebuilder` children rebuild the
//! perspective `pg_rebuild_kill.totals` (runner off: only the rebuild
//! applies), a chunk of streams per transaction, printing the progress the
//! shadow stored.

use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, SystemTime};
use uuid::Uuid;
use whizbang_core::backend::{EventMetadata, EventStore as _, NewEvent, StreamAppend};
use whizbang_core::{EventId, ExpectedVersion, MessageId, Metadata, StreamId};
use whizbang_postgres::PgEventStore;
use whizbang_tests::pg::cluster::{Cluster, Member};
use whizbang_tests::pg::db::FreshDb;

/// No step of this test may take longer than this.
const BOUND: Duration = Duration::from_secs(120);
const STREAMS: usize = 200;
const EVENTS_PER_STREAM: usize = 40;
const TOTAL: u64 = (STREAMS * EVENTS_PER_STREAM) as u64;
const CHUNK_EVENTS: &str = "400";
const SHADOW: &str = "pg_rebuild_kill.totals~rebuild";

fn deposit(stream: Uuid, cents: i64) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        stream_id: StreamId::from(stream),
        event_type: "pg_rebuild_kill.deposited",
        data: serde_json::value::to_raw_value(
            &serde_json::json!({ "account": stream, "cents": cents }),
        )
        .unwrap(),
        metadata: EventMetadata {
            correlation_id: MessageId::new(),
            causation_id: None,
            timestamp: SystemTime::now(),
            extra: Metadata::default(),
        },
        typed: None,
        outbound: false,
    }
}

fn rebuilder(url: &str) -> Member {
    let mut cmd = Cluster::command(env!("CARGO_BIN_EXE_pg_rebuilder"));
    cmd.arg(url).arg(CHUNK_EVENTS);
    Member::spawn(cmd)
}

/// The number after `prefix ` in `lines`.
fn value_of(lines: &[String], prefix: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("no `{prefix}` line in {lines:?}"))
}

async fn shadow_reflects(pool: &sqlx::PgPool) -> u64 {
    let sum: i64 = sqlx::query_scalar(
        "select coalesce(sum(version), 0)::int8 from wh_perspective_cursors where perspective = $1",
    )
    .bind(SHADOW)
    .fetch_one(pool)
    .await
    .unwrap();
    u64::try_from(sum).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rebuild_resumes_from_the_shadow_without_redoing_finished_work() {
    let db = FreshDb::create().await;
    let events = PgEventStore::new(db.pool.clone());
    for s in 0..STREAMS {
        let stream = Uuid::now_v7();
        let batch = (0..EVENTS_PER_STREAM)
            .map(|i| deposit(stream, (s * 7 + i) as i64))
            .collect();
        events
            .append(vec![StreamAppend {
                stream_id: StreamId::from(stream),
                expected: ExpectedVersion::NoStream,
                events: batch,
            }])
            .await
            .unwrap();
    }

    // The first rebuilder dies by SIGKILL once a quarter is in the shadow.
    let url = db.url.clone();
    let first = tokio::task::spawn_blocking(move || {
        let mut child = rebuilder(&url);
        child
            .wait_line(
                |l| {
                    l.strip_prefix("progress ")
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n >= TOTAL / 4)
                },
                BOUND,
            )
            .expect("the first rebuilder made progress");
        child.kill();
        let status = child.wait_timeout(BOUND).expect("the killed child exits");
        assert_eq!(status.signal(), Some(9), "died of SIGKILL: {status}");
    });
    first.await.unwrap();
    let reflected = shadow_reflects(&db.pool).await;
    assert!(
        (TOTAL / 4..TOTAL).contains(&reflected),
        "the shadow reflects {reflected} of {TOTAL} events"
    );
    let live: i64 = sqlx::query_scalar(
        "select count(*) from wh_perspective_rows where perspective = 'pg_rebuild_kill.totals'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(live, 0, "nothing was swapped in by the killed rebuild");

    // The second one resumes (the dead session's lock went with it).
    let url = db.url.clone();
    let lines = tokio::task::spawn_blocking(move || {
        let mut child = rebuilder(&url);
        child
            .wait_line(|l| l == "finished", BOUND)
            .expect("the second rebuilder finished");
        let status = child.wait_timeout(BOUND).expect("it exits");
        assert!(status.success(), "{status}");
        child.lines().to_vec()
    })
    .await
    .unwrap();
    assert_eq!(value_of(&lines, "resumed "), "true");
    assert_eq!(value_of(&lines, "events "), TOTAL.to_string());
    // Finished work is not redone: it applied exactly what the shadow lacked.
    assert_eq!(
        value_of(&lines, "applies "),
        (TOTAL - reflected).to_string(),
        "{lines:?}"
    );

    // Every live model equals a fresh fold of its stream (done in SQL).
    let wrong: i64 = sqlx::query_scalar(
        "select count(*)
           from (select stream_id, sum((data->>'cents')::int8) as cents, count(*) as n
                   from wh_events group by stream_id) f
           full join (select model_key, (data->>'cents')::int8 as cents,
                             (data->>'deposits')::int8 as n, version
                        from wh_perspective_rows
                       where perspective = 'pg_rebuild_kill.totals') r
             on r.model_key = f.stream_id
          where r.cents is distinct from f.cents or r.n is distinct from f.n
             or r.version is distinct from f.n",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(wrong, 0, "models that differ from a fresh fold");
    assert_eq!(shadow_reflects(&db.pool).await, 0, "the shadow is gone");
    db.drop_now().await.unwrap();
}

//! The partitioned runner's side of a perspective whose
//! [`SyncStrategy`](whizbang_core::strategy::SyncStrategy) holds work back
//! (batch, scheduled, custom).
//!
//! The runner reads such a perspective's feed only when its strategy may
//! say run: after a read that found work and a `Wait(d)`, it sets a due
//! time and skips the perspective until then, unless enough wake-ups came
//! in meanwhile (each NOTIFY is at least one event) that the strategy would
//! run on them. Once the perspective is idle (its last read found nothing,
//! or its last run took everything), the read a wake-up starts covers only
//! the partitions the wake-ups named (nothing is pending elsewhere); reads
//! while work is held cover every partition, to count it all. A read whose
//! strategy says run applies the batch in transactions of up to
//! [`MAX_TOGETHER`](super) streams each (one claim and one commit for a run
//! of up to that many streams); the feed checkpoint moves only then, so
//! held work is never skipped, whoever runs it (another process, a
//! triggered wait).

use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;
use whizbang_core::strategy::{Decision, PendingState, SyncStrategy};
use whizbang_core::PerspectiveMode;

/// What the runner declares of one perspective for the operator tool.
pub(crate) struct Declared {
    pub(crate) name: &'static str,
    pub(crate) mode: PerspectiveMode,
    /// `SyncStrategy::describe`.
    pub(crate) strategy: String,
    /// The event types it handles; `None` for a keyed perspective (its
    /// cursor is not per stream, so the tool does not count its lag by stream).
    pub(crate) event_types: Option<Vec<&'static str>>,
}

/// Records each perspective's mode, strategy text and handled event types in
/// `wh_perspective_strategies`, for the operator tool's `status`.
pub(crate) async fn declare(
    pool: &PgPool,
    me: Uuid,
    perspectives: &[Declared],
) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = perspectives.iter().map(|p| p.name).collect();
    let modes: Vec<&str> = perspectives
        .iter()
        .map(|p| match p.mode {
            PerspectiveMode::Inline => "inline",
            _ => "async",
        })
        .collect();
    // Bounded as the column is: a custom strategy's text is the user's.
    let texts: Vec<String> = perspectives
        .iter()
        .map(|p| p.strategy.chars().take(100).collect())
        .collect();
    // One JSON array (or null) per perspective: unnest cannot take an
    // array of arrays of different lengths.
    let types: Vec<Option<String>> = perspectives
        .iter()
        .map(|p| {
            p.event_types
                .as_ref()
                .map(|t| serde_json::Value::from(t.clone()).to_string())
        })
        .collect();
    sqlx::query(
        "insert into wh_perspective_strategies
                (perspective, mode, strategy, declared_by, event_types)
         select p, m, case when s = '' then '?' else s end, $4,
                case when ty is not null then coalesce(
                    (select array_agg(t) from jsonb_array_elements_text(ty::jsonb) as t),
                    '{}') end
           from unnest($1::text[], $2::text[], $3::text[], $5::text[]) as d(p, m, s, ty)
         on conflict (perspective) do update
            set mode = excluded.mode, strategy = excluded.strategy,
                event_types = excluded.event_types,
                declared_by = excluded.declared_by, updated_at = now()",
    )
    .bind(&names)
    .bind(&modes)
    .bind(&texts)
    .bind(me)
    .bind(&types)
    .execute(pool)
    .await?;
    Ok(())
}

/// One perspective's schedule.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    /// Pending events the last read found.
    seen: u64,
    /// Wake-ups since that read.
    wakes: u64,
    /// When pending work was first seen.
    since: Option<Instant>,
    /// When the perspective last ran.
    last_run: Option<Instant>,
    /// Read again no earlier than this (unless the wake-ups say run).
    pub(crate) due: Option<Instant>,
    /// The last read saw committed events the horizon held back (an older
    /// transaction was open): read again at the next recheck, whatever the
    /// wake-ups say, as their NOTIFYs were already counted.
    reread: bool,
    /// Nothing known pending: the last read found nothing (and the horizon
    /// held nothing back) or the last run took everything. New work is then
    /// in the partitions the wake-ups name: the read that starts the
    /// strategy's clock covers those only (a rescan still reads them all).
    idle: bool,
}

impl Schedule {
    fn state(&self, pending: u64, now: Instant) -> PendingState {
        PendingState::new(
            pending.max(1),
            self.since.map_or(Duration::ZERO, |t| now - t),
            self.last_run.map(|t| now - t),
        )
    }

    /// Counts a wake-up (new events somewhere).
    pub(crate) fn woke(&mut self) {
        self.wakes += 1;
    }

    /// Whether to read the feed now.
    pub(crate) fn should_read(&self, strategy: &dyn SyncStrategy, now: Instant) -> bool {
        match self.due {
            _ if self.reread => true,
            None => true,
            Some(due) if due <= now => true,
            Some(_) => matches!(
                strategy.decide_guarded(&self.state(self.seen + self.wakes, now)),
                Decision::Run { .. }
            ),
        }
    }

    /// Whether nothing is known pending (see [`Schedule::idle`]): the next
    /// read need only cover the partitions a wake-up named.
    pub(crate) fn is_idle(&self) -> bool {
        self.idle
    }

    /// After a read that found `pending` events to apply (and, `held_back`,
    /// saw committed events the horizon held back): whether to apply them
    /// now (else the due time is set).
    pub(crate) fn run_now(
        &mut self,
        strategy: &dyn SyncStrategy,
        pending: u64,
        held_back: bool,
        now: Instant,
    ) -> bool {
        self.wakes = 0;
        self.reread = held_back;
        if pending == 0 {
            self.seen = 0;
            self.since = None;
            self.due = None;
            self.idle = !held_back;
            return true;
        }
        self.idle = false;
        self.seen = pending;
        self.since.get_or_insert(now);
        match strategy.decide_guarded(&self.state(pending, now)) {
            Decision::Run { .. } => {
                self.due = None;
                true
            }
            Decision::Wait(d) => {
                self.due = Some(now + d);
                false
            }
        }
    }

    /// After a run: `more` when the read filled its cap (more may wait).
    pub(crate) fn ran(&mut self, now: Instant, more: bool) {
        self.last_run = Some(now);
        self.seen = 0;
        self.since = more.then_some(now);
        self.idle = !more && !self.reread;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whizbang_core::strategy::{Batch, Scheduled};

    #[test]
    fn a_batch_is_read_again_when_the_wakeups_could_fill_it() {
        let batch = Batch {
            max_events: 10,
            max_wait: Duration::from_secs(3600),
        };
        let now = Instant::now();
        let mut s = Schedule::default();
        assert!(s.should_read(&batch, now));
        assert!(!s.run_now(&batch, 4, false, now));
        assert!(!s.should_read(&batch, now));
        for _ in 0..5 {
            s.woke();
        }
        assert!(!s.should_read(&batch, now), "9 < 10: not yet");
        s.woke();
        assert!(s.should_read(&batch, now));
        assert!(s.run_now(&batch, 10, false, now));
        s.ran(now, false);
        assert!(s.due.is_none());
    }

    #[test]
    fn a_schedule_is_not_read_before_it_is_due() {
        let every = Scheduled {
            interval: Duration::from_secs(60),
        };
        let now = Instant::now();
        let mut s = Schedule::default();
        assert!(!s.run_now(&every, 1, true, now));
        assert!(s.should_read(&every, now), "events held back: read again");
        assert!(!s.run_now(&every, 1, false, now));
        for _ in 0..1000 {
            s.woke();
        }
        assert!(!s.should_read(&every, now));
        assert!(s.should_read(&every, now + Duration::from_secs(60)));
    }

    #[test]
    fn a_batch_is_idle_once_nothing_is_pending() {
        let batch = Batch {
            max_events: 10,
            max_wait: Duration::from_millis(50),
        };
        let now = Instant::now();
        let later = now + Duration::from_millis(50);
        let mut s = Schedule::default();
        assert!(!s.is_idle(), "the first read covers every partition");
        assert!(s.run_now(&batch, 0, false, now));
        assert!(s.is_idle());
        assert!(!s.run_now(&batch, 2, false, now));
        assert!(!s.is_idle(), "work held: every partition is counted");
        assert!(s.run_now(&batch, 2, false, later));
        s.ran(later, true);
        assert!(!s.is_idle(), "the read filled its cap: more may wait");
        assert!(s.run_now(&batch, 10, true, later));
        s.ran(later, false);
        assert!(!s.is_idle(), "events held back are pending");
        assert!(s.run_now(&batch, 0, false, later));
        assert!(s.is_idle());
    }
}

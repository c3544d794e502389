//! The partitioned runner's side of a perspective whose
//! [`SyncStrategy`](whizbang_core::strategy::SyncStrategy) holds work back
//! (batch, scheduled, custom).
//!
//! The runner reads such a perspective's feed only when its strategy may
//! say run: after a read that found work and a `Wait(d)`, it sets a due
//! time and skips the perspective until then, unless enough wake-ups came
//! in meanwhile (each NOTIFY is at least one event) that the strategy would
//! run on them. A read also counts the pending events the snapshot horizon
//! holds back (committed behind an older open transaction): they are
//! pending, so the NOTIFYs already taken in for them need not make it read
//! again; only when they alone would make the strategy run is the feed read
//! again at the next recheck, until they are visible. After a run, the
//! clock of the events its read saw held back starts at once, with no read
//! of its own. Once the perspective is idle (its last read found nothing,
//! or its last run took everything), the read a wake-up starts covers only
//! the partitions the wake-ups named (nothing is pending elsewhere); reads
//! while work is held cover every partition, to count it all. A read whose
//! strategy says run applies the batch in transactions of up to
//! [`MAX_TOGETHER`](super) streams each (one claim and one commit for a run
//! of up to that many streams), with the feed checkpoint moving in that
//! claim's transaction ([`Ride`](super::feed::Ride)); the checkpoint moves
//! only then, so held work is never skipped, whoever runs it (another
//! process, a triggered wait).

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
    /// Pending events the last read found, those the horizon held back
    /// included (after a run: those held back, still pending).
    seen: u64,
    /// Of `seen`, the events the horizon held back at the last read.
    held: u64,
    /// Wake-ups since that read.
    wakes: u64,
    /// When pending work was first seen.
    since: Option<Instant>,
    /// When the perspective last ran.
    last_run: Option<Instant>,
    /// Read again no earlier than this (unless the wake-ups say run).
    pub(crate) due: Option<Instant>,
    /// Read again at the next recheck, whatever the wake-ups say: the
    /// strategy would run on the events counted, but some of them the
    /// horizon held back (an older transaction was open), so they cannot be
    /// applied yet; or the last read could not count all the events held
    /// back.
    reread: bool,
    /// Nothing known pending: the last read found nothing or the last run
    /// took everything. New work is then in the partitions the wake-ups
    /// name: the read that starts the strategy's clock covers those only (a
    /// rescan still reads them all).
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

    fn runs(&self, strategy: &dyn SyncStrategy, pending: u64, now: Instant) -> Decision {
        strategy.decide_guarded(&self.state(pending, now))
    }

    /// Counts `notices` notifications of new events (each at least one
    /// event).
    pub(crate) fn woke(&mut self, notices: u64) {
        self.wakes += notices;
    }

    /// Whether to read the feed now; `rescan`: at the runner's rescan
    /// timer, which reads a perspective that heard of new events since its
    /// last read, if more events could make its strategy run (a
    /// notification may stand for several events, so the count of them may
    /// fall short of what the strategy would run on: this bounds the wait by
    /// the rescan interval, not by the strategy's).
    pub(crate) fn should_read(
        &self,
        strategy: &dyn SyncStrategy,
        now: Instant,
        rescan: bool,
    ) -> bool {
        match self.due {
            _ if self.reread => true,
            None => true,
            Some(due) if due <= now => true,
            Some(_)
                if rescan
                    && self.wakes > 0
                    && matches!(self.runs(strategy, u64::MAX, now), Decision::Run { .. }) =>
            {
                true
            }
            Some(_) => matches!(
                self.runs(strategy, self.seen + self.wakes, now),
                Decision::Run { .. }
            ),
        }
    }

    /// Whether nothing is known pending (see [`Schedule::idle`]): the next
    /// read need only cover the partitions a wake-up named.
    pub(crate) fn is_idle(&self) -> bool {
        self.idle
    }

    /// After a read that found `pending` events to apply and `held` more
    /// that the horizon held back (`uncounted`: maybe more than that):
    /// whether to apply the `pending` ones now (else the due time is set,
    /// or, when only the held-back ones would make the strategy run, the
    /// feed is read again at the next recheck).
    ///
    /// The held-back events count as pending: the wake-ups for them came
    /// before this read, so the count must not wait for another read.
    pub(crate) fn run_now(
        &mut self,
        strategy: &dyn SyncStrategy,
        pending: u64,
        held: u64,
        uncounted: bool,
        now: Instant,
    ) -> bool {
        self.wakes = 0;
        self.reread = uncounted;
        self.held = held;
        let total = pending + held;
        if total == 0 {
            self.seen = 0;
            self.since = None;
            self.due = None;
            self.idle = !uncounted;
            return true;
        }
        self.idle = false;
        self.seen = total;
        self.since.get_or_insert(now);
        match self.runs(strategy, total, now) {
            Decision::Wait(d) => {
                self.due = Some(now + d);
                false
            }
            // Applied now: what is visible makes the run.
            Decision::Run { .. }
                if held == 0
                    || pending > 0
                        && matches!(self.runs(strategy, pending, now), Decision::Run { .. }) =>
            {
                self.due = None;
                true
            }
            // Only with the held-back events would it run: wait for the
            // horizon to pass them.
            Decision::Run { .. } => {
                self.due = None;
                self.reread = true;
                false
            }
        }
    }

    /// After a run of the last read: `more` when the read filled its cap
    /// (more may wait). The events that read saw held back are still
    /// pending: the strategy's clock for them starts now, with no read.
    pub(crate) fn ran(&mut self, strategy: &dyn SyncStrategy, now: Instant, more: bool) {
        self.last_run = Some(now);
        self.seen = self.held;
        self.due = None;
        if more || self.held > 0 || self.reread {
            self.since = Some(now);
            self.idle = false;
            if !more && !self.reread {
                if let Decision::Wait(d) = self.runs(strategy, self.held, now) {
                    self.due = Some(now + d);
                }
            }
        } else {
            self.since = None;
            self.idle = true;
        }
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
        assert!(s.should_read(&batch, now, false));
        assert!(!s.run_now(&batch, 4, 0, false, now));
        assert!(!s.should_read(&batch, now, false));
        for _ in 0..5 {
            s.woke(1);
        }
        assert!(!s.should_read(&batch, now, false), "9 < 10: not yet");
        s.woke(1);
        assert!(s.should_read(&batch, now, false));
        assert!(s.run_now(&batch, 10, 0, false, now));
        s.ran(&batch, now, false);
        assert!(s.due.is_none());
    }

    #[test]
    fn a_schedule_is_not_read_before_it_is_due() {
        let every = Scheduled {
            interval: Duration::from_secs(60),
        };
        let now = Instant::now();
        let mut s = Schedule::default();
        assert!(!s.run_now(&every, 1, 3, false, now));
        assert!(
            !s.should_read(&every, now, false),
            "events held back are counted: no read before the schedule"
        );
        assert!(!s.run_now(&every, 1, 0, true, now));
        assert!(
            s.should_read(&every, now, false),
            "held-back events not all counted: read again"
        );
        assert!(!s.run_now(&every, 1, 0, false, now));
        for _ in 0..1000 {
            s.woke(1);
        }
        assert!(!s.should_read(&every, now, false));
        assert!(s.should_read(&every, now + Duration::from_secs(60), false));
    }

    #[test]
    fn a_rescan_reads_a_batch_that_heard_of_new_events() {
        let batch = Batch {
            max_events: 10,
            max_wait: Duration::from_secs(3600),
        };
        let every = Scheduled {
            interval: Duration::from_secs(60),
        };
        let now = Instant::now();
        let (mut b, mut e) = (Schedule::default(), Schedule::default());
        assert!(!b.run_now(&batch, 4, 0, false, now));
        assert!(!e.run_now(&every, 4, 0, false, now));
        assert!(
            !b.should_read(&batch, now, true),
            "nothing new since the read"
        );
        b.woke(1);
        e.woke(1);
        assert!(!b.should_read(&batch, now, false), "5 < 10");
        assert!(
            b.should_read(&batch, now, true),
            "one notification may be several events: the rescan counts them"
        );
        assert!(
            !e.should_read(&every, now, true),
            "no count makes a schedule run early"
        );
    }

    #[test]
    fn held_back_events_count_towards_the_batch_without_a_read() {
        let batch = Batch {
            max_events: 5,
            max_wait: Duration::from_secs(3600),
        };
        let now = Instant::now();
        let mut s = Schedule::default();
        assert!(!s.run_now(&batch, 3, 1, false, now));
        assert!(
            !s.should_read(&batch, now, false),
            "4 < 5 and nothing to wait for"
        );
        s.woke(1);
        assert!(
            s.should_read(&batch, now, false),
            "3 read, 1 held back, 1 woken"
        );
    }

    #[test]
    fn a_batch_made_only_by_held_back_events_waits_for_the_horizon() {
        let batch = Batch {
            max_events: 5,
            max_wait: Duration::from_secs(3600),
        };
        let now = Instant::now();
        let mut s = Schedule::default();
        assert!(
            !s.run_now(&batch, 4, 1, false, now),
            "the fifth is not visible yet: nothing runs"
        );
        assert!(
            s.should_read(&batch, now, false),
            "read again at the recheck"
        );
        assert!(s.run_now(&batch, 5, 0, false, now));
        s.ran(&batch, now, false);
        assert!(s.is_idle());
    }

    #[test]
    fn a_run_leaves_held_back_events_on_a_running_clock() {
        let batch = Batch {
            max_events: 100,
            max_wait: Duration::from_millis(50),
        };
        let now = Instant::now();
        let later = now + Duration::from_millis(50);
        let mut s = Schedule::default();
        assert!(!s.run_now(&batch, 3, 0, false, now));
        assert!(
            s.run_now(&batch, 15, 2, false, later),
            "due: what is visible runs"
        );
        s.ran(&batch, later, false);
        assert!(!s.is_idle(), "the two held back are pending");
        assert!(
            !s.should_read(&batch, later, false),
            "their clock started with the run: no read to start it"
        );
        assert!(s.should_read(&batch, later + Duration::from_millis(50), false));
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
        assert!(s.run_now(&batch, 0, 0, false, now));
        assert!(s.is_idle());
        assert!(!s.run_now(&batch, 2, 0, false, now));
        assert!(!s.is_idle(), "work held: every partition is counted");
        assert!(s.run_now(&batch, 2, 0, false, later));
        s.ran(&batch, later, true);
        assert!(!s.is_idle(), "the read filled its cap: more may wait");
        assert!(s.run_now(&batch, 10, 0, true, later));
        s.ran(&batch, later, false);
        assert!(
            !s.is_idle(),
            "events held back, not all counted, may be pending"
        );
        assert!(s.run_now(&batch, 0, 0, false, later));
        assert!(s.is_idle());
    }
}

//! The queue conformance suite on the memory queue (manual clock: no
//! sleeping), plus what only the memory queue shows.

use std::time::Duration;
use whizbang_core::backend::conformance::queue::QueueUnderTest;
use whizbang_core::queue::{
    EnqueueOutcome, ManualClock, MemoryMessageQueue, MessageQueue, QueueOptions, QueuedMessage,
};
use whizbang_core::InstanceId;

fn manual(options: QueueOptions) -> QueueUnderTest {
    let clock = ManualClock::new();
    QueueUnderTest::manual(
        MemoryMessageQueue::with_clock(options, clock.clone()),
        clock,
    )
}

mod default_options {
    whizbang_core::queue_conformance_tests!(|| async {
        super::manual(whizbang_core::queue::QueueOptions::default())
    });
}

/// The attempt-limit contracts hold for any limit, one attempt included.
#[tokio::test]
async fn the_attempt_limit_contracts_hold_for_limits_of_one_to_three() {
    use whizbang_core::backend::conformance::queue as contracts;
    for max in 1..=3 {
        let factory = move || async move { manual(QueueOptions::default().max_attempts(max)) };
        contracts::failing_at_the_attempt_limit_dead_letters_the_message_with_its_error(&factory)
            .await;
        contracts::expired_leases_count_as_attempts_and_dead_letter_at_the_limit(&factory).await;
        contracts::dead_letters_are_listed_and_replayed_into_the_queue(&factory).await;
    }
}

#[tokio::test]
async fn run_all_passes_on_the_system_clock_with_short_ticks() {
    // The retry backoff well below the tick (short leases expire in a tick).
    let options = QueueOptions::default().retry_backoff(Duration::ZERO, Duration::ZERO);
    let factory = move || {
        let options = options.clone();
        async move {
            QueueUnderTest::real_time(
                MemoryMessageQueue::with_options(options),
                Duration::from_millis(5),
            )
        }
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        whizbang_core::backend::conformance::queue::run_all(&factory),
    )
    .await
    .expect("the suite finished");
}

#[tokio::test]
async fn a_typed_envelope_round_trips_through_the_queue() {
    #[derive(whizbang_core::Event, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    #[event(name = "queue_memory.shipped")]
    struct Shipped {
        #[stream_key]
        order: uuid::Uuid,
        items: Vec<String>,
    }
    let cause = whizbang_core::Envelope::new(Shipped {
        order: uuid::Uuid::now_v7(),
        items: vec![],
    });
    let mut envelope = whizbang_core::Envelope::caused_by(
        Shipped {
            order: uuid::Uuid::now_v7(),
            items: vec!["book".into()],
        },
        &cause,
    );
    envelope.metadata.insert("tenant", "t1");
    let queued = QueuedMessage::from_envelope(&envelope).expect("serialises");
    assert_eq!(queued.message_type, "queue_memory.shipped");
    let queue = MemoryMessageQueue::new();
    let EnqueueOutcome::Leased(leased) = queue
        .enqueue_and_lease(queued, InstanceId::new(), Duration::from_secs(5))
        .await
        .expect("enqueue")
    else {
        panic!("a new message is leased")
    };
    let back = leased.message.decode::<Shipped>().expect("decodes");
    assert_eq!(back, envelope);
    let wrong = leased.message.decode::<WrongType>();
    assert!(
        matches!(wrong, Err(whizbang_core::Error::InvalidInput(ref t)) if t.contains("not a `WrongType`")),
        "{wrong:?}"
    );

    #[derive(whizbang_core::Command, serde::Serialize, serde::Deserialize, Debug)]
    struct WrongType;
}

/// A failed attempt's message waits its backoff (base, doubling, capped)
/// before another lease takes it; a release does not wait.
#[tokio::test]
async fn a_failed_message_waits_an_exponential_backoff_before_its_next_lease() {
    let clock = ManualClock::new();
    let options = QueueOptions::default()
        .max_attempts(10)
        .retry_backoff(Duration::from_secs(2), Duration::from_secs(10));
    let queue = MemoryMessageQueue::with_clock(options, clock.clone());
    let me = InstanceId::new();
    let lease = Duration::from_secs(600);
    let m = QueuedMessage::from_json("queue_memory.flaky", "{}").unwrap();
    queue.enqueue_and_lease(m.clone(), me, lease).await.unwrap();
    // Waits after attempts 1..=4: 2 s, 4 s, 8 s, then the 10 s cap.
    for (attempt, wait) in [(1, 2), (2, 4), (3, 8), (4, 10), (5, 10)] {
        queue.fail(m.id, me, "flaky").await.unwrap();
        clock.advance(Duration::from_secs(wait) - Duration::from_millis(1));
        assert!(
            queue
                .lease_orphaned(me, 10, lease)
                .await
                .unwrap()
                .is_empty(),
            "attempt {attempt}: not leasable before its backoff of {wait} s"
        );
        let lag = queue.lag().await.unwrap().unwrap();
        assert_eq!(
            lag.depth, 0,
            "a message in its backoff is not counted as lag"
        );
        clock.advance(Duration::from_millis(1));
        let again = queue.lease_orphaned(me, 10, lease).await.unwrap();
        assert_eq!(again.len(), 1, "attempt {attempt}: leasable after {wait} s");
        assert_eq!(again[0].attempt, attempt + 1);
    }
    // A release gives the message back at once.
    queue.release(&[m.id], me).await.unwrap();
    assert_eq!(queue.lease_orphaned(me, 10, lease).await.unwrap().len(), 1);
}

/// One tick records completions and failures, renews, leases and measures
/// the lag; ids the instance no longer holds come back as lost and change
/// nothing, without stopping the rest.
#[tokio::test]
async fn a_tick_reports_renews_and_leases_in_one_call_and_answers_lost_ids() {
    use whizbang_core::queue::{FailOutcome, TickRequest};
    let clock = ManualClock::new();
    let queue = MemoryMessageQueue::with_clock(QueueOptions::default(), clock.clone());
    let (me, other) = (InstanceId::new(), InstanceId::new());
    let lease = Duration::from_secs(30);
    let mut ids = Vec::new();
    for i in 0..4 {
        let m = QueuedMessage::from_json("queue_memory.tick", &format!("{{\"i\":{i}}}")).unwrap();
        ids.push(m.id);
        queue.enqueue_and_lease(m, me, lease).await.unwrap();
    }
    let stranger = QueuedMessage::from_json("queue_memory.tick", "{}").unwrap();
    queue
        .enqueue_and_lease(stranger.clone(), other, Duration::from_secs(1))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(5)); // the other instance's lease expired
    let response = queue
        .tick(
            me,
            TickRequest::lease(10, lease)
                .complete(ids[0], "h")
                .fail(ids[1], "boom")
                .renew([ids[2], ids[3], stranger.id])
                .measure_lag(),
        )
        .await
        .unwrap();
    assert_eq!(response.completed, [ids[0]]);
    assert_eq!(
        response.failed,
        [(ids[1], FailOutcome::Retry { attempts: 1 })]
    );
    assert_eq!(
        response.lost,
        [stranger.id],
        "a lease it does not hold is lost"
    );
    let mut renewed = response.renewed.clone();
    renewed.sort();
    let mut want = vec![ids[2], ids[3]];
    want.sort();
    assert_eq!(renewed, want, "the others are renewed anyway");
    assert_eq!(response.leased.len(), 1, "the expired lease is taken over");
    assert_eq!(response.leased[0].message.id, stranger.id);
    assert_eq!(
        response.lag.map(|l| l.depth),
        Some(0),
        "nothing is left leasable after the tick"
    );
    assert!(queue.processed(ids[0]).await.unwrap().is_some());
    // A completion sent again (an earlier tick recorded it) is lost.
    let again = queue
        .tick(me, TickRequest::lease(0, lease).complete(ids[0], "h"))
        .await
        .unwrap();
    assert_eq!(again.lost, [ids[0]]);
    assert!(again.completed.is_empty());
}

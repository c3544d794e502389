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
    let factory =
        || async { QueueUnderTest::real_time(MemoryMessageQueue::new(), Duration::from_millis(5)) };
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

//! Lens reads: `list` returns each model with its id and the stream version it
//! reflects; `get` returns the model.

mod common;
use common::bounded;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use whizbang_core::{perspective, Event, LensQuery, ListQuery, Runtime, StreamId, Versioned};

#[derive(Event, Serialize, Deserialize)]
#[event(name = "lens.tallied")]
struct Tallied {
    #[stream_key]
    counter: Uuid,
}

#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Tally {
    n: u64,
}

struct Tallies;

#[perspective(model = Tally, mode = inline)]
impl Tallies {
    fn tallied(t: &mut Tally, _: &Tallied) {
        t.n += 1;
    }
}

/// Three counters with 1, 2 and 3 events, by ascending id.
async fn three_counters(rt: &Runtime) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    ids.sort();
    let scope = rt.scope();
    for (i, counter) in ids.iter().enumerate() {
        for _ in 0..=i {
            scope.publish(Tallied { counter: *counter }).await.unwrap();
        }
    }
    bounded(scope.complete()).await.unwrap();
    ids
}

#[tokio::test(start_paused = true)]
async fn list_returns_each_model_with_its_id_and_version_ordered_by_id() {
    let rt = Runtime::in_memory().unwrap();
    let ids = three_counters(&rt).await;
    let all = bounded(rt.lens::<Tallies>().list(ListQuery::all()))
        .await
        .unwrap();
    let expected: Vec<Versioned<Tally>> = ids
        .iter()
        .zip(1..)
        .map(|(id, n)| Versioned {
            id: StreamId::from(*id),
            version: n,
            model: Tally { n },
        })
        .collect();
    assert_eq!(all, expected);
    // `Versioned` dereferences to the model.
    assert_eq!(all.iter().map(|t| t.n).collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_filtered_page_keeps_ids_and_versions() {
    let rt = Runtime::in_memory().unwrap();
    let ids = three_counters(&rt).await;
    let page = bounded(
        rt.lens::<Tallies>().list(
            ListQuery::all()
                .filter(|t: &Tally| t.n >= 2)
                .offset(1)
                .limit(5),
        ),
    )
    .await
    .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!((page[0].id, page[0].version), (StreamId::from(ids[2]), 3));
    assert_eq!(page[0].clone().into_inner(), Tally { n: 3 });
}

#[tokio::test(start_paused = true)]
async fn get_still_returns_the_model() {
    let rt = Runtime::in_memory().unwrap();
    let ids = three_counters(&rt).await;
    let lens = rt.lens::<Tallies>();
    assert_eq!(lens.get(ids[1].into()).await.unwrap(), Some(Tally { n: 2 }));
    assert_eq!(lens.get(Uuid::now_v7().into()).await.unwrap(), None);
}

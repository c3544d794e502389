//! A keyed (multi-stream) perspective catching up from scratch on the
//! in-memory stores: orders of many order streams folded into their
//! customers' totals, in global order, one transaction per batch, against a
//! raw loop over the same stored events (decode, key, fold into a map) in
//! the same run: the ratio is the engine's cost over the fold itself.
//!
//! Run: `cargo bench -p whizbang-core --bench keyed` (`-- --quick` for a
//! short run). Rounds alternate between the two variants so drift hits both
//! alike; the figure reported is the ratio of the median times.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;
use whizbang_core::perspective::KEYED_CURSOR;
use whizbang_core::store::memory::{MemoryEventStore, MemoryPerspectiveStore};
use whizbang_core::store::{EventMetadata, NewEvent, StoredEvent, StreamAppend};
use whizbang_core::{
    perspective, Event, EventId, ExpectedVersion, Message, MessageId, Metadata, Perspective,
    Registry, Runtime, StreamId,
};

#[derive(Event, Serialize, Deserialize, Clone)]
struct OrderPlaced {
    #[stream_key]
    order: Uuid,
    customer: Uuid,
    cents: i64,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Totals {
    cents: i64,
    orders: u32,
}

struct CustomerTotals;

#[perspective(model = Totals, key = customer)]
impl CustomerTotals {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.cents += e.cents;
        t.orders += 1;
    }
}

/// The same fold, one model per order stream: the per-stream engine.
struct OrderTotals;

#[perspective(model = Totals)]
impl OrderTotals {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.cents += e.cents;
        t.orders += 1;
    }
}

/// `n` orders on `n / 5` order streams for `customers` customers, stored
/// (typed payloads kept, as the in-process store does).
fn stored(n: usize, customers: usize) -> MemoryEventStore {
    let store = MemoryEventStore::new();
    let who: Vec<Uuid> = (0..customers).map(|_| Uuid::now_v7()).collect();
    let orders: Vec<Uuid> = (0..(n / 5).max(1)).map(|_| Uuid::now_v7()).collect();
    let appends = (0..n)
        .map(|i| {
            let event = OrderPlaced {
                order: orders[i % orders.len()],
                customer: who[i % who.len()],
                cents: i64::try_from(i % 100).unwrap(),
            };
            let stream_id = StreamId::from(event.order);
            StreamAppend {
                stream_id,
                expected: ExpectedVersion::Any,
                events: vec![NewEvent {
                    event_id: EventId::new(),
                    stream_id,
                    event_type: OrderPlaced::NAME,
                    data: serde_json::value::to_raw_value(&event).unwrap(),
                    metadata: EventMetadata {
                        correlation_id: MessageId::new(),
                        causation_id: None,
                        timestamp: std::time::SystemTime::now(),
                        extra: Metadata::default(),
                    },
                    typed: Some(Arc::new(event)),
                    outbound: false,
                }],
            }
        })
        .collect();
    store.append_now(appends).unwrap();
    store
}

/// The baseline: the stored events in global order, each decoded (the
/// typed payload), keyed and folded into a map.
fn raw_fold(events: &[Arc<StoredEvent>]) -> HashMap<Uuid, Totals> {
    let mut out: HashMap<Uuid, Totals> = HashMap::new();
    for ev in events {
        if ev.event_type != OrderPlaced::NAME {
            continue;
        }
        let Some(e) = ev
            .typed
            .as_deref()
            .and_then(|t| t.downcast_ref::<OrderPlaced>())
        else {
            continue;
        };
        let t = out.entry(e.customer).or_default();
        t.cents += e.cents;
        t.orders += 1;
    }
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this
    // runs as a smoke test: its figures are not measurements.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, n) = if smoke {
        (1, 200)
    } else if quick {
        (5, 20_000)
    } else {
        (21, 100_000)
    };
    let customers = 100;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = Arc::new(
        Registry::builder()
            .perspective::<CustomerTotals>()
            .perspective::<OrderTotals>()
            .build()
            .unwrap(),
    );
    let (mut keyed, mut raw, mut per_stream) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let events = stored(n, customers);
        let all = events.all_events();
        let started = Instant::now();
        let folded = black_box(raw_fold(&all));
        raw.push(started.elapsed().as_secs_f64());

        let runtime = rt.block_on(async {
            Runtime::builder()
                .registry(Arc::clone(&registry))
                .event_store(events)
                .perspective_store(MemoryPerspectiveStore::new())
                .build()
                .unwrap()
        });
        let started = Instant::now();
        rt.block_on(runtime.catch_up(CustomerTotals::NAME, KEYED_CURSOR))
            .unwrap();
        keyed.push(started.elapsed().as_secs_f64());
        // The keyed models are the fold's.
        for (customer, want) in folded.iter().take(3) {
            let got = rt
                .block_on(runtime.lens::<CustomerTotals>().get_by_key(*customer))
                .unwrap()
                .unwrap();
            assert_eq!((got.cents, got.orders), (want.cents, want.orders));
        }

        // The per-stream engine on the same events: a catch-up per stream
        // (what the runner does after appends), each its own transaction.
        let mut streams: Vec<StreamId> = all.iter().map(|e| e.stream_id).collect();
        streams.sort_unstable();
        streams.dedup();
        let started = Instant::now();
        rt.block_on(async {
            for stream in &streams {
                runtime.catch_up(OrderTotals::NAME, *stream).await.unwrap();
            }
        });
        per_stream.push(started.elapsed().as_secs_f64());
    }
    let (k, r, p) = (
        median(&mut keyed),
        median(&mut raw),
        median(&mut per_stream),
    );
    #[allow(clippy::cast_precision_loss)] // event counts far below 2^52
    let rate = |secs: f64| n as f64 / secs;
    println!(
        "keyed bench{}: {n} events, {customers} customers, {} order streams, {rounds} rounds",
        if smoke {
            " (smoke run: not a measurement)"
        } else {
            ""
        },
        n / 5
    );
    println!(
        "keyed catch-up: {:.0} events/s (median {:.2} ms); raw fold loop: {:.0} events/s \
         (median {:.2} ms); keyed / raw throughput: {:.2}x",
        rate(k),
        k * 1e3,
        rate(r),
        r * 1e3,
        r / k
    );
    println!(
        "per-stream catch-ups of the same events: {:.0} events/s (median {:.2} ms); \
         keyed / per-stream throughput: {:.2}x",
        rate(p),
        p * 1e3,
        p / k
    );
}

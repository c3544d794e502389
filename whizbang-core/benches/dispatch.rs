//! Per-message cost of `scope.send` (a command whose receptor emits one event,
//! applied by one inline perspective, scope opened and completed per message)
//! against the same work hand-written as direct calls, in the same run.
//!
//! Also: one scope that touched 20,000 streams, completed (the flush must be
//! linear in the streams a scope touched).
//!
//! Run: `cargo bench -p whizbang-core --bench dispatch`
//! Rounds alternate between the two variants so drift hits both alike; the
//! figure reported is the ratio of the median per-message times.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use uuid::Uuid;
use whizbang_core::store::memory::{MemoryEventStore, MemoryPerspectiveStore};
use whizbang_core::store::{
    Checkpoint, EventMetadata, ModelValue, NewEvent, PerspectiveStore, StreamAppend,
};
use whizbang_core::{
    perspective, receptor, Command, Context, Event, EventId, ExpectedVersion, Message, MessageId,
    Metadata, Receptor, Result, Runtime, StreamId,
};

#[derive(Command, Serialize, Deserialize, Clone)]
#[command(output = i64)]
struct PlaceOrder {
    order_id: Uuid,
    cents: i64,
}

#[derive(Event, Serialize, Deserialize, Clone)]
struct OrderPlaced {
    #[stream_key]
    order_id: Uuid,
    cents: i64,
}

#[derive(Default)]
struct Desk;

#[receptor]
impl Receptor<PlaceOrder> for Desk {
    async fn handle(&self, cmd: PlaceOrder, cx: &mut Context) -> Result<i64> {
        cx.emit(OrderPlaced {
            order_id: cmd.order_id,
            cents: cmd.cents,
        })?;
        Ok(cmd.cents)
    }
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Totals {
    cents: i64,
    orders: u32,
}

struct TotalsView;

#[perspective(model = Totals, mode = inline)]
impl TotalsView {
    fn placed(t: &mut Totals, e: &OrderPlaced) {
        t.cents += e.cents;
        t.orders += 1;
    }
}

/// The hand-written equivalent: serialize, append with a version, apply, return.
#[derive(Default)]
struct HandWritten {
    streams: Mutex<HashMap<Uuid, Vec<Arc<Row>>>>,
    models: Mutex<HashMap<Uuid, (Totals, u64)>>,
}

#[allow(dead_code)] // fields are the stored data; only written
struct Row {
    event_id: Uuid,
    version: u64,
    event_type: &'static str,
    data: Box<RawValue>,
}

impl HandWritten {
    fn place_order(&self, cmd: PlaceOrder) -> std::result::Result<i64, serde_json::Error> {
        let event = OrderPlaced {
            order_id: cmd.order_id,
            cents: cmd.cents,
        };
        let data = serde_json::value::to_raw_value(&event)?;
        let version = {
            let mut streams = self.streams.lock().unwrap();
            let stream = streams.entry(event.order_id).or_default();
            let version = stream.len() as u64 + 1;
            stream.push(Arc::new(Row {
                event_id: Uuid::now_v7(),
                version,
                event_type: "OrderPlaced",
                data,
            }));
            version
        };
        let mut models = self.models.lock().unwrap();
        let (model, at) = models.entry(event.order_id).or_default();
        model.cents += event.cents;
        model.orders += 1;
        *at = version;
        Ok(cmd.cents)
    }
}

/// Baseline A: the same work as direct calls into the same in-memory stores
/// (serialize, append, claim the read model, apply, commit), without routing,
/// scope, invoker or engine. The ratio against it is the dispatcher's overhead.
async fn direct_calls(
    events: &MemoryEventStore,
    models: &MemoryPerspectiveStore,
    cmd: PlaceOrder,
) -> std::result::Result<i64, whizbang_core::Error> {
    let event = OrderPlaced {
        order_id: cmd.order_id,
        cents: cmd.cents,
    };
    let data = serde_json::value::to_raw_value(&event).unwrap();
    let stream_id = StreamId::from(event.order_id);
    let correlation = MessageId::new();
    events.append_now(vec![StreamAppend {
        stream_id,
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_id: EventId::new(),
            stream_id,
            event_type: OrderPlaced::NAME,
            data,
            metadata: EventMetadata {
                correlation_id: correlation,
                causation_id: Some(correlation),
                timestamp: std::time::SystemTime::now(),
                extra: Metadata::default(),
            },
            typed: None,
            outbound: false,
        }],
    }])?;
    let mut unit = models.claim("TotalsView", stream_id).await?;
    let version = unit.checkpoint().version + 1;
    let mut model = match unit.take_model() {
        Some(ModelValue::Typed(m)) => *m.into_any().downcast::<Totals>().unwrap(),
        _ => Totals::default(),
    };
    TotalsView::placed(&mut model, &event);
    unit.commit(
        Some(ModelValue::Typed(Box::new(model))),
        Checkpoint {
            version,
            ..Checkpoint::default()
        },
    )
    .await?;
    Ok(cmd.cents)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this runs as a
    // smoke test (a few iterations, unoptimised): its figures are not measurements.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, per_round) = if smoke {
        (1, 20)
    } else if quick {
        (5, 200)
    } else {
        (41, 2_000)
    };
    if smoke {
        println!(
            "dispatch bench: smoke run (not under `cargo bench`): figures are not measurements"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = rt.block_on(async { Runtime::in_memory() }).unwrap();
    let hand = HandWritten::default();
    let (direct_events, direct_models) = (MemoryEventStore::new(), MemoryPerspectiveStore::new());

    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut direct = Vec::new();
    for round in 0..=rounds {
        let start = Instant::now();
        rt.block_on(async {
            for i in 0..per_round {
                let cmd = PlaceOrder {
                    order_id: Uuid::now_v7(),
                    cents: i,
                };
                black_box(
                    direct_calls(&direct_events, &direct_models, black_box(cmd))
                        .await
                        .unwrap(),
                );
            }
        });
        let d = start.elapsed().as_nanos() as f64 / per_round as f64;

        let start = Instant::now();
        for i in 0..per_round {
            let cmd = PlaceOrder {
                order_id: Uuid::now_v7(),
                cents: i,
            };
            black_box(hand.place_order(black_box(cmd)).unwrap());
        }
        let b = start.elapsed().as_nanos() as f64 / per_round as f64;

        let start = Instant::now();
        rt.block_on(async {
            for i in 0..per_round {
                let scope = runtime.scope();
                let cmd = PlaceOrder {
                    order_id: Uuid::now_v7(),
                    cents: i,
                };
                black_box(scope.send(black_box(cmd)).await.unwrap());
                scope.complete().await.unwrap();
            }
        });
        let o = start.elapsed().as_nanos() as f64 / per_round as f64;
        if round > 0 {
            // round 0 warms caches and allocators
            ours.push(o);
            base.push(b);
            direct.push(d);
        }
    }
    let (o, b, d) = (median(&mut ours), median(&mut base), median(&mut direct));
    println!("dispatch: scope.send + complete (1 event, 1 inline perspective)");
    println!("  rounds: {rounds} x {per_round} messages each, medians of per-message means");
    println!("  A direct calls, same stores : {d:>7.0} ns/message");
    println!("  B minimal hand-rolled maps  : {b:>7.0} ns/message");
    println!("  whizbang scope.send         : {o:>7.0} ns/message");
    println!(
        "  ratio vs A (dispatch overhead) : {:>5.2}x (goal <= 2x)",
        o / d
    );
    println!("  ratio vs B (end to end)        : {:>5.2}x", o / b);

    wide_scope(&rt, &runtime, smoke, quick);
}

/// One scope touching many streams: the time `complete()` takes to flush them,
/// at 5k, 10k and 20k streams. Linear means the per-stream cost stays flat, so
/// the ratio of the 20k figure to the 5k figure is about 4 (it was 14.5 when the
/// flush was quadratic).
fn wide_scope(rt: &tokio::runtime::Runtime, runtime: &Runtime, smoke: bool, quick: bool) {
    let (rounds, sizes): (usize, &[i64]) = if smoke {
        (1, &[200])
    } else if quick {
        (3, &[5_000, 10_000, 20_000])
    } else {
        (7, &[5_000, 10_000, 20_000])
    };
    println!("dispatch: complete() of one scope that touched N streams");
    let mut first: Option<(i64, f64)> = None;
    for &streams in sizes {
        let mut times = Vec::new();
        for _ in 0..rounds {
            let scope = runtime.scope();
            let elapsed = rt.block_on(async {
                for i in 0..streams {
                    let cmd = PlaceOrder {
                        order_id: Uuid::now_v7(),
                        cents: i,
                    };
                    black_box(scope.send(cmd).await.unwrap());
                }
                let start = Instant::now();
                scope.complete().await.unwrap();
                start.elapsed()
            });
            times.push(elapsed.as_secs_f64() * 1e3);
        }
        let m = median(&mut times);
        let (n0, m0) = *first.get_or_insert((streams, m));
        println!(
            "  N = {streams:>6}: median {m:>8.1} ms ({:>6.0} ns/stream), {:>5.2}x the time of N = {n0} for {:.0}x the streams",
            m * 1e6 / streams as f64,
            m / m0,
            streams as f64 / n0 as f64
        );
    }
}

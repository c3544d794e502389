//! Lens push-down: containment, ordering and paging run in SQL on
//! PostgreSQL and give exactly what the in-memory reference gives.

mod support;
use support::bounded;

use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use whizbang_core::backend::{
    Checkpoint, MemoryPerspectiveStore, ModelValue, PerspectiveStore, StoredEvent,
};
use whizbang_core::perspective::ApplyError;
use whizbang_core::store::ModelQuery;
use whizbang_core::{Lens, LensQuery, ListQuery, Perspective, PerspectiveMode, StreamId};
use whizbang_postgres::PgPerspectiveStore;

/// A perspective whose model is any JSON, so one set of models can mix the
/// types a path holds. Written by hand: it is only read here.
struct Docs;

impl Perspective for Docs {
    type Model = Value;
    const NAME: &'static str = "tests.docs";
    const MODE: PerspectiveMode = PerspectiveMode::Async;
    const EVENT_TYPES: &'static [&'static str] = &[];
    fn event_type_ids() -> Vec<std::any::TypeId> {
        Vec::new()
    }
    fn apply(_: &mut Value, _: &StoredEvent) -> Result<bool, ApplyError> {
        Ok(false)
    }
}

/// Models with statuses, tags, numbers (integers and decimals), strings whose
/// byte order differs from a linguistic one, and a `rank` that is missing,
/// null, a string, a boolean or an object in some of them.
fn docs() -> Vec<Value> {
    let names = ["b", "B", "a", "A", "é", "_", "Zed", "zed", "10", "9"];
    (0..40)
        .map(|i: i64| {
            let mut doc = json!({
                "status": if i % 3 == 0 { "open" } else { "closed" },
                "total": if i % 4 == 0 { json!(i as f64 + 0.5) } else { json!(40 - i) },
                "name": names[(i as usize) % names.len()],
                "tags": if i % 2 == 0 { json!(["a", "b"]) } else { json!(["b"]) },
                "nested": { "level": i % 5, "flag": i % 2 == 0 },
            });
            let rank = match i % 7 {
                0 => None,
                1 => Some(Value::Null),
                2 => Some(json!("r")),
                3 => Some(json!(i % 2 == 0)),
                4 => Some(json!({ "x": i })),
                5 => Some(json!([i])),
                _ => Some(json!(i)),
            };
            if let Some(rank) = rank {
                doc["rank"] = rank;
            }
            doc
        })
        .collect()
}

async fn seed(stores: &[&dyn PerspectiveStore]) {
    for (i, doc) in docs().into_iter().enumerate() {
        let key = StreamId::new();
        for store in stores {
            let unit = bounded(store.claim(Docs::NAME, key)).await.unwrap();
            let value = ModelValue::Json(serde_json::value::to_raw_value(&doc).unwrap());
            let cp = Checkpoint {
                version: i as u64 + 1,
                ..Checkpoint::default()
            };
            bounded(unit.commit(Some(value), cp)).await.unwrap();
        }
    }
}

/// A named query, built fresh for each store.
type Case = (&'static str, fn() -> ListQuery<Value>);

fn queries() -> Vec<Case> {
    vec![
        ("all", ListQuery::all),
        ("contains status", || {
            ListQuery::all().contains(json!({ "status": "open" }))
        }),
        ("contains a tag", || {
            ListQuery::all().contains(json!({ "tags": ["a"] }))
        }),
        ("contains nested, number by value", || {
            ListQuery::all().contains(json!({ "nested": { "level": 2.0 } }))
        }),
        ("contains nothing matching", || {
            ListQuery::all().contains(json!({ "status": "gone" }))
        }),
        ("order by total", || ListQuery::all().order_by(&["total"])),
        ("order by total desc, paged", || {
            ListQuery::all()
                .order_by_desc(&["total"])
                .offset(5)
                .limit(7)
        }),
        ("order by name (bytes)", || {
            ListQuery::all().order_by(&["name"])
        }),
        ("order by mixed types", || {
            ListQuery::all().order_by(&["rank"])
        }),
        ("order by mixed types desc", || {
            ListQuery::all().order_by_desc(&["rank"])
        }),
        ("order by array index", || {
            ListQuery::all().order_by(&["tags", "0"])
        }),
        ("contains + order + page", || {
            ListQuery::all()
                .contains(json!({ "tags": ["a"] }))
                .order_by(&["nested", "level"])
                .offset(2)
                .limit(5)
        }),
        ("closure filter after push-down, paged in memory", || {
            ListQuery::all()
                .contains(json!({ "status": "closed" }))
                .filter(|d: &Value| d["total"].as_f64().is_some_and(|t| t > 10.0))
                .order_by_desc(&["name"])
                .offset(1)
                .limit(4)
        }),
    ]
}

type Listed = Vec<(StreamId, u64, Value)>;

async fn list(lens: &Lens<Docs>, query: ListQuery<Value>) -> Listed {
    bounded(lens.list(query))
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.id, v.version, v.model))
        .collect()
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn pushed_down_queries_equal_the_in_memory_result(pool: PgPool) {
    let pg = PgPerspectiveStore::new(pool);
    let memory = MemoryPerspectiveStore::json();
    seed(&[&pg, &memory]).await;
    let on_pg = Lens::<Docs>::new(Arc::new(pg));
    let in_memory = Lens::<Docs>::new(Arc::new(memory));
    for (what, query) in queries() {
        let got = list(&on_pg, query()).await;
        let want = list(&in_memory, query()).await;
        assert_eq!(got, want, "{what}");
    }
    // The queries select something, so the comparison means something.
    assert_eq!(list(&on_pg, ListQuery::all()).await.len(), 40);
    assert_eq!(
        list(
            &on_pg,
            ListQuery::all().contains(json!({ "status": "open" }))
        )
        .await
        .len(),
        14
    );
    // And they select what they say, not only the same thing twice.
    let tagged = list(&on_pg, ListQuery::all().contains(json!({ "tags": ["a"] }))).await;
    assert_eq!(tagged.len(), 20);
    assert!(tagged.iter().all(|(_, _, d)| d["tags"][0] == "a"));
    let totals: Vec<f64> = list(&on_pg, ListQuery::all().order_by_desc(&["total"]))
        .await
        .iter()
        .map(|(_, _, d)| d["total"].as_f64().unwrap())
        .collect();
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{totals:?}");
    let names: Vec<String> = list(&on_pg, ListQuery::all().order_by(&["name"]))
        .await
        .iter()
        .map(|(_, _, d)| d["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("10"));
    assert_eq!(
        names.last().map(String::as_str),
        Some("é"),
        "bytes, not a locale"
    );
    let ranks = list(&on_pg, ListQuery::all().order_by(&["rank"])).await;
    assert!(ranks[0].2["rank"].is_null(), "null sorts first");
    assert!(
        ranks.last().unwrap().2.get("rank").is_none(),
        "missing sorts last"
    );
    let page = list(&on_pg, ListQuery::all().offset(38).limit(5)).await;
    assert_eq!(page.len(), 2);
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn query_models_on_postgres_equals_the_default_over_list_models(pool: PgPool) {
    let pg = PgPerspectiveStore::new(pool);
    seed(&[&pg]).await;
    let query = ModelQuery::new()
        .contains(json!({ "tags": ["b"] }))
        .order_by_desc(&["total"])
        .offset(3)
        .limit(10);
    let keys = |rows: Vec<whizbang_core::backend::ModelRow>| {
        rows.into_iter()
            .map(|r| (r.id, r.version))
            .collect::<Vec<_>>()
    };
    let in_sql = keys(bounded(pg.query_models(Docs::NAME, &query)).await.unwrap());
    let listed = bounded(pg.list_models(Docs::NAME)).await.unwrap();
    let in_memory = keys(query.run(listed).unwrap());
    assert_eq!(in_sql.len(), 10);
    assert_eq!(in_sql, in_memory);
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn containment_uses_the_gin_index(pool: PgPool) {
    // Many models of this perspective, few of them open: a selective filter.
    sqlx::query(
        "insert into wh_perspective_rows (perspective, model_key, version, data)
         select $1, gen_random_uuid(), 1,
                jsonb_build_object('status', case when n % 1000 = 0 then 'open' else 'closed' end,
                                   'n', n)
           from generate_series(1, 20000) as n",
    )
    .bind(Docs::NAME)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("analyze wh_perspective_rows")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    // The planner's guess for `@>` is coarse; rule the heap scan out so the
    // plan shows which index serves the filter.
    sqlx::query("set enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "explain select model_key from wh_perspective_rows
          where perspective = $1 and data @> $2::jsonb",
    )
    .bind(Docs::NAME)
    .bind(r#"{"status":"open"}"#)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("wh_perspective_rows_data_idx"), "{plan}");
}

// ---- A runtime on the PostgreSQL stores, end to end ---------------------------------

mod end_to_end {
    use super::support::bounded;
    use serde::{Deserialize, Serialize};
    use serde_json::json;
    use sqlx::PgPool;
    use std::time::Duration;
    use uuid::Uuid;
    use whizbang_core::{
        perspective, receptor, Command, Context, Event, LensQuery, ListQuery, Receptor, Result,
        Runtime, SyncFilter, SyncOutcome,
    };
    use whizbang_postgres::{PgEventStore, PgPerspectiveStore, PgSyncBackend};

    #[derive(Command, Serialize, Deserialize)]
    #[command(output = ())]
    struct Open {
        id: Uuid,
        status: String,
        total: u64,
    }

    #[derive(Event, Serialize, Deserialize, Debug, Clone)]
    #[event(name = "pg_lens.opened")]
    struct Opened {
        #[stream_key]
        id: Uuid,
        status: String,
        total: u64,
    }

    #[derive(Default)]
    struct Desk;

    #[receptor]
    impl Receptor<Open> for Desk {
        async fn handle(&self, cmd: Open, cx: &mut Context) -> Result<()> {
            cx.emit(Opened {
                id: cmd.id,
                status: cmd.status,
                total: cmd.total,
            })?;
            Ok(())
        }
    }

    #[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
    struct Summary {
        status: String,
        total: u64,
    }

    struct Summaries;

    #[perspective(model = Summary, name = "pg_lens.summaries")]
    impl Summaries {
        fn opened(m: &mut Summary, e: &Opened) {
            m.status = e.status.clone();
            m.total = e.total;
        }
    }

    #[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
    async fn a_runtime_on_postgres_applies_waits_and_lenses_query_in_sql(pool: PgPool) {
        let rt = Runtime::builder()
            .event_store(PgEventStore::new(pool.clone()))
            .perspective_store(PgPerspectiveStore::new(pool.clone()))
            .sync_backend(PgSyncBackend::new(pool.clone()))
            // A unit holds a connection while the runner reads events for it:
            // fewer units at once than the pool (5 in a test) has connections.
            .runner_concurrency(2)
            .build()
            .unwrap();
        let scope = rt.scope();
        for (status, total) in [("open", 30), ("closed", 10), ("open", 20), ("open", 40)] {
            let id = Uuid::now_v7();
            scope
                .send(Open {
                    id,
                    status: status.to_owned(),
                    total,
                })
                .await
                .unwrap();
        }
        bounded(scope.complete()).await.unwrap();
        let synced = bounded(
            rt.sync_awaiter()
                .wait::<Summaries>(SyncFilter::all().with_timeout(Duration::from_secs(5))),
        )
        .await
        .unwrap();
        assert_eq!(synced.outcome, SyncOutcome::Synced, "{synced:?}");
        let totals: Vec<u64> = bounded(
            rt.lens::<Summaries>().list(
                ListQuery::all()
                    .contains(json!({ "status": "open" }))
                    .order_by_desc(&["total"])
                    .limit(2),
            ),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.model.total)
        .collect();
        assert_eq!(totals, vec![40, 30]);
    }
}

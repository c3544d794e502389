//! Rebuilds beside live on a real database: a rebuild under load (writers
//! and the partitioned runner going on) ends with every model equal to a
//! fresh fold; readers see all old models or all new ones, never a mix; a
//! second rebuild of the same perspective is refused while one runs; the
//! version and the progress are stored.

mod support;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::{backend, bounded, eventually, fast_options, shut_down};
use uuid::Uuid;
use whizbang_core::perspective::rebuild::{
    shadow_name, RebuildOptions, RebuildPhase, VersionCheck, VersionPolicy,
};
use whizbang_core::{perspective, Error, Event, LensQuery, ListQuery, Registry, Runtime};
use whizbang_postgres::Postgres;

#[derive(Event, Serialize, Deserialize)]
#[event(name = "pg_rebuild.deposited")]
struct Deposited {
    #[stream_key]
    account: Uuid,
    cents: i64,
}

#[derive(Default, Clone, Serialize, Deserialize, Debug, PartialEq)]
struct Balance {
    cents: i64,
    deposits: u64,
}

struct UnderLoad;
#[perspective(model = Balance, name = "pg_rebuild.under_load", version = 2)]
impl UnderLoad {
    fn deposited(b: &mut Balance, e: &Deposited) {
        b.cents += e.cents;
        b.deposits += 1;
    }
}

/// When set, `Swapped` counts each deposit ten times: "the new release".
static NEW_CODE: AtomicBool = AtomicBool::new(false);

struct Swapped;
#[perspective(model = Balance, name = "pg_rebuild.swapped")]
impl Swapped {
    fn deposited(b: &mut Balance, e: &Deposited) {
        let factor = if NEW_CODE.load(Ordering::SeqCst) {
            10
        } else {
            1
        };
        b.cents += e.cents * factor;
        b.deposits += 1;
    }
}

fn runtime_of<P: whizbang_core::Perspective>(pg: &Postgres) -> Runtime {
    let registry = Registry::builder().perspective::<P>().build().unwrap();
    let rt = Runtime::builder()
        .registry(Arc::new(registry))
        .backend(pg.clone())
        .build()
        .unwrap();
    // Only the partitioned runner applies: the one that runs beside a rebuild.
    rt.runner().pause();
    rt
}

async fn deposit_rounds(rt: &Runtime, accounts: &[Uuid], rounds: usize) {
    for round in 0..rounds {
        let scope = rt.scope();
        for (i, account) in accounts.iter().enumerate() {
            scope
                .publish(Deposited {
                    account: *account,
                    cents: (i + round + 1) as i64,
                })
                .await
                .unwrap();
        }
        bounded(scope.complete()).await.unwrap();
    }
}

/// Waits until `P`'s model of every account reflects its whole stream,
/// then checks each equals a fresh fold.
async fn assert_models_equal_fresh_fold<P: whizbang_core::Perspective<Model = Balance>>(
    rt: &Runtime,
    accounts: &[Uuid],
) {
    for account in accounts {
        let fold = rt.aggregate::<P>(*account).await.unwrap();
        let lens = rt.lens::<P>();
        let (model, version) = eventually(&format!("{account} caught up"), || {
            let lens = lens.clone();
            let want = fold.version;
            async move {
                let got = lens.get_versioned((*account).into()).await.unwrap()?;
                (got.1 >= want).then_some(got)
            }
        })
        .await;
        assert_eq!((&model, version), (&fold.model, fold.version), "{account}");
    }
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn a_rebuild_under_load_ends_with_every_model_equal_to_a_fresh_fold(pool: PgPool) {
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<UnderLoad>(&pg);
    let accounts: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    deposit_rounds(&rt, &accounts, 10).await;
    assert_models_equal_fresh_fold::<UnderLoad>(&rt, &accounts).await;
    // The first start recorded the declared version; say the models were
    // built by version 1 (an older release).
    eventually("the version recorded at start", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>(
                "select version from wh_perspective_versions where perspective = $1",
            )
            .bind("pg_rebuild.under_load")
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    sqlx::query("update wh_perspective_versions set version = 1 where perspective = $1")
        .bind("pg_rebuild.under_load")
        .execute(&pool)
        .await
        .unwrap();

    // Writers go on during the rebuild, on old streams and new ones.
    let mut all = accounts.clone();
    all.extend((0..10).map(|_| Uuid::now_v7()));
    let writers: Vec<_> = all
        .chunks(25)
        .map(|chunk| {
            let (rt, chunk) = (rt.clone(), chunk.to_vec());
            tokio::spawn(async move { deposit_rounds(&rt, &chunk, 8).await })
        })
        .collect();
    // A process of the new release starts: it rebuilds at start, beside live.
    let new_pg = backend(&pool, fast_options()).await;
    let new = runtime_of::<UnderLoad>(&new_pg);
    let version = eventually("the rebuild at start swapped version 2 in", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>(
                "select version from wh_perspective_versions where perspective = $1",
            )
            .bind("pg_rebuild.under_load")
            .fetch_one(&pool)
            .await
            .ok()
            .filter(|v| *v == 2)
        }
    })
    .await;
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(version, 2);
    let report = new
        .rebuild_progress("pg_rebuild.under_load")
        .await
        .unwrap()
        .unwrap();
    assert!(report.done >= 400, "{report:?}");
    assert_models_equal_fresh_fold::<UnderLoad>(&rt, &all).await;
    // A later start finds the version current.
    let checks = bounded(new.check_perspective_versions(VersionPolicy::Refuse))
        .await
        .unwrap();
    assert!(
        matches!(checks[..], [(_, VersionCheck::Current(2))]),
        "{checks:?}"
    );
    shut_down(new, new_pg).await;

    // Stored: the progress, and no shadow left.
    let progress = rt
        .rebuild_progress("pg_rebuild.under_load")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(progress.phase, RebuildPhase::Done);
    assert_eq!(progress.done, progress.total);
    let shadow: i64 =
        sqlx::query_scalar("select count(*) from wh_perspective_cursors where perspective = $1")
            .bind(shadow_name("pg_rebuild.under_load"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(shadow, 0);
    shut_down(rt, pg).await;
}

#[sqlx::test(migrator = "whizbang_postgres::MIGRATOR")]
async fn readers_see_every_old_model_or_every_new_one_and_a_second_rebuild_is_refused(
    pool: PgPool,
) {
    NEW_CODE.store(false, Ordering::SeqCst);
    let pg = backend(&pool, fast_options()).await;
    let rt = runtime_of::<Swapped>(&pg);
    let accounts: Vec<Uuid> = (0..60).map(|_| Uuid::now_v7()).collect();
    deposit_rounds(&rt, &accounts, 5).await;
    assert_models_equal_fresh_fold::<Swapped>(&rt, &accounts).await;
    let old: Vec<i64> = rt
        .lens::<Swapped>()
        .list(ListQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|m| m.cents)
        .collect();
    let new: Vec<i64> = old.iter().map(|c| c * 10).collect();
    NEW_CODE.store(true, Ordering::SeqCst);

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (rt, stop, old, new) = (rt.clone(), Arc::clone(&stop), old.clone(), new.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while reads == 0 || !stop.load(Ordering::SeqCst) {
                let now: Vec<i64> = rt
                    .lens::<Swapped>()
                    .list(ListQuery::all())
                    .await
                    .unwrap()
                    .iter()
                    .map(|m| m.cents)
                    .collect();
                assert!(
                    now == old || now == new,
                    "a reader saw a mix of old and new models: {now:?}"
                );
                reads += 1;
            }
            reads
        })
    };
    // Another process's rebuild of the same perspective is refused while
    // this one holds it.
    let other_pg = backend(&pool, fast_options().runner(false)).await;
    let other = runtime_of::<Swapped>(&other_pg);
    let (options, mut progress) = RebuildOptions::default()
        .chunk_events(30)
        .fence_below(0)
        .watch();
    let rebuild = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.rebuild_named("pg_rebuild.swapped", options).await })
    };
    bounded(progress.wait_for(|p| p.phase == RebuildPhase::Building))
        .await
        .unwrap();
    let refused = other
        .rebuild_named("pg_rebuild.swapped", RebuildOptions::default())
        .await;
    let report = bounded(rebuild).await.unwrap().unwrap();
    match refused {
        Err(Error::InvalidInput(message)) => {
            assert!(message.contains("another process"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    stop.store(true, Ordering::SeqCst);
    assert!(bounded(reader).await.unwrap() > 0);
    assert_eq!(report.models, 60);
    let now: Vec<i64> = rt
        .lens::<Swapped>()
        .list(ListQuery::all())
        .await
        .unwrap()
        .iter()
        .map(|m| m.cents)
        .collect();
    assert_eq!(now, new);
    NEW_CODE.store(false, Ordering::SeqCst);
    shut_down(other, other_pg).await;
    shut_down(rt, pg).await;
}

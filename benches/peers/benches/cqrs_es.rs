//! whizbang on PostgreSQL against cqrs-es + postgres-es on the same server:
//! commands per second for the same "create" command that appends one event
//! and updates one view row, with 1 and with 8 concurrent clients.
//!
//! Both sides update the view before the command returns: cqrs-es runs its
//! `GenericQuery` after the commit; whizbang applies an inline perspective
//! when the scope completes. Each side gets its own fresh database.
//!
//! `cargo bench -p whizbang-peer-bench --bench cqrs_es`
//! (`WHIZBANG_BENCH_COMMANDS` sets the commands per client, default 400).

use cqrs_es::persist::GenericQuery;
use cqrs_es::{Aggregate, DomainEvent, EventEnvelope, View};
use postgres_es::{postgres_cqrs, PostgresViewRepository};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;
use whizbang_core::{perspective, receptor, Command, Context, Event, Receptor, Runtime};
use whizbang_peer_bench::{drop_database, fresh_database, throughput};

// ---- whizbang -----------------------------------------------------------------

#[derive(Command, Serialize, Deserialize, Debug)]
struct OpenAccount {
    id: Uuid,
    owner: String,
}

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "bench.account_opened")]
struct AccountOpened {
    #[stream_key]
    id: Uuid,
    owner: String,
}

#[derive(Default)]
struct Accounts;

#[receptor]
impl Receptor<OpenAccount> for Accounts {
    async fn handle(&self, cmd: OpenAccount, cx: &mut Context) -> whizbang_core::Result<()> {
        cx.emit(AccountOpened {
            id: cmd.id,
            owner: cmd.owner,
        })?;
        Ok(())
    }
}

#[derive(Default, Clone, Serialize, Deserialize, Debug)]
struct AccountSummary {
    owner: String,
    events: u64,
}

struct AccountSummaries;

#[perspective(model = AccountSummary, name = "bench.account_summaries", mode = inline)]
impl AccountSummaries {
    fn opened(s: &mut AccountSummary, e: &AccountOpened) {
        s.owner.clone_from(&e.owner);
        s.events += 1;
    }
}

async fn whizbang_runtime() -> Runtime {
    let url = fresh_database("whizbang").await;
    let pg = whizbang_postgres::Postgres::connect(&url)
        .await
        .expect("connect whizbang");
    pg.migrate().await.expect("migrate whizbang");
    Runtime::builder().backend(pg).build().expect("build")
}

// ---- cqrs-es ------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    opened: bool,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
enum AccountEvent {
    Opened { owner: String },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        "AccountOpened".to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[derive(Debug)]
struct AccountError(String);

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AccountError {}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = OpenAccount;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: OpenAccount,
        _: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), AccountError> {
        if self.opened {
            return Err(AccountError("already open".to_owned()));
        }
        sink.write(
            AccountEvent::Opened {
                owner: command.owner,
            },
            self,
        )
        .await;
        Ok(())
    }

    fn apply(&mut self, _event: AccountEvent) {
        self.opened = true;
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AccountView {
    owner: String,
    events: u64,
}

impl View<Account> for AccountView {
    fn update(&mut self, event: &EventEnvelope<Account>) {
        let AccountEvent::Opened { owner } = &event.payload;
        self.owner.clone_from(owner);
        self.events += 1;
    }
}

const CQRS_SCHEMA: &str = "
create table events (
    aggregate_type text not null, aggregate_id text not null,
    sequence bigint check (sequence >= 0) not null,
    event_type text not null, event_version text not null,
    payload json not null, metadata json not null,
    primary key (aggregate_type, aggregate_id, sequence));
create table account_view (
    view_id text not null, version bigint check (version >= 0) not null,
    payload json not null, primary key (view_id));";

type Cqrs = postgres_es::PostgresCqrs<Account>;

async fn cqrs_framework() -> Arc<Cqrs> {
    let url = fresh_database("cqrs_es").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(&url)
        .await
        .expect("connect cqrs-es");
    sqlx::raw_sql(CQRS_SCHEMA)
        .execute(&pool)
        .await
        .expect("cqrs-es schema");
    let views = Arc::new(PostgresViewRepository::<AccountView, Account>::new(
        "account_view",
        pool.clone(),
    ));
    Arc::new(postgres_cqrs(
        pool,
        vec![Box::new(GenericQuery::new(views))],
        (),
    ))
}

// ---- the run --------------------------------------------------------------------

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this
    // runs as a smoke test (a few commands, unoptimised): not measurements.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let per_client: usize = std::env::var("WHIZBANG_BENCH_COMMANDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if smoke { 8 } else { 400 });
    if smoke {
        println!("peer bench: smoke run (not under `cargo bench`): figures are not measurements");
    }
    let runtime = whizbang_runtime().await;
    let cqrs = cqrs_framework().await;
    println!("create command + one view row, commands per second ({per_client} per client)");
    println!("| clients | whizbang | cqrs-es + postgres-es | ratio |");
    println!("|---|---|---|---|");
    for clients in [1usize, 8] {
        // Warm both (connections, statement caches), then measure, alternating.
        let mut best = (0.0f64, 0.0f64);
        for round in 0..3 {
            let n = if round == 0 {
                per_client / 4
            } else {
                per_client
            };
            let rt = runtime.clone();
            let w = throughput(clients, n, move |_| {
                let rt = rt.clone();
                async move {
                    let scope = rt.scope();
                    scope
                        .send(OpenAccount {
                            id: Uuid::now_v7(),
                            owner: "ada".to_owned(),
                        })
                        .await
                        .expect("whizbang send");
                    // The inline perspective applies here: the view row is
                    // written before the command counts as done.
                    scope.complete().await.expect("whizbang complete");
                }
            })
            .await;
            let c = Arc::clone(&cqrs);
            let q = throughput(clients, n, move |_| {
                let c = Arc::clone(&c);
                async move {
                    let id = Uuid::now_v7();
                    c.execute(
                        &id.to_string(),
                        OpenAccount {
                            id,
                            owner: "ada".to_owned(),
                        },
                    )
                    .await
                    .expect("cqrs-es execute");
                }
            })
            .await;
            if round > 0 {
                best = (best.0.max(w), best.1.max(q));
            }
        }
        println!(
            "| {clients} | {:.0}/s | {:.0}/s | {:.2}x |",
            best.0,
            best.1,
            best.0 / best.1
        );
    }
    drop(runtime);
    drop(cqrs);
    drop_database("whizbang").await;
    drop_database("cqrs_es").await;
}

//! What the PostgreSQL process tests share: [`appenders`] (appender
//! processes killed while they append), [`db`] (a fresh, migrated
//! database per test), [`server`] (a private server a test may stop and
//! restart), [`cluster`] (N child processes to kill, stop and continue),
//! [`ledger`] (counting lost and duplicated work; models against a fresh fold),
//! [`proxy`] (a relay that loses the answer to a COMMIT) and [`runners`]
//! (runner child processes, what they applied, and an in-test appender).
//!
//! # Writing a process test
//!
//! 1. A database: `let db = FreshDb::create().await;` (or, to restart the
//!    server, `let server = PgServer::start()?; FreshDb::on(&server.url())`,
//!    calling the blocking server methods through `spawn_blocking`).
//! 2. The model: `whizbang_tests::pg_totals!();` in the test and in its child
//!    binary (`src/bin/*.rs`), so both register the same perspective.
//! 3. The processes: `Cluster::spawn(n, |i| cmd_for(i))` with the database URL
//!    as an argument; children print one line per step (`child::say`), the
//!    test waits on them (`Member::wait_line`) and kills (`kill`, SIGKILL),
//!    freezes (`stop`/`cont`) or replaces (`Cluster::respawn`) them.
//! 4. Side effects a child performs with its work go through
//!    [`ledger::record`] in the work's transaction; [`ledger::check`] then
//!    counts what was lost and what was done twice.
//! 5. At the end: [`ledger::event_keys`] tallied against what was
//!    acknowledged, [`ledger::version_gaps`] empty, and
//!    [`ledger::check_all_folds`] empty (every model equals a fresh fold).
//!
//! `tests/pg_sigkill.rs` and `tests/pg_restart.rs` follow these steps.
//!
//! # Runner processes
//!
//! `pg_appender runner` (started with [`runners::runner_command`]) runs only
//! the partitioned runner and prints `applied <stream> <from> <to>` after
//! each commit; closing its stdin ([`cluster::Member::close_stdin`]) stops
//! it cleanly. The test appends from its own process with
//! [`runners::append_round`] (which applies nothing), waits with
//! [`runners::wait_applied`], and tallies the runners' lines in a
//! [`runners::AppliedLog`]: a version reported by two commits was applied
//! twice. The models record their apply order (`pg_totals!`'s `disorder`),
//! so [`ledger::check_all_folds`] also proves each event applied once and in
//! order. `tests/pg_two_runners.rs`, `tests/pg_sigkill_runners.rs`,
//! `tests/pg_zombie.rs` and `tests/pg_restart_runners.rs` follow this;
//! `tests/pg_cross_process_sync.rs` pairs a runner with `pg_appender sync`,
//! a process that appends and waits with its runner off.
//!
//! Keyed perspectives: [`pg_keyed_totals!`](crate::pg_keyed_totals) declares
//! customer totals folded from many order streams; `pg_keyed_runner` runs
//! it (`tests/pg_sigkill_keyed.rs`).

pub mod appenders;
pub mod cluster;
pub mod db;
pub mod ledger;
pub mod proxy;
pub mod runners;
pub mod server;

/// Declares, in the calling binary, the counter/sum model the PostgreSQL
/// process tests fold: the event `Added` (`#[stream_key] account`, a 1-based
/// `seq` unique per stream, an `amount`), the model `Totals { count, sum,
/// last_seq, disorder }`,
/// the async perspective `AccountTotals` (named by `TOTALS`), `amount(stream,
/// seq)` (the amount a test appends) and `fold_totals`, the test's own fold
/// for [`ledger::fresh_fold`].
///
/// Tests append `seq` at stream version `seq`, so the model checks the order
/// it was applied in: `disorder` counts events whose `seq` is not one above
/// the `last_seq` applied before them (an event applied twice, skipped or out
/// of order). A fresh fold in version order has `disorder == 0`, so a stored
/// model that equals it was applied exactly once and in order.
///
/// A macro, not items here, so that the
/// registration lands in the binary itself (a child and its parent test
/// register the same perspective).
#[macro_export]
macro_rules! pg_totals {
    () => {
        #[derive(
            ::whizbang_core::Event, ::serde::Serialize, ::serde::Deserialize, Debug, Clone,
        )]
        #[event(name = "pg_totals.added")]
        struct Added {
            #[stream_key]
            account: ::uuid::Uuid,
            /// 1-based, unique per stream: the event's key in a tally.
            seq: u64,
            amount: u64,
        }

        #[derive(Default, Clone, ::serde::Serialize, ::serde::Deserialize, Debug, PartialEq)]
        struct Totals {
            count: u64,
            sum: u64,
            /// The `seq` of the last event applied.
            last_seq: u64,
            /// Events applied whose `seq` was not `last_seq + 1`.
            disorder: u64,
        }

        impl Totals {
            /// Folds one event's `seq` and `amount` (the perspective and the
            /// test's fold share this).
            fn add(&mut self, seq: u64, amount: u64) {
                if seq != self.last_seq + 1 {
                    self.disorder += 1;
                }
                self.last_seq = seq;
                self.count += 1;
                self.sum += amount;
            }
        }

        struct AccountTotals;

        /// The name `AccountTotals` is registered under.
        #[allow(dead_code)]
        const TOTALS: &str = "pg_totals.totals";

        #[::whizbang_core::perspective(model = Totals, name = "pg_totals.totals")]
        impl AccountTotals {
            fn added(m: &mut Totals, e: &Added) {
                m.add(e.seq, e.amount);
            }
        }

        /// The amount appended as `seq` of `stream`.
        #[allow(dead_code)]
        fn amount(stream: ::uuid::Uuid, seq: u64) -> u64 {
            (stream.as_u128() % 97) as u64 + seq * 3
        }

        /// The test's own fold of stored events, to compare stored models with.
        #[allow(dead_code)]
        fn fold_totals(m: &mut Totals, e: &$crate::pg::ledger::FoldEvent) {
            if e.event_type == "pg_totals.added" {
                m.add(
                    e.data["seq"].as_u64().unwrap_or(0),
                    e.data["amount"].as_u64().unwrap_or(0),
                );
            }
        }
    };
}

/// An inline perspective over `pg_totals!`'s events and model (use it after
/// `pg_totals!()`): `InlineTotals`, registered as `pg_totals.inline`
/// (`INLINE_TOTALS`), applied in the append's transaction. Its models are
/// checked against `fold_totals` as `AccountTotals`' are.
#[macro_export]
macro_rules! pg_inline_totals {
    () => {
        struct InlineTotals;

        /// The name `InlineTotals` is registered under.
        #[allow(dead_code)]
        const INLINE_TOTALS: &str = "pg_totals.inline";

        #[::whizbang_core::perspective(model = Totals, name = "pg_totals.inline", mode = inline)]
        impl InlineTotals {
            fn added(m: &mut Totals, e: &Added) {
                m.add(e.seq, e.amount);
            }
        }
    };
}

/// A held-back perspective over `pg_totals!`'s events and model (use it
/// after `pg_totals!()`): `BatchedTotals`, registered as `pg_totals.batched`
/// (`BATCHED_TOTALS`) with the strategy `batch(30, "20ms")`, so the
/// partitioned runner applies it in runs, each run's feed checkpoint moving
/// in the run's claim transaction. Its models are checked against
/// `fold_totals` as `AccountTotals`' are.
#[macro_export]
macro_rules! pg_batched_totals {
    () => {
        struct BatchedTotals;

        /// The name `BatchedTotals` is registered under.
        #[allow(dead_code)]
        const BATCHED_TOTALS: &str = "pg_totals.batched";

        #[::whizbang_core::perspective(model = Totals, name = "pg_totals.batched", strategy = batch(30, "20ms"))]
        impl BatchedTotals {
            fn added(m: &mut Totals, e: &Added) {
                m.add(e.seq, e.amount);
            }
        }
    };
}

/// Declares, in the calling binary, a keyed (multi-stream) perspective over
/// many order streams: the event `OrderPlaced` (`#[stream_key] order`, a
/// `customer`, an `amount` the test makes unique per event), the model
/// `CustomerTotals { count, sum, squares }` and the keyed perspective
/// `KeyedTotals` (`key = customer`, named by `KEYED_TOTALS`), plus
/// `order_placed(order, customer, amount)`, the event as the store takes it
/// (so a test appends without applying anything), and `fold_customer`, the
/// test's own fold of a stored event's data.
///
/// Amounts are unique, so a model equal to a fresh fold (same count, same
/// sum, same sum of squares) applied each of its events exactly once: an
/// event applied twice raises the count, one lost lowers it, and a swap of
/// one for another changes the sums.
#[macro_export]
macro_rules! pg_keyed_totals {
    () => {
        #[derive(
            ::whizbang_core::Event, ::serde::Serialize, ::serde::Deserialize, Debug, Clone,
        )]
        #[event(name = "pg_keyed.order_placed")]
        struct OrderPlaced {
            #[stream_key]
            order: ::uuid::Uuid,
            customer: ::uuid::Uuid,
            /// Unique per event.
            amount: u64,
        }

        #[derive(Default, Clone, ::serde::Serialize, ::serde::Deserialize, Debug, PartialEq)]
        struct CustomerTotals {
            count: u64,
            sum: u64,
            /// The sum of the squares of the amounts (wrapping).
            squares: u64,
        }

        impl CustomerTotals {
            /// Folds one event's amount (the perspective and the test's
            /// fold share this).
            fn add(&mut self, amount: u64) {
                self.count += 1;
                self.sum += amount;
                self.squares = self.squares.wrapping_add(amount.wrapping_mul(amount));
            }
        }

        struct KeyedTotals;

        /// The name `KeyedTotals` is registered under.
        #[allow(dead_code)]
        const KEYED_TOTALS: &str = "pg_keyed.customer_totals";

        #[::whizbang_core::perspective(
            model = CustomerTotals,
            key = customer,
            name = "pg_keyed.customer_totals"
        )]
        impl KeyedTotals {
            fn placed(m: &mut CustomerTotals, e: &OrderPlaced) {
                m.add(e.amount);
            }
        }

        /// `OrderPlaced` as the event store takes it.
        #[allow(dead_code)]
        fn order_placed(
            order: ::uuid::Uuid,
            customer: ::uuid::Uuid,
            amount: u64,
        ) -> ::whizbang_core::backend::NewEvent {
            let data =
                ::serde_json::json!({ "order": order, "customer": customer, "amount": amount });
            ::whizbang_core::backend::NewEvent {
                event_id: ::whizbang_core::EventId::new(),
                stream_id: ::whizbang_core::StreamId::from(order),
                event_type: "pg_keyed.order_placed",
                data: ::serde_json::value::to_raw_value(&data)
                    .expect("an object of two strings and a number serialises"),
                metadata: ::whizbang_core::backend::EventMetadata {
                    correlation_id: ::whizbang_core::MessageId::new(),
                    causation_id: None,
                    timestamp: ::std::time::SystemTime::now(),
                    extra: ::whizbang_core::Metadata::default(),
                },
                typed: None,
                outbound: false,
            }
        }

        /// The test's own fold: the customer an event's data names and the
        /// model with it folded in.
        #[allow(dead_code)]
        fn fold_customer(
            models: &mut ::std::collections::BTreeMap<::uuid::Uuid, CustomerTotals>,
            data: &::serde_json::Value,
        ) {
            let customer = data["customer"]
                .as_str()
                .and_then(|s| s.parse::<::uuid::Uuid>().ok())
                .unwrap_or_default();
            models
                .entry(customer)
                .or_default()
                .add(data["amount"].as_u64().unwrap_or(0));
        }
    };
}

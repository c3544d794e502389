//! What the PostgreSQL process tests share: [`db`] (a fresh, migrated
//! database per test), [`server`] (a private server a test may stop and
//! restart), [`cluster`] (N child processes to kill, stop and continue),
//! [`ledger`] (counting lost and duplicated work; models against a fresh fold)
//! and [`proxy`] (a relay that loses the answer to a COMMIT).

pub mod cluster;
pub mod db;
pub mod ledger;
pub mod proxy;
pub mod server;

/// Declares, in the calling binary, the counter/sum model the PostgreSQL
/// process tests fold: the event `Added` (`#[stream_key] account`, a 1-based
/// `seq` unique per stream, an `amount`), the model `Totals { count, sum }`,
/// the async perspective `AccountTotals` (named by `TOTALS`), `amount(stream,
/// seq)` (the amount a test appends) and `fold_totals`, the test's own fold
/// for [`ledger::fresh_fold`]. A macro, not items here, so that the
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
        }

        struct AccountTotals;

        /// The name `AccountTotals` is registered under.
        #[allow(dead_code)]
        const TOTALS: &str = "pg_totals.totals";

        #[::whizbang_core::perspective(model = Totals, name = "pg_totals.totals")]
        impl AccountTotals {
            fn added(m: &mut Totals, e: &Added) {
                m.count += 1;
                m.sum += e.amount;
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
                m.count += 1;
                m.sum += e.data["amount"].as_u64().unwrap_or(0);
            }
        }
    };
}

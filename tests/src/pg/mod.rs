//! What the PostgreSQL process tests share: [`db`] (a fresh, migrated
//! database per test), [`server`] (a private server a test may stop and
//! restart), [`cluster`] (N child processes to kill, stop and continue) and
//! [`ledger`] (counting lost and duplicated work; models against a fresh fold).

pub mod cluster;
pub mod db;
pub mod ledger;
pub mod server;

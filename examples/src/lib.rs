//! Runnable whizbang services: see `orders/main.rs` (`cargo run --example orders`).
//!
//! This crate also compiles the README: every `rust` block in it is a doc test
//! here (`cargo test -p whizbang-examples --doc`), so a snippet that misses an
//! import fails CI.

pub mod readme;

/// The README's code blocks, compiled and run as doc tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

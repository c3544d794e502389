//! Runnable whizbang services: see `orders/main.rs` (`cargo run --example orders`).

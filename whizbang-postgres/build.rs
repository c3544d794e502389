//! Rebuild when the embedded migrations change: `sqlx::migrate!` reads
//! `migrations/` at compile time, and cargo does not track that folder itself.
//!
//! `whizbang-postgres/migrations` is a symlink to the workspace's top-level
//! `migrations/` folder: the SQL stays in one place, and `cargo package`
//! follows the link, so the published crate carries its migrations.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

//! Rebuild when the embedded migrations change: `sqlx::migrate!` reads
//! `../migrations` at compile time, and cargo does not track that folder itself.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}

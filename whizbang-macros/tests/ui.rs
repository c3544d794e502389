//! Compile tests: every error a macro gives, with its committed `.stderr`,
//! and the cases that must compile (including a renamed runtime crate).
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p whizbang-macros --test ui`
//! and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}

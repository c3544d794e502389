//! A binary that links whizbang but registers no handler must fail loudly at
//! start-up and say how to link the crate that holds them.

use whizbang_core::{Error, Runtime};

#[tokio::test]
async fn a_runtime_with_no_routes_registered_fails_and_explains_how_to_link_handlers() {
    let err = Runtime::in_memory().unwrap_err();
    assert!(matches!(err, Error::NoRoutesRegistered), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("use my_handlers as _;"), "{message}");
    assert!(message.contains("#[receptor]"), "{message}");
}

//! Empty library target: this package exists for its one integration-test binary, `it`
//! (see `it/main.rs`).

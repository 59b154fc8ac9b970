//! `cargo run --example ecommerce`: the storefront over HTTP.

fn main() {}

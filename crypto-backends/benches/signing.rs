//! Signing throughput per backend (placeholder until the bench lands).
fn main() {}

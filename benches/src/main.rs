//! corvid-bench: the throughput harness.
fn main() {}

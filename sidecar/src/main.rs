//! Placeholder until the run wiring lands.
fn main() {}

//! Zero-setup demo: publishes a few orders through an in-process channel with the producer
//! layer, consumes them with the consumer layer, and prints each message's trace and link.
mod common;
fn main() {}

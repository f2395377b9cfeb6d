//! Integration tests against a real `nats-server` with JetStream: the shared one (`NATS_URL`,
//! default `nats://127.0.0.1:4222`) and, for the restart test, one spawned per test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod consume;
mod core_nats;
mod hostile;
mod jetstream;
mod load;
mod restart;
mod support;

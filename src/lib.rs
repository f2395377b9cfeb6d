//! x
pub use tracelink_core as core;

//! The messaging metrics recorded by the layers.

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry_semantic_conventions::metric as names;

/// Bucket boundaries the semantic conventions advise for messaging durations, in seconds.
const DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) operation_duration: Histogram<f64>,
    pub(crate) process_duration: Histogram<f64>,
    pub(crate) sent_messages: Counter<u64>,
    pub(crate) consumed_messages: Counter<u64>,
}

impl Metrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        Self {
            operation_duration: meter
                .f64_histogram(names::MESSAGING_CLIENT_OPERATION_DURATION)
                .with_unit("s")
                .with_description(
                    "Duration of messaging operation initiated by a producer or consumer client.",
                )
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            process_duration: meter
                .f64_histogram(names::MESSAGING_PROCESS_DURATION)
                .with_unit("s")
                .with_description("Duration of processing operation.")
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            sent_messages: meter
                .u64_counter(names::MESSAGING_CLIENT_SENT_MESSAGES)
                .with_unit("{message}")
                .with_description("Number of messages producer attempted to send to the broker.")
                .build(),
            consumed_messages: meter
                .u64_counter(names::MESSAGING_CLIENT_CONSUMED_MESSAGES)
                .with_unit("{message}")
                .with_description("Number of messages that were delivered to the application.")
                .build(),
        }
    }
}

//! The messaging metrics recorded by the layers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter, ObservableCounter};
use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::metric as names;
use rustc_hash::FxBuildHasher;

/// Bucket boundaries the semantic conventions advise for messaging durations, in seconds.
const DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Distinct attribute sets a message counter keeps before folding the rest into one overflow
/// set, as the SDK does for its own instruments.
const CARDINALITY_LIMIT: usize = 2000;

/// The attribute the SDK gives its overflow set (not a semantic-conventions constant).
const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) operation_duration: Histogram<f64>,
    pub(crate) process_duration: Histogram<f64>,
    pub(crate) sent_messages: Arc<MessageCounter>,
    pub(crate) consumed_messages: Arc<MessageCounter>,
    _instruments: Arc<[ObservableCounter<u64>; 2]>,
}

/// A monotonic message count per attribute set, kept here and reported through an observable
/// counter when the SDK collects.
///
/// Why not a synchronous SDK counter: the SDK finds a measurement's aggregator by hashing its
/// attribute set with SipHash, about 2 000 instructions for the five or six attributes a
/// messaging measurement carries, and every message is measured twice (duration and count) on
/// each side. The duration has to be a synchronous histogram; the count does not. This map
/// hashes with FxHash and bumps an atomic, at a tenth of the cost; the values the SDK exports
/// are the same cumulative sums.
#[derive(Debug, Default)]
pub(crate) struct MessageCounter {
    values: RwLock<HashMap<Vec<KeyValue>, AtomicU64, FxBuildHasher>>,
}

impl MessageCounter {
    pub(crate) fn add(&self, count: u64, attributes: &[KeyValue]) {
        if let Ok(values) = self.values.read() {
            if let Some(value) = values.get(attributes) {
                value.fetch_add(count, Ordering::Relaxed);
                return;
            }
        }
        let Ok(mut values) = self.values.write() else {
            return;
        };
        let key = if values.len() >= CARDINALITY_LIMIT && !values.contains_key(attributes) {
            vec![KeyValue::new(OVERFLOW_ATTRIBUTE, true)]
        } else {
            attributes.to_vec()
        };
        values
            .entry(key)
            .or_default()
            .fetch_add(count, Ordering::Relaxed);
    }

    fn observe(&self, instrument: &dyn AsyncInstrument<u64>) {
        if let Ok(values) = self.values.read() {
            for (attributes, value) in values.iter() {
                instrument.observe(value.load(Ordering::Relaxed), attributes);
            }
        }
    }
}

impl Metrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        let sent_messages = Arc::new(MessageCounter::default());
        let consumed_messages = Arc::new(MessageCounter::default());
        let sent = sent_messages.clone();
        let consumed = consumed_messages.clone();
        let instruments = [
            meter
                .u64_observable_counter(names::MESSAGING_CLIENT_SENT_MESSAGES)
                .with_unit("{message}")
                .with_description("Number of messages producer attempted to send to the broker.")
                .with_callback(move |instrument| sent.observe(instrument))
                .build(),
            meter
                .u64_observable_counter(names::MESSAGING_CLIENT_CONSUMED_MESSAGES)
                .with_unit("{message}")
                .with_description("Number of messages that were delivered to the application.")
                .with_callback(move |instrument| consumed.observe(instrument))
                .build(),
        ];
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
            sent_messages,
            consumed_messages,
            _instruments: Arc::new(instruments),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_folds_past_the_cardinality_limit() {
        let counter = MessageCounter::default();
        for i in 0..CARDINALITY_LIMIT + 10 {
            counter.add(1, &[KeyValue::new("k", i as i64)]);
        }
        counter.add(5, &[KeyValue::new("k", 0)]);
        let values = counter.values.read().unwrap();
        assert_eq!(values.len(), CARDINALITY_LIMIT + 1);
        let overflow = &values[&vec![KeyValue::new(OVERFLOW_ATTRIBUTE, true)]];
        assert_eq!(overflow.load(Ordering::Relaxed), 10);
        assert_eq!(
            values[&vec![KeyValue::new("k", 0)]].load(Ordering::Relaxed),
            6
        );
    }
}

//! The messaging metrics recorded by the layers.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

#[cfg(feature = "bound-metrics")]
use opentelemetry::metrics::BoundHistogram;
use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter, ObservableCounter};
use opentelemetry::{KeyValue, Value};
use opentelemetry_semantic_conventions::attribute as attr;
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
    histograms: Histograms,
    /// Counts of failed operations (their attributes carry `error.type`) and of attribute sets
    /// past the cache's limit.
    sent_messages: Arc<MessageCounter>,
    consumed_messages: Arc<MessageCounter>,
    /// Attribute sets of successful operations, each with its own count.
    sets: Arc<MetricSets>,
    _instruments: Arc<[ObservableCounter<u64>; 2]>,
}

/// The two duration histograms.
#[derive(Debug, Clone)]
struct Histograms {
    /// `messaging.client.operation.duration`.
    operation: Histogram<f64>,
    /// `messaging.process.duration`.
    process: Histogram<f64>,
}

impl Histograms {
    fn of(&self, kind: MetricKind) -> &Histogram<f64> {
        match kind {
            MetricKind::Publish | MetricKind::Receive => &self.operation,
            MetricKind::Process => &self.process,
        }
    }
}

/// Which instruments an operation records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum MetricKind {
    /// `messaging.client.operation.duration` and `messaging.client.sent.messages`.
    Publish,
    /// `messaging.process.duration` and `messaging.client.consumed.messages`.
    Process,
    /// `messaging.client.operation.duration` (receive and settle operations).
    Receive,
}

/// The metric attributes of one (operation, destination, consumer group, subscription), built
/// once and reused by every operation on it, with the message count of its successes.
#[derive(Debug)]
pub(crate) struct MetricSet {
    kind: MetricKind,
    operation: &'static str,
    destination: Box<str>,
    group: Option<Box<str>>,
    subscription: Option<Box<str>>,
    attributes: Vec<KeyValue>,
    /// The destination, group and subscription values of `attributes` (unit where absent), for
    /// spans to share.
    values: [Value; 3],
    count: AtomicU64,
    cached: bool,
    /// The set's duration histogram, bound to `attributes` once (cached sets only): recording
    /// through it skips the SDK's per-measurement lookup of the attribute set.
    #[cfg(feature = "bound-metrics")]
    bound: Option<BoundHistogram<f64>>,
}

impl MetricSet {
    /// A copy whose successes are counted through the [`MessageCounter`] instead.
    fn uncached(&self) -> MetricSet {
        MetricSet {
            kind: self.kind,
            operation: self.operation,
            destination: self.destination.clone(),
            group: self.group.clone(),
            subscription: self.subscription.clone(),
            attributes: self.attributes.clone(),
            values: self.values.clone(),
            count: AtomicU64::new(0),
            cached: false,
            #[cfg(feature = "bound-metrics")]
            bound: None,
        }
    }

    /// Its `messaging.destination.name` value (the template for templated destinations).
    pub(crate) fn destination(&self) -> &Value {
        &self.values[0]
    }

    /// Its consumer group value, if the key had one.
    pub(crate) fn group(&self) -> Option<&Value> {
        self.group.as_ref().map(|_| &self.values[1])
    }

    /// Its subscription value, if the key had one.
    pub(crate) fn subscription(&self) -> Option<&Value> {
        self.subscription.as_ref().map(|_| &self.values[2])
    }

    fn is(&self, key: &SetKey<'_>) -> bool {
        self.kind == key.kind
            && self.operation == key.operation
            && *self.destination == *key.destination
            && self.group.as_deref() == key.group
            && self.subscription.as_deref() == key.subscription
    }
}

/// What identifies a [`MetricSet`]; the rest of its attributes are the instrumentation's.
#[derive(Debug, Clone, Copy, Hash)]
pub(crate) struct SetKey<'a> {
    pub(crate) kind: MetricKind,
    pub(crate) operation: &'static str,
    pub(crate) destination: &'a str,
    pub(crate) group: Option<&'a str>,
    pub(crate) subscription: Option<&'a str>,
}

/// The cache of [`MetricSet`]s, keyed by the FxHash of their [`SetKey`].
#[derive(Debug, Default)]
struct MetricSets {
    sets: RwLock<HashMap<u64, Vec<Arc<MetricSet>>, FxBuildHasher>>,
    len: AtomicUsize,
}

impl MetricSets {
    fn get_or_insert(
        &self,
        key: SetKey<'_>,
        build: impl FnOnce() -> Vec<KeyValue>,
        #[cfg_attr(not(feature = "bound-metrics"), allow(unused_variables))]
        histograms: &Histograms,
    ) -> Arc<MetricSet> {
        let hash = FxBuildHasher.hash_one(key);
        if let Ok(sets) = self.sets.read() {
            if let Some(set) = sets.get(&hash).and_then(|v| v.iter().find(|s| s.is(&key))) {
                return set.clone();
            }
        }
        let cached = self.len.load(Ordering::Relaxed) < CARDINALITY_LIMIT;
        let attributes = build();
        let value = |key: &str| {
            attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map_or(Value::Bool(false), |kv| kv.value.clone())
        };
        let values = [
            value(attr::MESSAGING_DESTINATION_NAME),
            value(attr::MESSAGING_CONSUMER_GROUP_NAME),
            value(attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME),
        ];
        let set = MetricSet {
            kind: key.kind,
            operation: key.operation,
            destination: key.destination.into(),
            group: key.group.map(Into::into),
            subscription: key.subscription.map(Into::into),
            attributes,
            values,
            count: AtomicU64::new(0),
            cached,
            #[cfg(feature = "bound-metrics")]
            bound: None,
        };
        if !cached {
            return Arc::new(set);
        }
        let Ok(mut sets) = self.sets.write() else {
            return Arc::new(set.uncached());
        };
        let bucket = sets.entry(hash).or_default();
        if let Some(existing) = bucket.iter().find(|s| s.is(&key)) {
            return existing.clone();
        }
        // Bound only once the set is known to stay in the cache: a bound handle keeps its SDK
        // aggregator alive for as long as it lives, and the cache bounds how many there are.
        #[cfg(feature = "bound-metrics")]
        let set = MetricSet {
            bound: Some(histograms.of(set.kind).bind(&set.attributes)),
            ..set
        };
        let set = Arc::new(set);
        bucket.push(set.clone());
        self.len.fetch_add(1, Ordering::Relaxed);
        set
    }

    fn observe(&self, kind: MetricKind, instrument: &dyn AsyncInstrument<u64>) {
        if let Ok(sets) = self.sets.read() {
            for set in sets.values().flatten().filter(|s| s.kind == kind) {
                let count = set.count.load(Ordering::Relaxed);
                if count > 0 {
                    instrument.observe(count, &set.attributes);
                }
            }
        }
    }
}

/// A monotonic message count per attribute set, kept here and reported through an observable
/// counter when the SDK collects (successful operations count on their cached [`MetricSet`];
/// this map holds failures and sets past the cache's limit).
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
    /// The attribute set for `key`, built by `build` the first time it is seen.
    pub(crate) fn set(
        &self,
        key: SetKey<'_>,
        build: impl FnOnce() -> Vec<KeyValue>,
    ) -> Arc<MetricSet> {
        self.sets.get_or_insert(key, build, &self.histograms)
    }

    /// Records one finished operation on `set` that handled `count` messages.
    pub(crate) fn record(
        &self,
        set: &MetricSet,
        count: u64,
        seconds: f64,
        error_type: Option<Cow<'static, str>>,
    ) {
        let histogram = self.histograms.of(set.kind);
        let counter = match set.kind {
            MetricKind::Publish => Some(&self.sent_messages),
            MetricKind::Process => Some(&self.consumed_messages),
            MetricKind::Receive => None,
        };
        match error_type {
            None => {
                #[cfg(feature = "bound-metrics")]
                match &set.bound {
                    Some(bound) => bound.record(seconds),
                    None => histogram.record(seconds, &set.attributes),
                }
                #[cfg(not(feature = "bound-metrics"))]
                histogram.record(seconds, &set.attributes);
                match counter {
                    Some(_) if set.cached => {
                        set.count.fetch_add(count, Ordering::Relaxed);
                    }
                    Some(counter) => counter.add(count, &set.attributes),
                    None => {}
                }
            }
            Some(error_type) => {
                let mut attributes = Vec::with_capacity(set.attributes.len() + 1);
                attributes.extend(set.attributes.iter().cloned());
                attributes.push(KeyValue::new(attr::ERROR_TYPE, error_type));
                histogram.record(seconds, &attributes);
                if let Some(counter) = counter {
                    counter.add(count, &attributes);
                }
            }
        }
    }

    pub(crate) fn new(meter: &Meter) -> Self {
        let sent_messages = Arc::new(MessageCounter::default());
        let consumed_messages = Arc::new(MessageCounter::default());
        let sets = Arc::new(MetricSets::default());
        let (sent, sent_sets) = (sent_messages.clone(), sets.clone());
        let (consumed, consumed_sets) = (consumed_messages.clone(), sets.clone());
        let instruments = [
            meter
                .u64_observable_counter(names::MESSAGING_CLIENT_SENT_MESSAGES)
                .with_unit("{message}")
                .with_description("Number of messages producer attempted to send to the broker.")
                .with_callback(move |instrument| {
                    sent_sets.observe(MetricKind::Publish, instrument);
                    sent.observe(instrument);
                })
                .build(),
            meter
                .u64_observable_counter(names::MESSAGING_CLIENT_CONSUMED_MESSAGES)
                .with_unit("{message}")
                .with_description("Number of messages that were delivered to the application.")
                .with_callback(move |instrument| {
                    consumed_sets.observe(MetricKind::Process, instrument);
                    consumed.observe(instrument);
                })
                .build(),
        ];
        let histograms = Histograms {
            operation: meter
                .f64_histogram(names::MESSAGING_CLIENT_OPERATION_DURATION)
                .with_unit("s")
                .with_description(
                    "Duration of messaging operation initiated by a producer or consumer client.",
                )
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            process: meter
                .f64_histogram(names::MESSAGING_PROCESS_DURATION)
                .with_unit("s")
                .with_description("Duration of processing operation.")
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
        };
        Self {
            histograms,
            sent_messages,
            consumed_messages,
            sets,
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

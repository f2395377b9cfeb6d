//! Support for the adapters' load tests: a deadline around the whole run, which first attempts
//! fail, and a span processor that keeps only what the tests check (ids, links, failure) of
//! hundreds of thousands of spans.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

/// Runs a load test's `body`, failing loudly if it takes longer than `deadline` (a stuck load
/// test must not hang CI), and prints how long `what` took.
pub async fn within<T>(deadline: Duration, what: &str, body: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = tokio::time::timeout(deadline, body)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {deadline:?}"));
    eprintln!("{what}: {:?}", started.elapsed());
    out
}

/// One first attempt in `FAIL_ONE_IN` fails.
pub const FAIL_ONE_IN: u64 = 10;

/// A tiny linear congruential generator (Knuth's MMIX constants): a fixed seed gives the same
/// failures on every run, without a dependency.
#[derive(Debug, Clone)]
pub struct Lcg(pub u64);

impl Lcg {
    /// The next pseudo-random number (31 bits).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Which of `n` messages fail their first attempt (one in [`FAIL_ONE_IN`]), for `seed`.
pub fn failing_first_attempts(n: usize, seed: u64) -> Vec<bool> {
    let mut lcg = Lcg(seed);
    (0..n)
        .map(|_| lcg.next_u64().is_multiple_of(FAIL_ONE_IN))
        .collect()
}

/// Asserts that message `i` ran twice when its first attempt was chosen to fail and once
/// otherwise, and succeeded exactly once.
pub fn assert_attempts(fail_first: &[bool], attempts: &[AtomicU32], successes: &[AtomicU32]) {
    for (i, fails) in fail_first.iter().enumerate() {
        let want = if *fails { 2 } else { 1 };
        assert_eq!(
            attempts[i].load(Ordering::SeqCst),
            want,
            "attempts of message {i}"
        );
        assert_eq!(
            successes[i].load(Ordering::SeqCst),
            1,
            "successes of message {i}"
        );
    }
}

/// A span's trace and span id.
pub type Ids = (TraceId, SpanId);

/// What a load test needs of its spans.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Message key → the PRODUCER span that published it.
    pub producers: HashMap<String, Ids>,
    /// (message key, failed, links, parent) per CONSUMER span; the parent is `None` for a root
    /// span, else the span's trace id and its parent span id.
    pub processes: Vec<(String, bool, Vec<Ids>, Option<Ids>)>,
}

impl Recorded {
    /// Asserts `producers` producer spans, `processes` process spans of which `failed` failed,
    /// and that every process span has exactly one link: to its message's producer span.
    pub fn assert_linked(&self, producers: usize, processes: usize, failed: usize) {
        assert_eq!(self.producers.len(), producers, "producer spans");
        assert_eq!(self.processes.len(), processes, "process spans");
        let failed_spans = self.processes.iter().filter(|p| p.1).count();
        assert_eq!(failed_spans, failed, "failed process spans");
        for (key, _, links, _) in &self.processes {
            let producer = self
                .producers
                .get(key)
                .unwrap_or_else(|| panic!("a producer span for message {key:?}"));
            assert_eq!(
                links,
                &vec![*producer],
                "process span of {key} links to its producer"
            );
        }
    }

    /// Asserts that every process span is a child of the span it links to (consumers in
    /// `LinkMode::Parent`, such as NATS responders).
    pub fn assert_parented(&self) {
        for (key, _, links, parent) in &self.processes {
            assert_eq!(
                parent.as_ref(),
                links.first(),
                "process span of {key} is a child of its producer"
            );
        }
    }
}

/// A span processor recording [`Recorded`]; `key` names the message a span is about (its
/// message id, its partition and offset, ...).
#[derive(Clone)]
pub struct Recorder {
    recorded: Arc<Mutex<Recorded>>,
    key: fn(&SpanData) -> String,
    keep: fn(&SpanData) -> bool,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder keying spans with `key`.
    pub fn new(key: fn(&SpanData) -> String) -> Self {
        Self {
            recorded: Arc::default(),
            key,
            keep: |_| true,
        }
    }

    /// Records only the spans `keep` accepts (say, not the reply spans of a responder).
    pub fn keeping(mut self, keep: fn(&SpanData) -> bool) -> Self {
        self.keep = keep;
        self
    }

    /// What was recorded so far.
    pub fn recorded(&self) -> MutexGuard<'_, Recorded> {
        self.recorded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The text of attribute `key` on `span`, empty when absent.
pub fn attribute(span: &SpanData, key: &str) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
        .unwrap_or_default()
}

impl SpanProcessor for Recorder {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !(self.keep)(&span) {
            return;
        }
        let key = (self.key)(&span);
        let ids = (span.span_context.trace_id(), span.span_context.span_id());
        let mut recorded = self.recorded();
        match span.span_kind {
            SpanKind::Producer => {
                recorded.producers.insert(key, ids);
            }
            SpanKind::Consumer => {
                let links = span
                    .links
                    .links
                    .iter()
                    .map(|l| (l.span_context.trace_id(), l.span_context.span_id()))
                    .collect();
                let failed = matches!(span.status, Status::Error { .. });
                let parent = (span.parent_span_id != SpanId::INVALID)
                    .then(|| (span.span_context.trace_id(), span.parent_span_id));
                recorded.processes.push((key, failed, links, parent));
            }
            _ => {}
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_one_in_ten_fails_and_the_choice_is_stable() {
        let a = failing_first_attempts(10_000, 7);
        let failing = a.iter().filter(|f| **f).count();
        assert!((800..1200).contains(&failing), "{failing}");
        assert_eq!(a, failing_first_attempts(10_000, 7));
    }
}

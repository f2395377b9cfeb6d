//! What a consumer does with baggage that arrived with a message.

use opentelemetry::baggage::Baggage;

/// What to do with baggage a producer sent. Producers may be untrusted: baggage reaches the
/// handler (and everything it calls) as context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaggagePolicy {
    /// Keep all of it (the propagator already enforces W3C's 64 entries and 8192 bytes).
    #[default]
    Keep,
    /// Ignore baggage from messages.
    Drop,
    /// Keep at most `max_entries` entries whose `key=value` texts add up to at most `max_bytes`;
    /// entries past either bound are dropped (W3C Baggage's own limits are 64 and 8192).
    Cap {
        /// Most entries kept.
        max_entries: usize,
        /// Most bytes of `key` plus `value` kept.
        max_bytes: usize,
    },
}

impl BaggagePolicy {
    /// Applies the policy; `None` means no baggage reaches the handler.
    pub(crate) fn apply(&self, baggage: &Baggage) -> Option<Baggage> {
        if baggage.is_empty() {
            return None;
        }
        match *self {
            BaggagePolicy::Keep => Some(copy(baggage)),
            BaggagePolicy::Drop => None,
            BaggagePolicy::Cap {
                max_entries,
                max_bytes,
            } => {
                // Sort so the kept subset does not depend on hash-map order.
                let mut entries: Vec<_> = baggage.iter().collect();
                entries.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
                let mut kept = Baggage::new();
                let mut bytes = 0usize;
                for (key, (value, metadata)) in entries {
                    if kept.len() >= max_entries {
                        break;
                    }
                    let size = key.as_str().len() + value.as_str().len();
                    if bytes + size > max_bytes {
                        continue;
                    }
                    bytes += size;
                    kept.insert_with_metadata(key.clone(), value.clone(), metadata.clone());
                }
                (!kept.is_empty()).then_some(kept)
            }
        }
    }
}

/// `Baggage` is not `Clone`; copies it entry by entry.
pub(crate) fn copy(baggage: &Baggage) -> Baggage {
    let mut copy = Baggage::new();
    for (key, (value, metadata)) in baggage.iter() {
        copy.insert_with_metadata(key.clone(), value.clone(), metadata.clone());
    }
    copy
}

//! Header capture: the opt-in allow-list of incoming headers recorded as attributes, and the
//! filter that keeps credentials out of it.

use opentelemetry::propagation::Extractor;
use opentelemetry::{Key, KeyValue};

use super::Instrumentation;
use crate::carrier::Bounded;

/// Prefix of captured header attributes. The semantic-conventions crate has no constant for this
/// templated name (`messaging.header.<key>` is not in it), so it is spelled here once.
const HEADER_ATTRIBUTE_PREFIX: &str = "messaging.header.";

/// The attribute key of a captured header: `messaging.header.<name, lower-cased>`.
pub(super) fn header_key(name: &str) -> Key {
    Key::new(format!(
        "{HEADER_ATTRIBUTE_PREFIX}{}",
        name.to_ascii_lowercase()
    ))
}

/// Whether a header name is one that carries credentials, which header capture refuses.
pub(super) fn is_credential(name: &str) -> bool {
    const EXACT: [&str; 4] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ];
    const PARTS: [&str; 6] = [
        "password",
        "secret",
        "token",
        "api-key",
        "apikey",
        "credential",
    ];
    let name = name.to_ascii_lowercase();
    EXACT.contains(&name.as_str()) || PARTS.iter().any(|part| name.contains(part))
}

impl Instrumentation {
    /// Pushes the configured headers found in `extractor` (bounded like every header read).
    pub(super) fn capture_headers(&self, extractor: &dyn Extractor, captured: &mut Vec<KeyValue>) {
        for (header, key) in &self.inner.captured_headers {
            if let Some(value) = Bounded(extractor).get(header) {
                captured.push(KeyValue::new(key.clone(), value.to_owned()));
            }
        }
    }
}

//! Internal test support of tracelink (not published): the **hostile-header corpus** that every
//! adapter's integration tests send through a real broker, the checks those tests apply to the
//! resulting `process` spans, and the byte format the fuzz targets decode headers from.
//!
//! Instrumentation must never be the reason a message is lost, handled twice or a consumer
//! stops. Each [`Case`] is a set of headers a producer (buggy, foreign or malicious) may send,
//! with the outcome tracelink promises: the message reaches the handler exactly once and its
//! `process` span is either a fresh root without a link ([`Expect::FreshRoot`], the context was
//! unusable) or a fresh root linked to the producer span the headers name ([`Expect::Linked`]).
//!
//! # Quick start
//!
//! ```
//! use tracelink_testkit::{corpus, Expect};
//!
//! for case in corpus() {
//!     // Publish `case.headers` raw through the broker, consume through the adapter, then
//!     // check the exported process span with `tracelink_testkit::check_process_span`.
//!     let linked = case.expect == Expect::Linked;
//!     assert!(!case.name.is_empty() && (linked || case.expect == Expect::FreshRoot));
//! }
//! ```
//!
//! # Customisation
//!
//! Adapters whose broker cannot carry a case as it is (a 1 MiB header over RabbitMQ's frame
//! size, non-UTF-8 bytes through an API that takes `String`) use [`Case::is_text`],
//! [`Case::largest_value`] and [`Case::text_headers`] to decide how to send it, and document
//! what the broker did. [`w3c_propagator`] is the propagator the tests configure (W3C trace
//! context and baggage), so baggage limits are exercised too.
//!
//! # Cargo features
//!
//! None.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![deny(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod load;

use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SpanData;

/// The producer span every linked case names (W3C's own example ids).
pub const VALID_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A second, equally valid context, for the "two different `traceparent`s" case.
pub const OTHER_TRACEPARENT: &str = "00-11111111111111111111111111111111-2222222222222222-01";

/// One mebibyte, the size of the largest hostile value.
pub const ONE_MIB: usize = 1024 * 1024;

/// W3C Baggage's limits (the SDK's propagator enforces them): entries, and bytes of the header.
pub const MAX_BAGGAGE_ENTRIES: usize = 64;
/// See [`MAX_BAGGAGE_ENTRIES`].
pub const MAX_BAGGAGE_BYTES: usize = 8192;
/// W3C Trace Context's limit on `tracestate` list members.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The span context [`VALID_TRACEPARENT`] names.
pub fn producer_span_context() -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(0x4bf92f3577b34da6a3ce929d0e0e4736_u128.to_be_bytes()),
        SpanId::from_bytes(0x00f067aa0ba902b7_u64.to_be_bytes()),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

/// The propagator the hostile-input tests configure: W3C trace context and W3C baggage (the
/// SDK's), so that hostile `baggage` reaches the baggage limits.
pub fn w3c_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// What tracelink promises for a case (beyond "delivered exactly once, consumer keeps running").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The context is unusable: the `process` span is a root without a link.
    FreshRoot,
    /// The context is usable: the `process` span is a root (new trace) with one link to the
    /// span [`VALID_TRACEPARENT`] names.
    Linked,
}

/// One hostile header set.
#[derive(Debug, Clone)]
pub struct Case {
    /// A short, unique, file-name-safe name (also the message id and payload in the tests).
    pub name: &'static str,
    /// What the case exercises, for the docs' results table.
    pub what: &'static str,
    /// Header names and raw value bytes, in order; a name may repeat (in another ASCII case, so
    /// that map-based carriers such as AMQP tables and SQS attributes can hold both copies).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The promised outcome.
    pub expect: Expect,
}

impl Case {
    fn new(
        name: &'static str,
        what: &'static str,
        headers: Vec<(&str, Vec<u8>)>,
        expect: Expect,
    ) -> Self {
        Self {
            name,
            what,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            expect,
        }
    }

    /// Whether every value is valid UTF-8 (APIs taking `String` headers can send it as is).
    pub fn is_text(&self) -> bool {
        self.headers
            .iter()
            .all(|(_, v)| std::str::from_utf8(v).is_ok())
    }

    /// The headers as text, when [`is_text`](Self::is_text).
    pub fn text_headers(&self) -> Option<Vec<(&str, &str)>> {
        self.headers
            .iter()
            .map(|(k, v)| std::str::from_utf8(v).ok().map(|v| (k.as_str(), v)))
            .collect()
    }

    /// The length of the longest value, in bytes.
    pub fn largest_value(&self) -> usize {
        self.headers.iter().map(|(_, v)| v.len()).max().unwrap_or(0)
    }

    /// The total size of names and values, in bytes.
    pub fn size(&self) -> usize {
        self.headers.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

fn bytes(s: impl Into<String>) -> Vec<u8> {
    s.into().into_bytes()
}

fn valid() -> (&'static str, Vec<u8>) {
    ("traceparent", bytes(VALID_TRACEPARENT))
}

/// The hostile-header corpus. Every case ends with a delivered message; see [`Case::expect`].
pub fn corpus() -> Vec<Case> {
    use Expect::{FreshRoot, Linked};
    let ids = &VALID_TRACEPARENT[3..52];
    let many_members: String = (0..40)
        .map(|i| format!("k{i}=v{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let many_entries: String = (0..100)
        .map(|i| format!("key{i}=value{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let long_baggage = format!("big={}", "x".repeat(9000));
    vec![
        Case::new(
            "control-valid",
            "a well-formed traceparent (control)",
            vec![valid()],
            Linked,
        ),
        Case::new(
            "control-none",
            "no trace headers at all (control)",
            vec![("x-user", bytes("kept"))],
            FreshRoot,
        ),
        Case::new(
            "tp-version-ff",
            "traceparent version ff (forbidden)",
            vec![("traceparent", bytes(format!("ff-{ids}-01")))],
            FreshRoot,
        ),
        Case::new(
            "tp-version-future",
            "traceparent version 01 with an extra field (allowed by the spec)",
            vec![("traceparent", bytes(format!("01-{ids}-01-future")))],
            Linked,
        ),
        Case::new(
            "tp-short-ids",
            "traceparent with ids of the wrong length (00-abc-def-01)",
            vec![("traceparent", bytes("00-abc-def-01"))],
            FreshRoot,
        ),
        Case::new(
            "tp-long-span-id",
            "traceparent with a 17-digit span id",
            vec![(
                "traceparent",
                bytes("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b70-01"),
            )],
            FreshRoot,
        ),
        Case::new(
            "tp-truncated",
            "traceparent cut short (no flags)",
            vec![(
                "traceparent",
                bytes("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
            )],
            FreshRoot,
        ),
        Case::new(
            "tp-zero-trace-id",
            "traceparent with an all-zero trace id",
            vec![(
                "traceparent",
                bytes("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            )],
            FreshRoot,
        ),
        Case::new(
            "tp-zero-span-id",
            "traceparent with an all-zero span id",
            vec![(
                "traceparent",
                bytes("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            )],
            FreshRoot,
        ),
        Case::new(
            "tp-upper-case",
            "traceparent in upper-case hex",
            vec![("traceparent", bytes(VALID_TRACEPARENT.to_uppercase()))],
            FreshRoot,
        ),
        Case::new(
            "tp-trailing-garbage",
            "version-00 traceparent followed by garbage",
            vec![("traceparent", bytes(format!("{VALID_TRACEPARENT}-garbage")))],
            FreshRoot,
        ),
        Case::new(
            "tp-bad-separators",
            "traceparent with underscores for dashes",
            vec![("traceparent", bytes(VALID_TRACEPARENT.replace('-', "_")))],
            FreshRoot,
        ),
        Case::new(
            "tp-not-hex",
            "traceparent with a non-hex flag",
            vec![(
                "traceparent",
                bytes("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g"),
            )],
            FreshRoot,
        ),
        Case::new(
            "tp-not-utf8",
            "traceparent of bytes that are not UTF-8",
            vec![("traceparent", vec![0xff, 0xfe, 0x00, 0xc3, 0x28])],
            FreshRoot,
        ),
        Case::new(
            "tp-1mib",
            "a 1 MiB traceparent (a valid one followed by 1 MiB of padding)",
            vec![(
                "traceparent",
                bytes(format!("{VALID_TRACEPARENT}-{}", "0".repeat(ONE_MIB))),
            )],
            FreshRoot,
        ),
        Case::new(
            "tp-over-8192",
            "a 9000-byte traceparent (over the 8192-byte read bound)",
            vec![(
                "traceparent",
                bytes(format!("{VALID_TRACEPARENT}-{}", "0".repeat(9000))),
            )],
            FreshRoot,
        ),
        Case::new(
            "tp-twice-conflicting",
            "traceparent twice (traceparent, Traceparent) with different values",
            vec![
                ("traceparent", bytes(VALID_TRACEPARENT)),
                ("Traceparent", bytes(OTHER_TRACEPARENT)),
            ],
            FreshRoot,
        ),
        Case::new(
            "tp-twice-identical",
            "traceparent twice (traceparent, Traceparent) with the same value",
            vec![
                ("traceparent", bytes(VALID_TRACEPARENT)),
                ("Traceparent", bytes(VALID_TRACEPARENT)),
            ],
            Linked,
        ),
        Case::new(
            "tp-go-case",
            "Traceparent as Go clients canonicalise it",
            vec![("Traceparent", bytes(VALID_TRACEPARENT))],
            Linked,
        ),
        Case::new(
            "tracestate-40-members",
            "valid traceparent, tracestate with 40 members (W3C allows 32)",
            vec![valid(), ("tracestate", bytes(many_members))],
            Linked,
        ),
        Case::new(
            "tracestate-malformed",
            "valid traceparent, malformed tracestate",
            vec![valid(), ("tracestate", bytes("=,,,k==v,@@@,x=y=z"))],
            Linked,
        ),
        Case::new(
            "tracestate-not-utf8",
            "valid traceparent, tracestate of bytes that are not UTF-8",
            vec![valid(), ("tracestate", vec![b'k', b'=', 0xff, 0xfe])],
            Linked,
        ),
        Case::new(
            "baggage-100-entries",
            "valid traceparent, baggage with 100 entries (W3C allows 64)",
            vec![valid(), ("baggage", bytes(many_entries))],
            Linked,
        ),
        Case::new(
            "baggage-9000-bytes",
            "valid traceparent, a 9000-byte baggage header (W3C allows 8192)",
            vec![valid(), ("baggage", bytes(long_baggage))],
            Linked,
        ),
        Case::new(
            "baggage-malformed",
            "valid traceparent, malformed baggage",
            vec![valid(), ("baggage", bytes("=;;,,%zz=%,k=v;;p,=x,\u{7f}=1"))],
            Linked,
        ),
        Case::new(
            "baggage-not-utf8",
            "valid traceparent, baggage of bytes that are not UTF-8",
            vec![valid(), ("baggage", vec![b'k', b'=', 0xc3, 0x28])],
            Linked,
        ),
    ]
}

/// Checks a `process` span against `case`: a root span (a new trace), with no link for
/// [`Expect::FreshRoot`] and exactly one link to [`producer_span_context`] (holding at most
/// [`MAX_TRACESTATE_MEMBERS`] trace-state members) for [`Expect::Linked`].
pub fn check_process_span(case: &Case, span: &SpanData) -> Result<(), String> {
    let name = case.name;
    if span.parent_span_id != SpanId::INVALID {
        return Err(format!(
            "{name}: the process span has a parent ({})",
            span.parent_span_id
        ));
    }
    let links: Vec<&SpanContext> = span.links.iter().map(|l| &l.span_context).collect();
    match case.expect {
        Expect::FreshRoot if links.is_empty() => Ok(()),
        Expect::FreshRoot => Err(format!("{name}: expected no link, got {links:?}")),
        Expect::Linked => {
            let producer = producer_span_context();
            match links.as_slice() {
                [link]
                    if link.trace_id() == producer.trace_id()
                        && link.span_id() == producer.span_id() =>
                {
                    let members = link.trace_state().header().split(',').count();
                    if members > MAX_TRACESTATE_MEMBERS {
                        return Err(format!(
                            "{name}: the link keeps {members} tracestate members"
                        ));
                    }
                    if span.span_context.trace_id() == producer.trace_id() {
                        return Err(format!(
                            "{name}: the process span joined the producer trace"
                        ));
                    }
                    Ok(())
                }
                other => Err(format!(
                    "{name}: expected one link to {producer:?}, got {other:?}"
                )),
            }
        }
    }
}

/// What a handler saw of the baggage in its context: entries and `key=value` bytes.
pub fn baggage_size(cx: &Context) -> (usize, usize) {
    let baggage = cx.baggage();
    let bytes = baggage
        .iter()
        .map(|(k, (v, _))| k.as_str().len() + 1 + v.as_str().len())
        .sum();
    (baggage.len(), bytes)
}

/// Checks [`baggage_size`] against W3C's limits.
pub fn check_baggage(case: &Case, (entries, bytes): (usize, usize)) -> Result<(), String> {
    if entries > MAX_BAGGAGE_ENTRIES || bytes > MAX_BAGGAGE_BYTES + MAX_BAGGAGE_ENTRIES {
        return Err(format!(
            "{}: the handler saw {entries} baggage entries of {bytes} bytes",
            case.name
        ));
    }
    Ok(())
}

/// Encodes headers in the fuzz targets' input format: one `name`, a `:` and the value per
/// header, headers separated by `\n` (names and values containing those bytes do not round
/// trip; the fuzzer explores such inputs anyway).
pub fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(value);
    }
    out
}

/// Decodes the fuzz input format (see [`encode_headers`]): every line is a header; a line
/// without `:` is a header with an empty value.
pub fn decode_headers(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    data.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| match line.iter().position(|&b| b == b':') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &line[line.len()..]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_file_safe() {
        let cases = corpus();
        let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), cases.len());
        assert!(names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')));
    }

    #[test]
    fn covers_the_issue() {
        let cases = corpus();
        assert!(cases.iter().any(|c| c.largest_value() > ONE_MIB));
        assert!(cases.iter().any(|c| !c.is_text()));
        assert!(cases.iter().any(|c| c.expect == Expect::Linked));
    }

    #[test]
    fn fuzz_format_round_trips() {
        for case in corpus() {
            let encoded = encode_headers(&case.headers);
            let decoded = decode_headers(&encoded);
            assert_eq!(decoded.len(), case.headers.len(), "{}", case.name);
            for ((k, v), (dk, dv)) in case.headers.iter().zip(decoded) {
                assert_eq!((k.as_bytes(), v.as_slice()), (dk, dv), "{}", case.name);
            }
        }
    }

    #[test]
    fn producer_context_matches_the_header() {
        let sc = producer_span_context();
        assert_eq!(
            format!("00-{}-{}-01", sc.trace_id(), sc.span_id()),
            VALID_TRACEPARENT
        );
    }
}

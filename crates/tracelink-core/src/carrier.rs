//! Header carrier helpers shared by every adapter, and the reference carrier over
//! `HashMap<String, String>`.
//!
//! # Rules every tracelink carrier follows
//!
//! * **Never fail, never panic.** An injector skips a key or value its header type cannot hold;
//!   an extractor reads a value that is not text (non-UTF-8 bytes, an AMQP integer, ...) as absent.
//! * **Case-insensitive names.** Go clients canonicalise `traceparent` to `Traceparent`; lookups
//!   ignore ASCII case so such headers are read.
//! * **Repeated keys.** When a key appears more than once (Kafka and NATS headers allow it),
//!   identical values read as that value, and *conflicting* values read as absent: tracelink cannot
//!   tell which copy is authentic, so the message starts a fresh trace instead of linking to a
//!   context that may have been forged or left stale. [`unique_value`] implements the rule.
//! * **Replace, don't duplicate.** Injecting a key that is already present replaces it.

use std::collections::HashMap;
use std::fmt;

use opentelemetry::propagation::{Extractor, Injector};

/// Longest header value an extraction will read, in bytes; longer values read as absent.
///
/// W3C Baggage caps a whole header at 8192 bytes and `traceparent`/`tracestate` are far shorter,
/// so nothing valid is longer; refusing longer values bounds the work a hostile producer can cause.
pub const MAX_HEADER_VALUE_LEN: usize = 8192;

/// Reads `bytes` as text: `None` when they are not valid UTF-8.
pub fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// The one value of `key` among `entries`, matching names case-insensitively.
///
/// `entries` yields `(name, value)` pairs, with `None` for a value that is not text. Returns the
/// value when every entry named `key` carries the same text; `None` when there is none, when one
/// of them is not text, or when they disagree (see the module docs for why).
pub fn unique_value<'a, I>(entries: I, key: &str) -> Option<&'a str>
where
    I: IntoIterator<Item = (&'a str, Option<&'a str>)>,
{
    let mut found: Option<&'a str> = None;
    for (name, value) in entries {
        if !name_matches(name, key) {
            continue;
        }
        match (found, value) {
            (_, None) => return None,
            (None, Some(v)) => found = Some(v),
            (Some(prev), Some(v)) if prev == v => {}
            (Some(_), Some(_)) => return None,
        }
    }
    found
}

/// `name == key` ignoring ASCII case; the exact match, the common case, compared word-wide first.
#[inline]
fn name_matches(name: &str, key: &str) -> bool {
    name.len() == key.len() && (name == key || name.eq_ignore_ascii_case(key))
}

/// Every value of `key` among `entries` (case-insensitive names, text values only), for
/// [`Extractor::get_all`].
pub fn all_values<'a, I>(entries: I, key: &str) -> Option<Vec<&'a str>>
where
    I: IntoIterator<Item = (&'a str, Option<&'a str>)>,
{
    let values: Vec<&'a str> = entries
        .into_iter()
        .filter(|(name, _)| name_matches(name, key))
        .filter_map(|(_, value)| value)
        .collect();
    (!values.is_empty()).then_some(values)
}

/// Injects into a `HashMap<String, String>`, replacing any key that differs only in ASCII case.
///
/// An empty value removes the key (any case) and writes nothing: an empty header reads the same
/// as none, and a propagator sets one (the W3C `tracestate` of a context without trace state) to
/// clear a stale copy from a message being published again. Every adapter's injector follows
/// the same rule.
#[derive(Debug)]
pub struct MapInjector<'a>(pub &'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            self.0.retain(|k, _| !k.eq_ignore_ascii_case(key));
            return;
        }
        if self.0.contains_key(key) {
            self.0.insert(key.to_owned(), value);
            return;
        }
        self.0.retain(|k, _| !k.eq_ignore_ascii_case(key));
        self.0.insert(key.to_owned(), value);
    }

    fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }
}

impl StrInjector for MapInjector<'_> {}

/// An [`Injector`] that also takes a borrowed value, for carriers whose client copies header
/// bytes itself (rdkafka's `OwnedHeaders`, a frame being written): tracelink's
/// [`W3cTraceContextPropagator`](crate::propagation::W3cTraceContextPropagator) writes
/// `traceparent` through it from a stack buffer, so injecting allocates nothing.
///
/// Implement it on an injector whose header type can copy from `&str`; one whose client keeps an
/// owned `String` or `Vec<u8>` (AMQP `LongString`, NATS `HeaderValue`, SQS attributes, a
/// `HashMap<String, String>`) gains nothing over the default and can write `impl StrInjector for
/// MyInjector<'_> {}`. [`CopyingInjector`] lends any [`Injector`] as one.
pub trait StrInjector: Injector {
    /// Sets `key` to `value` by the same rules as [`Injector::set`]: replace any copy of `key`
    /// (in any ASCII case), skip what the header type cannot hold, never fail. The default
    /// copies `value` into the `String` that `set` takes.
    fn set_str(&mut self, key: &str, value: &str) {
        self.set(key, value.to_owned());
    }
}

/// Any [`Injector`] as a [`StrInjector`]: a borrowed value is copied into a `String` for
/// [`Injector::set`].
pub struct CopyingInjector<'a>(pub &'a mut dyn Injector);

impl fmt::Debug for CopyingInjector<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CopyingInjector")
    }
}

impl Injector for CopyingInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set(key, value);
    }

    fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }
}

impl StrInjector for CopyingInjector<'_> {}

/// Extracts from a `HashMap<String, String>`, matching keys case-insensitively.
#[derive(Debug, Clone, Copy)]
pub struct MapExtractor<'a>(pub &'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // A scan, not a hash lookup: an exact hit would still need the scan for a
        // differently-cased twin, and a message carries a handful of headers.
        unique_value(
            self.0.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))),
            key,
        )
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        all_values(
            self.0.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))),
            key,
        )
    }
}

/// Whether `value` is a well-formed W3C `traceparent` (Trace Context level 1, section 3.2).
///
/// The SDK's `TraceContextPropagator` accepts ids of the wrong length (`00-abc-def-01` parses as
/// trace id `0xabc`); a context read from such a header would link to a span nobody produced.
/// So tracelink checks the shape before the propagator sees it: lower-case hex, exact field
/// lengths, version `ff` refused, nothing after a version-00 header, non-zero ids.
pub fn is_valid_traceparent(value: &str) -> bool {
    parse_traceparent(value).is_some()
}

/// Value of each byte as a lower-case hex digit, `INVALID` for everything else.
const INVALID: u8 = 0xff;
const HEX_VALUE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// The byte of two lower-case hex digits; any other digit sets high bits in `bad`.
fn hex_byte(hi: u8, lo: u8, bad: &mut u8) -> u8 {
    let (hi, lo) = (HEX_VALUE[usize::from(hi)], HEX_VALUE[usize::from(lo)]);
    *bad |= hi | lo;
    (hi << 4) | (lo & 0x0f)
}

const ONES: u64 = 0x0101_0101_0101_0101;

const HIGH: u64 = ONES * 0x80;

/// Eight hex digits (a big-endian word) decoded to one nibble a byte, and a word that is zero
/// exactly when every byte was a lower-case hex digit: a few word-wide operations instead of a
/// table lookup a digit. Range checks: once no byte has its high bit set, adding `0x80 - c` to
/// every byte sets a byte's high bit exactly when that byte is at least `c`, and no carry crosses
/// into the next byte (0x7f + 0x50 < 0x100); a byte with its high bit set is refused on its own.
#[inline(always)]
fn nibbles8(x: u64) -> (u64, u64) {
    let at_least = |c: u8| x.wrapping_add(ONES * u64::from(0x80 - c));
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    let bad = (((digit | letter) & HIGH) ^ HIGH) | (x & HIGH);
    // Bit 6 marks a letter ('a'..='f' end in 1..=6 and are worth 9 more); digits end in 0..=9.
    let nibbles = (x & (ONES * 0x0f)) + ((x >> 6) & ONES) * 9;
    (nibbles, bad)
}

/// The eight nibbles of [`nibbles8`] packed into a `u32`: pairs into bytes, bytes into halves,
/// halves into the low 32 bits.
#[inline(always)]
fn pack8(nibbles: u64) -> u64 {
    let bytes = (nibbles | (nibbles >> 4)) & 0x00ff_00ff_00ff_00ff;
    let halves = (bytes | (bytes >> 8)) & 0x0000_ffff_0000_ffff;
    (halves | (halves >> 16)) & 0xffff_ffff
}

/// Sixteen hex digits as a big-endian `u64`, and a word that is zero exactly when all of them
/// were lower-case hex digits (checked by the caller, once for every field).
#[inline(always)]
fn hex16(digits: &[u8; 16]) -> (u64, u64) {
    let (hi, lo) = digits.split_at(8);
    let word = |half: &[u8]| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(half);
        nibbles8(u64::from_be_bytes(bytes))
    };
    let ((hi, bad_hi), (lo, bad_lo)) = (word(hi), word(lo));
    ((pack8(hi) << 32) | pack8(lo), bad_hi | bad_lo)
}

/// The fields of a well-formed `traceparent` (see [`is_valid_traceparent`]): trace id, span id
/// and the flags byte.
pub(crate) fn parse_traceparent(value: &str) -> Option<(u128, u64, u8)> {
    let v = value.as_bytes();
    // Optional whitespace around the value (W3C OWS): trimmed only when present.
    let v = if v.first().is_some_and(|b| matches!(b, b' ' | b'\t'))
        || v.last().is_some_and(|b| matches!(b, b' ' | b'\t'))
    {
        value.trim_matches(|c| c == ' ' || c == '\t').as_bytes()
    } else {
        v
    };
    // Fixed-size slices let the decoding below run without bounds checks.
    let head: &[u8; 55] = v.get(..55)?.try_into().ok()?;
    if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
        return None;
    }
    let mut bad = 0u8;
    let version = hex_byte(head[0], head[1], &mut bad);
    let flags = hex_byte(head[53], head[54], &mut bad);
    // Valid digits are below 16; INVALID has the high bits set.
    if bad & 0xf0 != 0 || version == 0xff {
        return None;
    }
    let (trace_hi, bad_trace_hi) = hex16(head[3..19].try_into().ok()?);
    let (trace_lo, bad_trace_lo) = hex16(head[19..35].try_into().ok()?);
    let (span_id, bad_span) = hex16(head[36..52].try_into().ok()?);
    let trace_id = (u128::from(trace_hi) << 64) | u128::from(trace_lo);
    if bad_trace_hi | bad_trace_lo | bad_span != 0 || trace_id == 0 || span_id == 0 {
        return None;
    }
    let well_formed = match (version, v.len()) {
        (0, len) => len == 55,
        // Later versions may append fields after a dash.
        (_, 55) => true,
        (_, _) => v[55] == b'-',
    };
    well_formed.then_some((trace_id, span_id, flags))
}

const TRACEPARENT: &str = "traceparent";

/// Wraps an extractor so that values longer than [`MAX_HEADER_VALUE_LEN`], and malformed
/// `traceparent` values, read as absent.
pub(crate) struct Bounded<'a>(pub(crate) &'a dyn Extractor);

impl Extractor for Bounded<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self
            .0
            .get(key)
            .filter(|v| v.len() <= MAX_HEADER_VALUE_LEN)?;
        if key.eq_ignore_ascii_case(TRACEPARENT) && !is_valid_traceparent(value) {
            return None;
        }
        Some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values: Vec<&str> = self
            .0
            .get_all(key)?
            .into_iter()
            .filter(|v| v.len() <= MAX_HEADER_VALUE_LEN)
            .collect();
        (!values.is_empty()).then_some(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn injector_replaces_differently_cased_key() {
        let mut m = map(&[("Traceparent", "stale"), ("user", "kept")]);
        MapInjector(&mut m).set("traceparent", "fresh".into());
        assert_eq!(m, map(&[("traceparent", "fresh"), ("user", "kept")]));
    }

    #[test]
    fn extractor_is_case_insensitive() {
        let m = map(&[("Traceparent", "v"), ("other", "x")]);
        assert_eq!(MapExtractor(&m).get("traceparent"), Some("v"));
        assert_eq!(MapExtractor(&m).get("missing"), None);
    }

    #[test]
    fn conflicting_duplicates_read_as_absent() {
        let m = map(&[("traceparent", "a"), ("TRACEPARENT", "b")]);
        assert_eq!(MapExtractor(&m).get("traceparent"), None);
        assert_eq!(
            MapExtractor(&m).get_all("traceparent").map(|mut v| {
                v.sort();
                v
            }),
            Some(vec!["a", "b"])
        );
        let same = map(&[("traceparent", "a"), ("TRACEPARENT", "a")]);
        assert_eq!(MapExtractor(&same).get("traceparent"), Some("a"));
    }

    #[test]
    fn unique_value_rules() {
        let entries = [("k", Some("1")), ("K", None)];
        assert_eq!(
            unique_value(entries, "k"),
            None,
            "a non-text twin is a conflict"
        );
        assert_eq!(unique_value([("k", Some("1"))], "k"), Some("1"));
        assert_eq!(unique_value([("x", Some("1"))], "k"), None);
    }

    #[test]
    fn text_rejects_invalid_utf8() {
        assert_eq!(text(b"ok"), Some("ok"));
        assert_eq!(text(&[0xff, 0xfe]), None);
    }

    #[test]
    fn traceparent_shape() {
        let ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert!(is_valid_traceparent(ok));
        assert!(is_valid_traceparent(&format!(" {ok}")));
        assert!(is_valid_traceparent(&ok.replacen("00", "01", 1)));
        assert!(is_valid_traceparent(&format!(
            "{}-extra",
            ok.replacen("00", "01", 1)
        )));
        for bad in [
            "",
            "00-abc-def-01",
            &ok.to_uppercase(),
            &ok.replacen("00", "ff", 1),
            &format!("{ok}-extra"),
            &format!("{}x", ok.replacen("00", "01", 1)),
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad}");
        }
    }

    /// The word-wide decoder against the table, for every byte in every position.
    #[test]
    fn hex8_matches_the_table() {
        let base = *b"0af76519";
        for pos in 0..8 {
            for byte in 0..=255u8 {
                let mut digits = base;
                digits[pos] = byte;
                let mut bad = 0u8;
                let mut expected = [0u8; 4];
                for (i, out) in expected.iter_mut().enumerate() {
                    *out = hex_byte(digits[2 * i], digits[2 * i + 1], &mut bad);
                }
                let expected = (bad & 0xf0 == 0).then(|| u32::from_be_bytes(expected));
                assert_eq!(hex8(digits), expected, "{digits:?}");
            }
        }
        assert_eq!(hex8(*b"ffffffff"), Some(u32::MAX));
        assert_eq!(hex8(*b"00000000"), Some(0));
        assert_eq!(hex8(*b"01234567"), Some(0x0123_4567));
        assert_eq!(hex8(*b"89abcdef"), Some(0x89ab_cdef));
    }

    /// The decoder against the table for words of random bytes, mostly digits: every pair of
    /// neighbouring bytes meets, high bits included (a carry from one byte into the next would
    /// show here, not in the one-byte test above).
    #[test]
    fn hex8_matches_the_table_on_random_words() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let digits = b"0123456789abcdef";
        for _ in 0..200_000 {
            let r = next();
            let mut word = [0u8; 8];
            for (i, byte) in word.iter_mut().enumerate() {
                let pick = (r >> (8 * i)) as u8;
                *byte = match next() % 4 {
                    0 => pick,
                    _ => digits[usize::from(pick & 0x0f)],
                };
            }
            let mut bad = 0u8;
            let mut expected = [0u8; 4];
            for (i, out) in expected.iter_mut().enumerate() {
                *out = hex_byte(word[2 * i], word[2 * i + 1], &mut bad);
            }
            let expected = (bad & 0xf0 == 0).then(|| u32::from_be_bytes(expected));
            assert_eq!(hex8(word), expected, "{word:?}");
        }
    }

    /// [`nibbles8`] and [`pack8`] as one decoder of eight digits, for the tests.
    fn hex8(digits: [u8; 8]) -> Option<u32> {
        let (nibbles, bad) = nibbles8(u64::from_be_bytes(digits));
        (bad == 0).then(|| pack8(nibbles) as u32)
    }

    #[test]
    fn bounded_drops_oversized_values() {
        let big = "x".repeat(MAX_HEADER_VALUE_LEN + 1);
        let m = map(&[
            ("baggage", big.as_str()),
            ("tracestate", "ok"),
            ("traceparent", "bad"),
        ]);
        let inner = MapExtractor(&m);
        let b = Bounded(&inner);
        assert_eq!(b.get("baggage"), None);
        assert_eq!(b.get_all("baggage"), None);
        assert_eq!(b.get("tracestate"), Some("ok"));
        assert_eq!(b.get("traceparent"), None);
    }
}

//! Identifiers the gateway hands out: completion ids, tool-call ids, and
//! the W3C trace context's trace and span ids (`traceparent`).
//!
//! Ollama numbers its completions `chatcmpl-0`..`chatcmpl-998`, which collide
//! across requests; ours carry 29 random alphanumerics (about 170 bits), so a
//! completion id is unique and can name the request in logs and usage
//! records. They come from a per-thread generator seeded from the OS: ids are
//! not secrets, so they need uniqueness, not cryptographic strength.

/// Length of the random part of a completion id.
const ID_CHARS: usize = 29;

fn push_random(id: &mut String, n: usize) {
    for _ in 0..n {
        id.push(fastrand::alphanumeric());
    }
}

/// A fresh id with the given prefix: `chatcmpl-`, `cmpl-`, `req-`.
pub fn request_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + ID_CHARS);
    id.push_str(prefix);
    push_random(&mut id, ID_CHARS);
    id
}

/// A fresh id of `n` random alphanumerics after `prefix` (`msg_`, `toolu_`, `resp_`, `fc_`…).
pub fn prefixed(prefix: &str, n: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + n);
    id.push_str(prefix);
    push_random(&mut id, n);
    id
}

/// A fresh tool-call id, for upstreams that send calls without one.
pub fn tool_call_id() -> String {
    let mut id = String::with_capacity(13);
    id.push_str("call_");
    push_random(&mut id, 8);
    id
}

/// A W3C trace context as `traceparent` carries it: the trace, the span
/// that is the parent of whatever receives it, and whether it is sampled.
/// Ids of all zeros are invalid (the W3C rule), so a parsed or fresh one
/// never has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

impl TraceParent {
    /// Reads a `traceparent` value: version 00 exactly, or a later version's
    /// first four fields (its own rule for forward compatibility). `None`
    /// for anything else, which the W3C rule says to treat as no parent.
    pub fn parse(value: &str) -> Option<Self> {
        let v = value.trim_matches([' ', '\t']).as_bytes();
        if v.len() < TRACEPARENT_LEN || (v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-') {
            return None;
        }
        let version = hex_bytes::<1>(&v[0..2])?[0];
        if version == 0xff || (version == 0 && v.len() != TRACEPARENT_LEN) {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let trace_id = hex_bytes::<16>(&v[3..35])?;
        let span_id = hex_bytes::<8>(&v[36..52])?;
        let flags = hex_bytes::<1>(&v[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// The version-00 value (55 bytes), written in place: it goes into every
    /// traced request's call to the host and its reply.
    pub fn bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut v[3..35], &self.trace_id);
        hex_into(&mut v[36..52], &self.span_id);
        if self.sampled {
            v[54] = b'1';
        }
        v
    }

    /// Appends the version-00 value.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes());
    }

    /// The version-00 value as a string.
    pub fn header(&self) -> String {
        self.bytes().iter().map(|&b| char::from(b)).collect()
    }
}

/// A fresh trace id (random, never all zeros).
pub fn trace_id() -> [u8; 16] {
    let mut id = fastrand::u128(1..).to_be_bytes();
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

/// A fresh span id (random, never all zeros).
pub fn span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// Lower-case hex of `bytes`, appended.
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let at = out.len();
    out.resize(at + 2 * bytes.len(), 0);
    hex_into(&mut out[at..], bytes);
}

/// `bytes` as lower-case hex into `out`, two digits a byte (`out` is that long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
}

/// `bytes` as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

/// Exactly `2 * N` lower-case hex digits (the W3C form; upper case is invalid).
fn hex_bytes<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_long_random_and_unique() {
        let a = request_id("chatcmpl-");
        let b = request_id("chatcmpl-");
        assert_ne!(a, b);
        assert_eq!(a.len(), 9 + 29);
        assert!(a["chatcmpl-".len()..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(tool_call_id().starts_with("call_"));
    }

    #[test]
    fn traceparent_reads_the_w3c_forms_and_refuses_the_rest() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::parse(v).expect("valid");
        assert!(t.sampled);
        assert_eq!(hex(&t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.header(), v);
        let unsampled = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
        assert!(!unsampled.sampled);
        // A later version may carry more fields after a dash.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let fresh = TraceParent { trace_id: trace_id(), span_id: span_id(), sampled: true };
        assert_eq!(TraceParent::parse(&fresh.header()), Some(fresh));
        // The in-place writer against the plain hex of each field.
        for sampled in [true, false] {
            let t = TraceParent { trace_id: trace_id(), span_id: span_id(), sampled };
            let plain = format!("00-{}-{}-0{}", hex(&t.trace_id), hex(&t.span_id), u8::from(sampled));
            assert_eq!(t.header(), plain);
            let mut out = b"x".to_vec();
            t.write(&mut out);
            assert_eq!(&out[1..], plain.as_bytes());
        }
    }
}

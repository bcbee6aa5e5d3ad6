//! Token estimates: what a request's prompt will cost before Ollama counts it.
//!
//! Ollama reports the real count (`prompt_eval_count`) only in a reply's
//! final line, but the gateway needs a number sooner: to reserve a request's
//! tokens against its key's token rate and quota at admission, and to charge
//! a request that reached the model but ended without a final line (the
//! client left, the stream failed, the gateway stopped). The estimate reads
//! the native body the request was converted into, so every protocol is
//! estimated the same way:
//!
//! - every string value counts its bytes, at [`BYTES_PER_TOKEN`] bytes a
//!   token (model names, roles and image data excepted);
//! - tool definitions and tool calls count all their JSON, structure
//!   included, at [`JSON_BYTES_PER_TOKEN`] (a chat template writes them into
//!   the prompt as JSON, where braces, quotes and keys are tokens too);
//! - each message adds [`TOKENS_PER_MESSAGE`] (the chat template's markers),
//!   each image [`TOKENS_PER_IMAGE`], each request [`TOKENS_PER_REQUEST`].
//!
//! That raw figure is then scaled per model by a [`Calibration`]: the ratio
//! of the real `prompt_eval_count` to the raw figure, learned from every
//! reply that reports one (a moving average, bounded to ×0.1..×10), so the
//! estimate follows each model's tokenizer and template as traffic goes by.

use std::cell::RefCell;
use std::collections::HashMap;

/// Bytes of text per token before calibration (English prose and code run 3.5–4.5).
pub const BYTES_PER_TOKEN: u64 = 4;
/// Bytes of JSON (tool definitions and calls) per token before calibration.
pub const JSON_BYTES_PER_TOKEN: u64 = 3;
/// A chat template's tokens around one message.
pub const TOKENS_PER_MESSAGE: u64 = 4;
/// Tokens one image costs before calibration (a 336-pixel CLIP tile is 576).
pub const TOKENS_PER_IMAGE: u64 = 576;
/// Tokens around the whole prompt (template start and the reply's header).
pub const TOKENS_PER_REQUEST: u64 = 3;

/// What a native body holds, as counted for the estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub text_bytes: u64,
    /// Bytes of tool definitions and calls, structure included.
    pub json_bytes: u64,
    pub messages: u64,
    pub images: u64,
}

impl Counts {
    /// The uncalibrated estimate, in tokens.
    pub fn raw_tokens(&self) -> u64 {
        self.text_bytes.div_ceil(BYTES_PER_TOKEN)
            + self.json_bytes.div_ceil(JSON_BYTES_PER_TOKEN)
            + self.messages * TOKENS_PER_MESSAGE
            + self.images * TOKENS_PER_IMAGE
            + TOKENS_PER_REQUEST
    }
}

/// Counts the text, messages and images of a native request body (valid JSON,
/// as the converters write it). One pass over the bytes, no allocation;
/// strings — nearly all of a prompt's bytes — are skipped with a vector
/// search for their closing quote.
pub fn count(native: &[u8]) -> Counts {
    count_with(native, string_end)
}

/// [`count`]'s plain twin: each string walked a byte at a time. Tests and
/// `benches/convert.rs` hold the two equal.
pub fn count_plain(native: &[u8]) -> Counts {
    count_with(native, string_end_plain)
}

/// The count, with `string_end` finding where each string ends.
#[inline(always)]
fn count_with(native: &[u8], string_end: impl Fn(&[u8], usize) -> usize + Copy) -> Counts {
    let mut c = Counts::default();
    let mut depth = 0usize;
    // The last key seen, and the depth it was seen at.
    let mut key: &[u8] = b"";
    let mut i = 0;
    while i < native.len() {
        match native[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let start = i + 1;
                let j = string_end(native, start);
                let s = &native[start..j.min(native.len())];
                let mut k = j + 1;
                while k < native.len() && native[k].is_ascii_whitespace() {
                    k += 1;
                }
                if native.get(k) == Some(&b':') {
                    // A key: the message's own fields are structure.
                    key = s;
                    if key == b"role" && depth == 3 {
                        c.messages += 1;
                    }
                    // Tools and tool calls: their whole JSON, read past at once.
                    if (depth == 1 && key == b"tools") || (depth == 3 && key == b"tool_calls") {
                        let end = value_end(native, k + 1, string_end);
                        c.json_bytes += (end - (k + 1)) as u64;
                        i = end;
                        continue;
                    }
                } else {
                    match key {
                        b"model" | b"role" | b"format" => {}
                        b"images" => c.images += 1,
                        _ => c.text_bytes += s.len() as u64,
                    }
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    c
}

/// Where the string whose body starts at `start` ends: its closing quote's
/// index, or the end of the input.
fn string_end(b: &[u8], start: usize) -> usize {
    let mut j = start;
    while let Some(off) = b.get(j..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
        j += off;
        if b[j] == b'"' {
            return j;
        }
        j += 2;
    }
    b.len()
}

/// [`string_end`], a byte at a time.
fn string_end_plain(b: &[u8], start: usize) -> usize {
    let mut j = start;
    while j < b.len() && b[j] != b'"' {
        j += if b[j] == b'\\' { 2 } else { 1 };
    }
    j.min(b.len())
}

/// Where the JSON value that starts at or after `at` ends (one past it): an
/// array or object with its nesting and strings followed; a scalar up to
/// the next `,`, `}` or `]`.
fn value_end(b: &[u8], at: usize, string_end: impl Fn(&[u8], usize) -> usize) -> usize {
    let mut i = at;
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    let mut depth = 0usize;
    while i < b.len() {
        match b[i] {
            b'"' => i = string_end(b, i + 1),
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return i,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return (i + 1).min(b.len());
                }
            }
            b',' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// Most models a worker keeps a calibration for.
const MAX_MODELS: usize = 256;
/// The ratio is kept in thousandths.
const ONE: u64 = 1000;

/// Per-model ratios of real to raw prompt counts, learned by one worker.
#[derive(Default)]
pub struct Calibration {
    ratios: RefCell<HashMap<String, u64>>,
}

impl Calibration {
    /// The calibrated estimate of a prompt whose raw estimate is `raw`.
    pub fn estimate(&self, model: &str, raw: u64) -> u64 {
        let ratio = self.ratios.borrow().get(model).copied().unwrap_or(ONE);
        (raw * ratio).div_ceil(ONE).max(1)
    }

    /// Learns from a reply whose real prompt count is known.
    pub fn observe(&self, model: &str, raw: u64, real: u64) {
        if raw == 0 || real == 0 {
            return;
        }
        let seen = (real * ONE / raw).clamp(ONE / 10, ONE * 10);
        let mut ratios = self.ratios.borrow_mut();
        match ratios.get_mut(model) {
            // A moving average over about the last eight replies.
            Some(r) => *r = (*r * 7 + seen).div_ceil(8),
            None => {
                if ratios.len() >= MAX_MODELS {
                    ratios.clear();
                }
                ratios.insert(model.to_owned(), seen);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_text_messages_and_images_but_not_structure() {
        let body = br#"{"model":"llama3:latest","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say \"hi\"","images":["aGVsbG8=","d29ybGQ="]}],"stream":true,"tools":[{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}],"options":{"num_predict":5}}"#;
        let c = count(body);
        assert_eq!(c.messages, 2);
        assert_eq!(c.images, 2);
        // "Be brief." 9 + "Say \"hi\"" 10 (escaped); the tools' JSON whole.
        assert_eq!(c.text_bytes, 9 + 10);
        let tools = br#"[{"type":"function","function":{"name":"get","parameters":{"type":"object"}}}]"#;
        assert_eq!(c.json_bytes, tools.len() as u64);
        assert_eq!(c.raw_tokens(), 19u64.div_ceil(4) + (tools.len() as u64).div_ceil(3) + 8 + 2 * 576 + 3);
        let calls = count(br#"{"model":"m","messages":[{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{"a":"x"}}}]},{"role":"tool","content":"ok"}]}"#);
        assert_eq!((calls.messages, calls.text_bytes), (2, 2));
        assert_eq!(calls.json_bytes, br#"[{"function":{"name":"f","arguments":{"a":"x"}}}]"#.len() as u64);
        let prompt = count(br#"{"model":"m","prompt":"def add(a, b):","suffix":"return c","stream":false}"#);
        assert_eq!((prompt.text_bytes, prompt.messages), (22, 0));
    }

    #[test]
    fn the_count_and_its_plain_twin_agree() {
        let long = "A \\\"quoted\\\" line, and a backslash \\\\ then more text. ".repeat(50);
        let bodies: Vec<Vec<u8>> = vec![
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
            format!(r#"{{"model":"m","messages":[{{"role":"system","content":"{long}"}},{{"role":"user","content":"x\\","images":["aa"]}}]}}"#).into_bytes(),
            br#"{"model":"m","prompt":"\u00e9\"","suffix":"","tools":[{"a":"\"}"}]}"#.to_vec(),
            br#"{"model":"m","prompt":"unterminated \"#.to_vec(),
            br#"{"model":"m","prompt":"ends in a backslash\"#.to_vec(),
            b"\"".to_vec(),
            Vec::new(),
        ];
        for body in &bodies {
            assert_eq!(count(body), count_plain(body), "{}", String::from_utf8_lossy(body));
            // Every prefix too: cut anywhere, inside escapes and strings.
            for cut in 0..body.len().min(400) {
                assert_eq!(count(&body[..cut]), count_plain(&body[..cut]));
            }
        }
        assert!(count(bodies[1].as_slice()).text_bytes > 50 * 40);
    }

    #[test]
    fn calibration_follows_the_real_counts_and_stays_bounded() {
        let c = Calibration::default();
        assert_eq!(c.estimate("m", 100), 100);
        c.observe("m", 100, 50);
        assert_eq!(c.estimate("m", 100), 50);
        for _ in 0..40 {
            c.observe("m", 100, 80);
        }
        assert!((79..=81).contains(&c.estimate("m", 100)), "{}", c.estimate("m", 100));
        c.observe("x", 10, 1_000_000);
        assert_eq!(c.estimate("x", 10), 100, "at most ten times the raw figure");
        assert_eq!(c.estimate("other", 7), 7);
    }
}

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
//!   each image [`TOKENS_PER_IMAGE`], each request [`TOKENS_PER_REQUEST`];
//! - token ids given as such (`/api/generate`'s `context`) count one each.
//!
//! That raw figure is then scaled by a [`Calibration`]: the ratio of the real
//! `prompt_eval_count` to the raw figure, so the estimate follows a model's
//! tokenizer and template as traffic goes by. A ratio is a key's own, per
//! model (a key cannot move another key's estimates), learned only from its
//! requests that completed with the host's count, as a moving average that
//! one reply moves by at most a quarter ([`MAX_STEP`]), and it stays within
//! [`MIN_RATIO`]..[`MAX_RATIO`]: whatever a key sends, its charge for a
//! request that ends without a count is at least half the uncalibrated
//! estimate, and no estimate is more than four times it.

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
    /// Token ids sent as numbers (`context`).
    pub token_ids: u64,
    /// Tools are declared (a top-level `tools` array that is not empty).
    pub tools: bool,
    /// Where the top-level `think` member lies, its comma before it
    /// included, so that it can be taken out for a model that cannot think.
    pub think: Option<(usize, usize)>,
}

impl Counts {
    /// The uncalibrated estimate, in tokens.
    pub fn raw_tokens(&self) -> u64 {
        self.text_bytes.div_ceil(BYTES_PER_TOKEN)
            + self.json_bytes.div_ceil(JSON_BYTES_PER_TOKEN)
            + self.messages * TOKENS_PER_MESSAGE
            + self.images * TOKENS_PER_IMAGE
            + self.token_ids
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
                    // Token ids: one each, read past at once.
                    if depth == 1 && key == b"context" {
                        let end = value_end(native, k + 1, string_end);
                        c.token_ids += count_numbers(&native[k + 1..end]);
                        i = end;
                        continue;
                    }
                    // Tools and tool calls: their whole JSON, read past at once.
                    if (depth == 1 && key == b"tools") || (depth == 3 && key == b"tool_calls") {
                        let end = value_end(native, k + 1, string_end);
                        c.json_bytes += (end - (k + 1)) as u64;
                        if depth == 1 {
                            c.tools |= native[k + 1..end].contains(&b'{');
                        }
                        i = end;
                        continue;
                    }
                    if depth == 1 && key == b"think" {
                        let end = value_end(native, k + 1, string_end);
                        let comma = native[..i].iter().rposition(|&b| !b.is_ascii_whitespace());
                        if let Some(comma) = comma.filter(|&at| native[at] == b',') {
                            c.think = Some((comma, end));
                        }
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

/// The numbers in a JSON value (an array of token ids): runs of digits.
fn count_numbers(value: &[u8]) -> u64 {
    let mut n = 0;
    let mut in_number = false;
    for &b in value {
        let digit = b.is_ascii_digit();
        n += u64::from(digit && !in_number);
        in_number = digit || (in_number && matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    }
    n
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

/// Most (key, model) ratios a worker keeps; past it, it starts again.
const MAX_RATIOS: usize = 4096;
/// The ratio is kept in thousandths.
const ONE: u64 = 1000;
/// The lowest ratio: a charge never falls below half the uncalibrated estimate.
pub const MIN_RATIO: u64 = ONE / 2;
/// The highest ratio: an estimate is at most four times the uncalibrated one.
pub const MAX_RATIO: u64 = ONE * 4;
/// One reply moves a ratio by at most a quarter of it.
pub const MAX_STEP: u64 = ONE / 4;

/// Ratios of real to raw prompt counts, per key and model, learned by one worker.
#[derive(Default)]
pub struct Calibration {
    /// Key id → (model, ratio) for the models it used.
    ratios: RefCell<HashMap<String, Vec<(String, u64)>>>,
    len: std::cell::Cell<usize>,
}

impl Calibration {
    fn ratio(&self, key: &str, model: &str) -> u64 {
        let ratios = self.ratios.borrow();
        ratios.get(key).and_then(|m| m.iter().find(|(n, _)| n == model)).map_or(ONE, |(_, r)| *r)
    }

    /// The calibrated estimate, for `key`, of a prompt to `model` whose raw estimate is `raw`.
    pub fn estimate(&self, key: &str, model: &str, raw: u64) -> u64 {
        (raw.saturating_mul(self.ratio(key, model))).div_ceil(ONE).max(1)
    }

    /// Learns from a request of `key` that completed with the host's count.
    pub fn observe(&self, key: &str, model: &str, raw: u64, real: u64) {
        if raw == 0 || real == 0 {
            return;
        }
        let seen = (real.saturating_mul(ONE) / raw).clamp(MIN_RATIO, MAX_RATIO);
        let mut ratios = self.ratios.borrow_mut();
        if let Some((_, r)) = ratios.get_mut(key).and_then(|m| m.iter_mut().find(|(n, _)| n == model)) {
            // A moving average over about the last eight replies, each step bounded.
            let step = (*r * MAX_STEP / ONE).max(1);
            // Rounded towards what was seen, so the average reaches it.
            let next = if seen < *r { (*r * 7 + seen) / 8 } else { (*r * 7 + seen).div_ceil(8) };
            *r = next.clamp(r.saturating_sub(step), *r + step).clamp(MIN_RATIO, MAX_RATIO);
            return;
        }
        if self.len.get() >= MAX_RATIOS {
            ratios.clear();
            self.len.set(0);
        }
        // A first reply is a step from the uncalibrated ratio like any other.
        let first = seen.clamp(ONE - MAX_STEP, ONE + MAX_STEP);
        ratios.entry(key.to_owned()).or_default().push((model.to_owned(), first));
        self.len.set(self.len.get() + 1);
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
    fn calibration_follows_the_real_counts_within_its_bounds() {
        let c = Calibration::default();
        assert_eq!(c.estimate("k", "m", 100), 100);
        c.observe("k", "m", 100, 50);
        assert_eq!(c.estimate("k", "m", 100), 75, "one reply moves the ratio a quarter at most");
        for _ in 0..60 {
            c.observe("k", "m", 100, 80);
        }
        assert!((79..=81).contains(&c.estimate("k", "m", 100)), "{}", c.estimate("k", "m", 100));
        for _ in 0..60 {
            c.observe("k", "x", 10, 1_000_000);
        }
        assert_eq!(c.estimate("k", "x", 10), 40, "at most four times the raw figure");
        assert_eq!(c.estimate("k", "other", 7), 7);
    }

    #[test]
    fn a_key_moves_only_its_own_estimates_and_never_below_half() {
        let c = Calibration::default();
        for _ in 0..1000 {
            c.observe("attacker", "m", 20_000, 1);
        }
        assert_eq!(c.estimate("attacker", "m", 20_000), 10_000, "half the raw estimate at the least");
        assert_eq!(c.estimate("victim", "m", 2_000), 2_000, "another key's estimate is its own");
    }

    #[test]
    fn token_ids_count_one_each() {
        let ids: Vec<String> = (0..30_000).map(|i| (i * 7 % 32000).to_string()).collect();
        let body = format!(r#"{{"model":"m","prompt":"","context":[{}],"stream":false}}"#, ids.join(","));
        let c = count(body.as_bytes());
        assert_eq!(c.token_ids, 30_000);
        assert_eq!(c.raw_tokens(), 30_000 + TOKENS_PER_REQUEST);
        assert_eq!(count(body.as_bytes()), count_plain(body.as_bytes()));
        assert_eq!(count(br#"{"model":"m","context":[],"prompt":"abcd"}"#).token_ids, 0);
        assert_eq!(count(br#"{"model":"m","context":[1.5e3, -2]}"#).token_ids, 2);
    }
}

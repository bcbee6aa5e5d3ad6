//! A zero-copy reader for one line of Ollama's native JSON output.
//!
//! Every streamed token passes through here, so instead of building a JSON
//! tree the scanner walks the line once and records where the few fields the
//! gateway needs sit in it: `message.content` and `message.thinking` as their
//! *escaped* string bodies (valid JSON string bodies as they are, so they can
//! be copied into an SSE chunk without unescaping and re-escaping),
//! `message.tool_calls` as raw JSON, the `done` flag, `done_reason`, the token
//! counts, `created_at` and `error`. Everything else is validated and skipped.
//! The scanner is iterative (no recursion, bounded depth) so hostile nesting
//! cannot exhaust the stack. `transcode::plain` is the straightforward
//! serde_json reading of the same lines that the tests compare against.

/// The fields of one native line the gateway acts on, borrowed from the line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NativeLine<'a> {
    /// Escaped body of `message.content` (or `response` on `/api/generate`).
    pub content: &'a [u8],
    /// Escaped body of `message.thinking` (or top-level `thinking`).
    pub thinking: &'a [u8],
    /// Raw JSON of `message.tool_calls`, when present and not `null`.
    pub tool_calls: Option<&'a [u8]>,
    pub done: bool,
    /// Escaped body of `done_reason`.
    pub done_reason: Option<&'a [u8]>,
    pub prompt_eval_count: u64,
    pub eval_count: u64,
    /// `load_duration`: nanoseconds the host spent loading the model for this request.
    pub load_duration: u64,
    /// `prompt_cached_count`: of the prompt's tokens, those the host found in
    /// its prompt cache (a host that does not say counts as none).
    pub prompt_cached_count: u64,
    /// Escaped body of `created_at`.
    pub created_at: Option<&'a [u8]>,
    /// The `error` field: escaped body when it is a string, the raw JSON otherwise.
    pub error: Option<NativeError<'a>>,
}

impl NativeLine<'_> {
    /// The usage a final line reports.
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_eval_count,
            completion_tokens: self.eval_count,
            load_ns: self.load_duration,
            cached_tokens: self.prompt_cached_count.min(self.prompt_eval_count),
            finish: self.done_reason.map_or(Finish::None, Finish::of),
        }
    }
}

/// An `{"error": ...}` value from the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeError<'a> {
    /// The escaped body of a string message.
    Message(&'a [u8]),
    /// Some other JSON value.
    Other,
}

/// The line is not the JSON object it should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError(pub &'static str);

/// String bytes scanned one by one before handing the rest to memchr.
const SHORT: usize = 16;

/// Deepest nesting the scanner follows inside a line.
const MAX_DEPTH: u32 = 128;

/// Reads one native line (or a whole non-streamed response body).
pub fn parse_native_line(line: &[u8]) -> Result<NativeLine<'_>, ScanError> {
    if let Some(l) = token_line(line) {
        return Ok(l);
    }
    scan_line(line)
}

/// The shape Ollama writes for nearly every streamed token, byte for byte:
/// `{"model":"M","created_at":"T","message":{"role":"assistant","content":"C"},"done":false}`
/// (chat) or `{"model":"M","created_at":"T","response":"C","done":false}` (generate).
/// Matching the fixed parts as literals skips scanning keys one by one (a
/// third of the transcoder's time per token). Any difference at all — other
/// keys, another order, whitespace, an escape in the model name — returns
/// `None` and the line goes through the general scanner, which gives the
/// same answer for the lines this accepts (tested, and fuzzed together).
#[inline]
pub(crate) fn token_line(line: &[u8]) -> Option<NativeLine<'_>> {
    const HEAD: &[u8] = b"{\"model\":\"";
    const AFTER_MODEL: &[u8] = b"\",\"created_at\":\"";
    const AFTER_DATE: &[u8] = b"\",\"message\":{\"role\":\"assistant\",\"content\":\"";
    const TAIL: &[u8] = b"},\"done\":false}";
    // `/api/generate` writes `"response":"C","done":false}` after the date.
    const AFTER_DATE_GENERATE: &[u8] = b"\",\"response\":\"";
    const TAIL_GENERATE: &[u8] = b",\"done\":false}";
    // A quote that closes a plain string (no escapes in it): its offset in `b`.
    let plain_end = |b: &[u8]| match memchr::memchr2(b'"', b'\\', b) {
        Some(p) if b[p] == b'"' => Some(p),
        _ => None,
    };
    let rest = line.strip_prefix(HEAD)?;
    let model_end = plain_end(rest)?;
    let rest = rest[model_end..].strip_prefix(AFTER_MODEL)?;
    let date_end = plain_end(rest)?;
    let created_at = &rest[..date_end];
    let rest = &rest[date_end..];
    let (rest, tail) = match rest.strip_prefix(AFTER_DATE) {
        Some(r) => (r, TAIL),
        None => (rest.strip_prefix(AFTER_DATE_GENERATE)?, TAIL_GENERATE),
    };
    let mut c = Cursor { b: rest, i: 0 };
    let content = c.copied_body().ok()?;
    if &rest[c.i..] != tail {
        return None;
    }
    Some(NativeLine { content, created_at: Some(created_at), ..NativeLine::default() })
}

/// The general reader: any key order, any whitespace, every field.
pub(crate) fn scan_line(line: &[u8]) -> Result<NativeLine<'_>, ScanError> {
    let mut c = Cursor { b: line, i: 0 };
    let mut out = NativeLine::default();
    c.ws();
    c.expect(b'{')?;
    c.ws();
    if c.peek()? == b'}' {
        c.i += 1;
    } else {
        loop {
            c.ws();
            let key = c.string()?;
            c.ws();
            c.expect(b':')?;
            c.ws();
            match key {
                b"message" => c.message(&mut out)?,
                b"done" => out.done = c.boolean()?,
                b"done_reason" => out.done_reason = c.opt_string()?,
                b"prompt_eval_count" => out.prompt_eval_count = c.count()?,
                b"eval_count" => out.eval_count = c.count()?,
                b"load_duration" => out.load_duration = c.count()?,
                b"prompt_cached_count" => out.prompt_cached_count = c.count()?,
                // Only read (as a date), never copied: no UTF-8 check needed.
                b"created_at" => {
                    out.created_at = if c.peek()? == b'n' {
                        c.literal(b"null")?;
                        None
                    } else {
                        Some(c.string()?)
                    }
                }
                b"response" => out.content = c.opt_string()?.unwrap_or(b""),
                b"thinking" => out.thinking = c.opt_string()?.unwrap_or(b""),
                b"error" => {
                    out.error = Some(if c.peek()? == b'"' {
                        NativeError::Message(c.copied_string()?)
                    } else {
                        c.skip_value()?;
                        NativeError::Other
                    })
                }
                _ => c.skip_value()?,
            }
            c.ws();
            match c.next()? {
                b',' => continue,
                b'}' => break,
                _ => return Err(ScanError("expected ',' or '}' in upstream object")),
            }
        }
    }
    c.ws();
    if c.i != line.len() {
        return Err(ScanError("trailing bytes after upstream JSON object"));
    }
    Ok(out)
}

/// The leading messages of a native `/api/chat` body, up to and including
/// its first `user` message: the raw bytes of those array elements, which
/// every later turn of the same conversation repeats byte for byte (the
/// gateway wrote them, the same way each time). `None` for a body without
/// a `messages` array or without a user message in it. The scan stops at
/// that message: the rest of the body (the long history) is not read.
pub fn leading_messages(body: &[u8]) -> Option<&[u8]> {
    let mut c = Cursor { b: body, i: 0 };
    c.ws();
    c.expect(b'{').ok()?;
    loop {
        c.ws();
        let key = c.string().ok()?;
        c.ws();
        c.expect(b':').ok()?;
        c.ws();
        if key == b"messages" {
            break;
        }
        c.skip_value().ok()?;
        c.ws();
        if c.next().ok()? != b',' {
            return None;
        }
    }
    c.expect(b'[').ok()?;
    let start = c.i;
    loop {
        c.ws();
        c.expect(b'{').ok()?;
        let mut user = false;
        loop {
            c.ws();
            if c.peek().ok()? == b'}' {
                c.i += 1;
                break;
            }
            let key = c.string().ok()?;
            c.ws();
            c.expect(b':').ok()?;
            c.ws();
            if key == b"role" && c.peek().ok()? == b'"' {
                user |= c.string().ok()? == b"user";
            } else {
                c.skip_value().ok()?;
            }
            c.ws();
            match c.next().ok()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
        if user {
            return Some(&body[start..c.i]);
        }
        c.ws();
        if c.next().ok()? != b',' {
            return None;
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Result<u8, ScanError> {
        self.b.get(self.i).copied().ok_or(ScanError("upstream JSON ends early"))
    }

    #[inline]
    fn next(&mut self) -> Result<u8, ScanError> {
        let c = self.peek()?;
        self.i += 1;
        Ok(c)
    }

    #[inline]
    fn expect(&mut self, want: u8) -> Result<(), ScanError> {
        if self.next()? == want { Ok(()) } else { Err(ScanError("unexpected byte in upstream JSON")) }
    }

    /// Reads a string and returns its escaped body (between the quotes).
    /// Escapes are checked for shape; the rest is checked only by
    /// [`Self::copied_string`], for the strings that are copied into output.
    #[inline]
    fn string(&mut self) -> Result<&'a [u8], ScanError> {
        self.expect(b'"')?;
        self.string_body()
    }

    /// The rest of a string whose opening quote was just read.
    #[inline]
    fn string_body(&mut self) -> Result<&'a [u8], ScanError> {
        let start = self.i;
        loop {
            // Jump to the next quote or backslash; everything between is copied as is.
            // Most strings here (keys, roles, a token) end within a few bytes, where a
            // plain loop beats a vector search's set-up; longer ones go to memchr.
            let rest = &self.b[self.i..];
            let head = &rest[..rest.len().min(SHORT)];
            let off = match head.iter().position(|&c| c == b'"' || c == b'\\') {
                Some(off) => off,
                None => match memchr::memchr2(b'"', b'\\', &rest[head.len()..]) {
                    Some(off) => head.len() + off,
                    None => return Err(ScanError("unterminated string in upstream JSON")),
                },
            };
            self.i += off;
            if self.b[self.i] == b'"' {
                let body = &self.b[start..self.i];
                self.i += 1;
                return Ok(body);
            }
            // A backslash escape.
            self.i += 1;
            match self.next()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                b'u' => {
                    let hex = self.b.get(self.i..self.i + 4).ok_or(ScanError("short \\u escape"))?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(ScanError("invalid \\u escape in upstream string"));
                    }
                    self.i += 4;
                }
                _ => return Err(ScanError("invalid escape in upstream string")),
            }
        }
    }

    /// A string whose body is copied into the gateway's output: it must also
    /// be valid UTF-8 without raw control characters, so that the copy is a
    /// valid JSON string body. Only these strings pay for the check.
    fn copied_string(&mut self) -> Result<&'a [u8], ScanError> {
        self.expect(b'"')?;
        self.copied_body()
    }

    /// [`Self::copied_string`] after its opening quote.
    fn copied_body(&mut self) -> Result<&'a [u8], ScanError> {
        let body = self.string_body()?;
        if body.iter().any(|&c| c < 0x20) {
            return Err(ScanError("control character in upstream string"));
        }
        if !body.is_ascii() && std::str::from_utf8(body).is_err() {
            return Err(ScanError("upstream string is not valid UTF-8"));
        }
        Ok(body)
    }

    /// A copied string, or `null` (None). Other types are an error.
    fn opt_string(&mut self) -> Result<Option<&'a [u8]>, ScanError> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            Ok(None)
        } else {
            self.copied_string().map(Some)
        }
    }

    fn boolean(&mut self) -> Result<bool, ScanError> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|_| true),
            b'f' => self.literal(b"false").map(|_| false),
            _ => Err(ScanError("expected a boolean in upstream JSON")),
        }
    }

    /// A token count: a non-negative integer. Any other number reads as 0.
    fn count(&mut self) -> Result<u64, ScanError> {
        let start = self.i;
        self.number()?;
        let digits = &self.b[start..self.i];
        let mut n: u64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return Ok(0);
            }
            n = n.saturating_mul(10).saturating_add(u64::from(d - b'0'));
        }
        Ok(n)
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ScanError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(ScanError("invalid literal in upstream JSON"))
        }
    }

    fn number(&mut self) -> Result<(), ScanError> {
        let start = self.i;
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let digits = |c: &mut Self| {
            let s = c.i;
            while c.b.get(c.i).is_some_and(u8::is_ascii_digit) {
                c.i += 1;
            }
            c.i > s
        };
        if !digits(self) {
            return Err(ScanError("invalid number in upstream JSON"));
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !digits(self) {
                return Err(ScanError("invalid number in upstream JSON"));
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                return Err(ScanError("invalid number in upstream JSON"));
            }
        }
        debug_assert!(self.i > start);
        Ok(())
    }

    /// The `message` object of a chat line.
    fn message(&mut self, out: &mut NativeLine<'a>) -> Result<(), ScanError> {
        if self.peek()? == b'n' {
            return self.literal(b"null");
        }
        self.expect(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            match key {
                b"content" => out.content = self.opt_string()?.unwrap_or(b""),
                b"thinking" => out.thinking = self.opt_string()?.unwrap_or(b""),
                b"tool_calls" => {
                    let start = self.i;
                    if self.peek()? == b'n' {
                        self.literal(b"null")?;
                    } else {
                        if self.peek()? != b'[' {
                            return Err(ScanError("tool_calls must be an array"));
                        }
                        self.skip_value()?;
                        out.tool_calls = Some(&self.b[start..self.i]);
                    }
                }
                _ => self.skip_value()?,
            }
            self.ws();
            match self.next()? {
                b',' => continue,
                b'}' => return Ok(()),
                _ => return Err(ScanError("expected ',' or '}' in upstream message")),
            }
        }
    }

    /// Validates and skips any JSON value, iteratively.
    fn skip_value(&mut self) -> Result<(), ScanError> {
        // One bit per open container: 1 = object, 0 = array.
        let mut kinds: u128 = 0;
        let mut depth: u32 = 0;
        'value: loop {
            self.ws();
            match self.peek()? {
                b'{' | b'[' => {
                    let object = self.next()? == b'{';
                    self.ws();
                    if self.peek()? == if object { b'}' } else { b']' } {
                        self.i += 1;
                    } else {
                        if depth == MAX_DEPTH {
                            return Err(ScanError("upstream JSON is nested too deeply"));
                        }
                        kinds = (kinds << 1) | u128::from(object);
                        depth += 1;
                        if object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return Err(ScanError("unexpected byte in upstream JSON")),
            }
            // A value ended: close containers until one continues.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                self.ws();
                let in_object = kinds & 1 == 1;
                match self.next()? {
                    b',' => {
                        if in_object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                    b'}' if in_object => {}
                    b']' if !in_object => {}
                    _ => return Err(ScanError("unexpected byte in upstream JSON")),
                }
                kinds >>= 1;
                depth -= 1;
            }
        }
    }

    /// An object key and its colon.
    fn key(&mut self) -> Result<(), ScanError> {
        self.ws();
        self.string()?;
        self.ws();
        self.expect(b':')
    }
}

/// Token counts of one response (a final line's `prompt_eval_count` and `eval_count`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Nanoseconds the host spent loading the model (`load_duration`), which
    /// its queue learns from.
    pub load_ns: u64,
    /// Of `prompt_tokens`, those served from the host's prompt cache.
    pub cached_tokens: u64,
    /// Why the host stopped (its final line's `done_reason`).
    pub finish: Finish,
}

/// Why the host stopped generating: its `done_reason`, as a closed set
/// (a trace attribute never carries a host's free text).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// No final line, or one without a reason.
    #[default]
    None,
    Stop,
    Length,
    /// A reason this gateway does not know (`load`, `unload`, …).
    Other,
}

impl Finish {
    /// From the escaped body of `done_reason`.
    pub fn of(reason: &[u8]) -> Self {
        match reason {
            b"stop" => Finish::Stop,
            b"length" => Finish::Length,
            _ => Finish::Other,
        }
    }

    /// Its name, as Ollama sends it (`""` for none).
    pub fn name(self) -> &'static str {
        match self {
            Finish::None => "",
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Other => "other",
        }
    }
}

/// What a relayed native stream has come to (for any front's stream writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Still relaying.
    Running,
    /// The final line arrived and the stream's own end was written.
    Completed,
    /// An error event was written (an upstream error line, a bad line, an early close).
    Failed,
}

impl NativeError<'_> {
    /// The error's message for a person (unescaped).
    pub fn message(&self) -> String {
        match self {
            NativeError::Message(escaped) => unescape(escaped),
            NativeError::Other => "The model server reported an error.".to_owned(),
        }
    }
}

/// A whole (non-streamed) native reply read with the line scanner: its
/// fields, and its token counts. An upstream error becomes the client's 502.
pub fn read_reply(body: &[u8]) -> Result<(NativeLine<'_>, Usage), crate::error::ApiError> {
    use crate::error::ApiError;
    let native = parse_native_line(body.trim_ascii())
        .map_err(|_| ApiError::upstream(502, "The model server sent a reply that is not valid JSON.".into()))?;
    if let Some(err) = native.error {
        return Err(ApiError::upstream(502, err.message()));
    }
    let usage = native.usage();
    Ok((native, usage))
}

/// One call of a native `tool_calls` array:
/// `{"id"?, "function": {"index"?, "name", "arguments": {…}}}`.
#[derive(Debug, serde::Deserialize)]
pub struct ToolCall<'a> {
    #[serde(borrow, default)]
    pub id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    pub function: ToolFunction<'a>,
}

/// The function a native tool call names.
#[derive(Debug, serde::Deserialize)]
pub struct ToolFunction<'a> {
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(borrow)]
    pub name: std::borrow::Cow<'a, str>,
    /// The arguments object as the line holds it.
    #[serde(borrow, default)]
    pub arguments: Option<&'a serde_json::value::RawValue>,
}

impl ToolFunction<'_> {
    /// The arguments as compact JSON text in their own key order (`{}` when
    /// absent): what the OpenAI and Anthropic shapes carry as a string.
    pub fn compact_arguments(&self) -> Result<String, ScanError> {
        match self.arguments {
            None => Ok("{}".to_owned()),
            Some(args) => serde_json::from_str::<serde_json::Value>(args.get())
                .map(|v| if v.is_null() { "{}".to_owned() } else { v.to_string() })
                .map_err(|_| ScanError("malformed tool arguments")),
        }
    }
}

/// Reads a native `tool_calls` array (the raw JSON a line's scan recorded).
pub fn tool_calls(raw: &[u8]) -> Result<Vec<ToolCall<'_>>, ScanError> {
    serde_json::from_slice(raw).map_err(|_| ScanError("malformed tool calls"))
}

/// A JSON string body (without its quotes) read back into text.
pub fn unescape(escaped: &[u8]) -> String {
    let mut quoted = Vec::with_capacity(escaped.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(escaped);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).unwrap_or_else(|_| String::from_utf8_lossy(escaped).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_line_fast_path_agrees_with_the_scanner() {
        let accepted: [&[u8]; 5] = [
            br#"{"model":"qwen2.5-coder:1.5b","created_at":"2026-11-24T17:15:24Z","response":"fn \u003c","done":false}"#,
            br#"{"model":"llama3","created_at":"2026-11-24T17:15:24.097767Z","message":{"role":"assistant","content":"Hel"},"done":false}"#,
            br#"{"model":"qwen3:8b","created_at":"2026-11-24T17:15:24Z","message":{"role":"assistant","content":""},"done":false}"#,
            br#"{"model":"m","created_at":"x","message":{"role":"assistant","content":"a \u003cb\u003e \"q\"\n\\"},"done":false}"#,
            "{\"model\":\"m\",\"created_at\":\"x\",\"message\":{\"role\":\"assistant\",\"content\":\"café 😀\"},\"done\":false}".as_bytes(),
        ];
        for line in accepted {
            let fast =
                token_line(line).unwrap_or_else(|| panic!("fast path refused {}", String::from_utf8_lossy(line)));
            assert_eq!(Ok(fast), scan_line(line), "{}", String::from_utf8_lossy(line));
        }
        // Anything else falls through to the scanner, which reads it in full.
        let other: [&[u8]; 7] = [
            br#"{"model":"llama3","created_at":"t","message":{"role":"assistant","content":"","thinking":"hm"},"done":false}"#,
            br#"{"model":"llama3","created_at":"t","message":{"role":"assistant","content":"x"},"done":true,"eval_count":2}"#,
            br#"{"model":"ll\"ama","created_at":"t","message":{"role":"assistant","content":"x"},"done":false}"#,
            br#"{"model":"llama3", "created_at":"t","message":{"role":"assistant","content":"x"},"done":false}"#,
            br#"{"model":"llama3","created_at":"t","message":{"role":"assistant","content":"x"},"done":false} "#,
            br#"{"model":"llama3","created_at":"t","message":{"role":"assistant","content":"x"},"done":false}}"#,
            b"{\"model\":\"m\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":\"\x01\"},\"done\":false}",
        ];
        for line in other {
            assert_eq!(token_line(line), None, "{}", String::from_utf8_lossy(line));
        }
        assert_eq!(parse_native_line(other[0]).unwrap().thinking, b"hm");
        assert_eq!(parse_native_line(other[1]).unwrap().eval_count, 2);
        assert!(parse_native_line(other[5]).is_err());
        assert!(parse_native_line(other[6]).is_err());
        assert_eq!(parse_native_line(other[2]).unwrap().content, b"x");
    }

    #[test]
    fn reads_a_content_line_without_unescaping() {
        let line = br#"{"model":"llama3","created_at":"2026-11-24T17:15:24.097767Z","message":{"role":"assistant","content":"a \u003cb\u003e \"q\"\n"},"done":false}"#;
        let l = parse_native_line(line).unwrap();
        assert_eq!(l.content, br#"a \u003cb\u003e \"q\"\n"#);
        assert!(!l.done);
        assert_eq!(l.created_at, Some(&b"2026-11-24T17:15:24.097767Z"[..]));
    }

    #[test]
    fn reads_the_final_line_metrics() {
        let line = br#"{"model":"llama3","created_at":"x","message":{"role":"assistant","content":"!"},"done":true,"done_reason":"stop","total_duration":182242375,"prompt_eval_count":26,"eval_count":2}"#;
        let l = parse_native_line(line).unwrap();
        assert!(l.done);
        assert_eq!(l.content, b"!");
        assert_eq!(l.done_reason, Some(&b"stop"[..]));
        assert_eq!((l.prompt_eval_count, l.eval_count), (26, 2));
    }

    #[test]
    fn keeps_tool_calls_raw_and_thinking() {
        let line = br#"{"message":{"role":"assistant","content":"","thinking":"hmm","tool_calls":[{"id":"call_1","function":{"index":0,"name":"f","arguments":{"a":[1,{"b":null}]}}}]},"done":false}"#;
        let l = parse_native_line(line).unwrap();
        assert_eq!(l.thinking, b"hmm");
        assert_eq!(
            l.tool_calls,
            Some(&br#"[{"id":"call_1","function":{"index":0,"name":"f","arguments":{"a":[1,{"b":null}]}}}]"#[..])
        );
    }

    #[test]
    fn reads_error_lines() {
        let l = parse_native_line(br#"{"error":"an error was encountered while running the model"}"#).unwrap();
        assert_eq!(l.error, Some(NativeError::Message(b"an error was encountered while running the model")));
        let l = parse_native_line(br#"{"error":{"code":1}}"#).unwrap();
        assert_eq!(l.error, Some(NativeError::Other));
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            &b"not json"[..],
            b"{\"message\":{\"content\":\"a\x01\"}}",
            b"{\"message\":{\"content\":\"\\x\"}}",
            b"{\"done\":true",
            b"{\"done\":true}}",
            b"{\"a\":[1,2}",
            b"{\"a\":{\"b\" 1}}",
            b"{\"a\":01x}",
            b"{\"message\":{\"content\":\"\xff\"}}",
        ] {
            assert!(parse_native_line(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut s = String::from("{\"x\":");
        s.push_str(&"[".repeat(100_000));
        s.push_str(&"]".repeat(100_000));
        s.push('}');
        assert!(parse_native_line(s.as_bytes()).is_err());
        let ok = format!("{{\"x\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(parse_native_line(ok.as_bytes()).is_ok());
    }
    #[test]
    fn leading_messages_end_with_the_first_user_message() {
        let body = br#"{"model":"m","options":{"a":[1,{"b":"]"}]},"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi \"there\"","images":["x"]},{"role":"assistant","content":"ok"}],"stream":true}"#;
        let lead = leading_messages(body).unwrap();
        assert_eq!(
            lead,
            br#"{"role":"system","content":"be brief"},{"role":"user","content":"hi \"there\"","images":["x"]}"#
        );
        // The next turn of the same conversation has the same leading messages.
        let next = br#"{"model":"m","options":{"a":[1,{"b":"]"}]},"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi \"there\"","images":["x"]},{"role":"assistant","content":"ok"},{"role":"user","content":"more"}],"stream":true}"#;
        assert_eq!(leading_messages(next), Some(lead));
        for none in [
            &br#"{"model":"m","prompt":"hi"}"#[..],
            br#"{"model":"m","messages":[{"role":"system","content":"x"}]}"#,
            br#"{"model":"m","messages":[]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"cut"#,
            br#"not json"#,
        ] {
            assert_eq!(leading_messages(none), None, "{}", String::from_utf8_lossy(none));
        }
    }
}

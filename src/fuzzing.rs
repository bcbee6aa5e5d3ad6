//! The invariants the fuzz targets check, as plain functions: the cargo-fuzz
//! targets in `fuzz/` call them on generated inputs, and `tests/it/fuzz_corpus.rs`
//! calls them on every committed corpus and regression input, so the suite
//! replays what fuzzing found without needing a fuzzer. Each panics when an
//! invariant breaks.

use crate::http::chunked::ChunkedDecoder;
use crate::http::request::parse_request_head;
use crate::openai::chat_request::convert_chat;
use crate::openai::stream::NdjsonToSse;

/// The head parser never panics, and what it accepts is consistent.
pub fn request_head(data: &[u8]) {
    if let Ok(Some(h)) = parse_request_head(data, 64 * 1024) {
        assert!(h.len <= data.len());
        assert!(h.path.end <= h.len && h.query.end <= h.len);
        for r in [&h.origin, &h.authorization, &h.x_api_key, &h.host].into_iter().flatten() {
            assert!(r.end <= h.len);
        }
    }
}

/// The chunked decoder gives the same body however its input is split
/// (the first byte chooses the split); every byte it consumes is either data
/// or counted framing; and a finished body's trailer section (from its last
/// size line on) is within the bounds on trailer lines and bytes.
pub fn chunked(data: &[u8]) {
    chunked_splits(data);
    chunked_framing(data);
}

fn chunked_framing(data: &[u8]) {
    use crate::http::chunked::{MAX_TRAILER_BYTES, MAX_TRAILER_LINES};
    let mut d = ChunkedDecoder::new();
    let mut body = 0usize;
    let mut last_data_end = 0usize;
    let base = data.as_ptr() as usize;
    if let Ok(used) = d.decode(data, &mut |x| {
        body += x.len();
        last_data_end = x.as_ptr() as usize - base + x.len();
    }) {
        assert!(used <= data.len());
        assert_eq!(d.framing_bytes() as usize + body, used, "every consumed byte is data or framing");
        if d.is_done() {
            // After the last data come its CRLF, the `0` size line (perhaps
            // with an extension), the trailer lines and the final CRLF.
            let mut tail = &data[last_data_end..used];
            if body > 0 {
                tail = &tail[2..];
            }
            let size_line = tail.iter().position(|&b| b == b'\n').map_or(tail.len(), |p| p + 1);
            let trailers = &tail[size_line..];
            let lines = trailers.split(|&b| b == b'\n').count() - 2;
            assert!(lines <= MAX_TRAILER_LINES, "{lines} trailer lines");
            assert!(trailers.len() - 2 - 2 * lines <= MAX_TRAILER_BYTES, "trailer bytes");
        }
    }
}

fn chunked_splits(data: &[u8]) {
    let Some((&first, input)) = data.split_first() else { return };
    let split = 1 + first as usize % 17;
    let mut whole = ChunkedDecoder::new();
    let mut a = Vec::new();
    let ra = whole.decode(input, &mut |d| a.extend_from_slice(d));
    let mut pieces = ChunkedDecoder::new();
    let mut b = Vec::new();
    let mut used = 0;
    let mut failed = false;
    for p in input.chunks(split) {
        if pieces.is_done() {
            break;
        }
        match pieces.decode(p, &mut |d| b.extend_from_slice(d)) {
            Ok(n) => used += n,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if let (Ok(n), false) = (ra, failed) {
        assert_eq!(whole.is_done(), pieces.is_done());
        if whole.is_done() {
            assert_eq!(n, used);
        }
        assert_eq!(a, b);
    }
}

/// Whatever the upstream sends, split however (the first byte chooses), the
/// transcoder's output is well-formed SSE whose data is valid JSON or `[DONE]`.
pub fn transcode(data: &[u8]) {
    let Some((&first, input)) = data.split_first() else { return };
    // A line the token fast path takes reads the same through the general scanner.
    for line in input.split(|&b| b == b'\n') {
        if let Some(fast) = crate::upstream::native::token_line(line) {
            assert_eq!(Ok(fast), crate::upstream::native::scan_line(line));
        }
    }
    let split = 1 + first as usize % 64;
    // Bit 1 picks the chat or the text-completion form.
    let mut t = if first & 2 == 2 {
        NdjsonToSse::completion("cmpl-fuzz", "m\"odel", first & 1 == 1)
    } else {
        NdjsonToSse::new("chatcmpl-fuzz", "m\"odel", first & 1 == 1)
    };
    let mut out = Vec::new();
    for piece in input.chunks(split) {
        t.feed(piece, &mut out);
    }
    t.finish(&mut out);
    let text = std::str::from_utf8(&out).expect("SSE output is UTF-8");
    assert!(text.ends_with("\n\n"));
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let payload = event.strip_prefix("data: ").expect("every event is one data line");
        assert!(!payload.contains('\n'));
        if payload != "[DONE]" {
            serde_json::from_str::<serde_json::Value>(payload).expect("data is valid JSON");
        }
    }
}

/// Any request body either converts to a valid JSON native body or is a 400.
pub fn chat_request(data: &[u8]) {
    let mut out = Vec::new();
    match convert_chat(data, &mut out) {
        Ok(_) => {
            serde_json::from_slice::<serde_json::Value>(&out).expect("native body is valid JSON");
        }
        Err(e) => assert_eq!(e.status, 400),
    }
}

/// The upstream response parser never panics; a body decoded from a head it
/// accepted is never longer than the input, however the input is split.
pub fn upstream_response(data: &[u8]) {
    use crate::upstream::client::{BodyDecoder, parse_response_head};
    let Some((&first, input)) = data.split_first() else { return };
    let split = 1 + first as usize % 23;
    if let Ok(Some((head, len))) = parse_response_head(input) {
        assert!(len <= input.len());
        let mut decoder = BodyDecoder::new(head.body);
        let mut body = 0usize;
        for piece in input[len..].chunks(split) {
            if decoder.feed(piece, &mut |d| body += d.len()).is_err() {
                return;
            }
        }
        assert!(body <= input.len() - len);
    }
}

/// Any completions request body converts to a valid JSON native body or is a 400.
pub fn completion_request(data: &[u8]) {
    let aliases = fuzz_aliases();
    let mut out = Vec::new();
    match crate::openai::completion_request::convert_completion(data, &aliases, &mut out) {
        Ok(plan) => {
            let v: serde_json::Value = serde_json::from_slice(&out).expect("native body is valid JSON");
            assert_eq!(v["model"].as_str(), Some(plan.served_model.as_str()));
            assert!(v["prompt"].is_string());
        }
        Err(e) => assert_eq!(e.status, 400),
    }
}

/// Embeddings: a request body (first byte even) converts to valid JSON or is
/// a 400; an upstream reply (odd) becomes a valid OpenAI list or an error.
pub fn embeddings(data: &[u8]) {
    use crate::openai::embeddings::{convert_embeddings, embeddings_response};
    let Some((&first, input)) = data.split_first() else { return };
    let mut out = Vec::new();
    if first % 2 == 0 {
        match convert_embeddings(input, &fuzz_aliases(), &mut out) {
            Ok(_) => {
                serde_json::from_slice::<serde_json::Value>(&out).expect("native body is valid JSON");
            }
            Err(e) => assert_eq!(e.status, 400),
        }
    } else {
        if embeddings_response(&mut out, "m\"x", first & 2 == 2, input).is_ok() {
            let v: serde_json::Value = serde_json::from_slice(&out).expect("response is valid JSON");
            assert_eq!(v["object"], "list");
        }
    }
}

/// Any Messages request body converts to a valid JSON native body, or is a
/// 400; the first byte picks a message or a token count.
pub fn anthropic_request(data: &[u8]) {
    use crate::anthropic::request::{Purpose, convert_messages};
    let Some((&first, input)) = data.split_first() else { return };
    let purpose = if first % 2 == 0 { Purpose::Generate } else { Purpose::CountTokens };
    let mut out = Vec::new();
    match convert_messages(input, &fuzz_aliases(), purpose, &mut out) {
        Ok(plan) => {
            let v: serde_json::Value = serde_json::from_slice(&out).expect("native body is valid JSON");
            assert_eq!(v["model"].as_str(), Some(plan.served_model.as_str()));
            assert!(v["messages"].is_array());
            assert!(purpose == Purpose::CountTokens || plan.max_tokens.is_some(), "a message needs max_tokens");
            assert!(purpose == Purpose::Generate || !plan.stream, "a count never streams");
        }
        Err(e) => assert_eq!(e.status, 400),
    }
}

/// Any Responses request body converts to a valid JSON native body (with a
/// stored conversation for any `previous_response_id`), or is a 400; the
/// conversation it would store is valid JSON too.
pub fn responses_request(data: &[u8]) {
    use crate::responses::request::convert_responses;
    let stored = |_: &str| {
        Ok(Some(br#"{"role":"user","content":"hi"},{"role":"assistant","content":"","tool_calls":[{"id":"call_1","function":{"index":0,"name":"f","arguments":{}}}]}"#.to_vec()))
    };
    let mut out = Vec::new();
    match convert_responses(data, &fuzz_aliases(), &stored, &mut out) {
        Ok(plan) => {
            let v: serde_json::Value = serde_json::from_slice(&out).expect("native body is valid JSON");
            assert!(v["messages"].is_array());
            let history = format!("[{}]", String::from_utf8_lossy(&plan.history));
            serde_json::from_str::<serde_json::Value>(&history).expect("the stored conversation is valid JSON");
            let echo = format!("{{{}}}", String::from_utf8_lossy(&plan.echo));
            serde_json::from_str::<serde_json::Value>(&echo).expect("the echoed settings are valid JSON");
        }
        Err(e) => assert!(e.status == 400 || e.status == 404, "{e:?}"),
    }
}

/// The Ollama front's relay passes every byte through unchanged, whatever
/// the upstream sends and however it is split (the first byte chooses);
/// anything it adds is one `{"error":…}` line.
pub fn native_relay(data: &[u8]) {
    use crate::ollama::stream::{Flow, NativeRelay};
    let Some((&first, input)) = data.split_first() else { return };
    let flow = if first & 1 == 0 { Flow::Generation } else { Flow::Progress };
    let mut relay = NativeRelay::new(flow);
    let mut out = Vec::new();
    for piece in input.chunks(1 + first as usize % 64) {
        relay.feed(piece, &mut out);
    }
    relay.finish(&mut out);
    // Until the stream ended, what came in went out as it was.
    let relayed = out.len().min(input.len());
    assert!(input.starts_with(&out[..relayed]) || out.starts_with(&input[..relayed]));
    if out.len() > input.len() || !input.starts_with(&out) {
        let extra = String::from_utf8_lossy(&out[out.len().min(input.len())..]).into_owned();
        let line = extra.trim();
        if !line.is_empty() {
            let v: serde_json::Value = serde_json::from_str(line).expect("an added line is JSON");
            assert!(v["error"].is_string(), "an added line is an error line: {line}");
        }
    }
}

/// A native request body (the Ollama front), any kind (the first byte
/// chooses it and whether the key may send load options): it is a 400, or
/// what goes upstream has one reading — no member twice in any object as
/// the host folds names — and says what the gateway planned: the served
/// model, the stream flag, and no load-time setting of the client's unless
/// the key may send them. A body with a member twice is never forwarded.
pub fn native_request(data: &[u8]) {
    use crate::json::{MAX_PASSTHROUGH_DEPTH, distinct_members};
    use crate::ollama::request::{Kind, prepare};
    use crate::upstream::native_request::host_member_name;
    let Some((&first, input)) = data.split_first() else { return };
    let kind = [Kind::Generation, Kind::Embedding, Kind::Show][first as usize % 3];
    let load_options = first & 0x80 != 0;
    let mut native = Vec::new();
    let input_has_one_reading = distinct_members(input, MAX_PASSTHROUGH_DEPTH, host_member_name).is_ok();
    match prepare(input, &fuzz_aliases(), kind, load_options, &mut native) {
        Ok(plan) => {
            assert!(input_has_one_reading, "a body with a member twice was accepted");
            assert!(distinct_members(&native, MAX_PASSTHROUGH_DEPTH, host_member_name).is_ok());
            let v: serde_json::Value = serde_json::from_slice(&native).expect("the native body is valid JSON");
            let obj = v.as_object().expect("an object");
            let host = |name: &str| {
                obj.iter().find(|(k, _)| host_member_name(k) == host_member_name(name)).map(|(_, v)| v.clone())
            };
            assert_eq!(host("model").and_then(|m| m.as_str().map(str::to_owned)), Some(plan.served_model.clone()));
            if kind == Kind::Generation {
                assert_eq!(plan.stream, host("stream").is_none_or(|s| s != false));
            }
            if !load_options {
                assert!(host("keep_alive").is_none(), "a client's keep_alive went upstream");
                if let Some(serde_json::Value::Object(o)) = host("options") {
                    assert!(o.keys().all(|k| !crate::config::loads::is_runner_option(&k.to_ascii_lowercase())));
                }
            }
        }
        Err(e) => assert_eq!(e.status, 400),
    }
}

/// The Anthropic and Responses stream writers, on whatever the upstream
/// sends, split however (the first byte chooses): every event is an
/// `event:` line and a `data:` line of JSON whose `type` is the event's
/// name; the Responses events count their `sequence_number` from 0.
pub fn agent_streams(data: &[u8]) {
    use crate::anthropic::stream::NdjsonToAnthropic;
    use crate::responses::reply::Shape;
    use crate::responses::request::{ToolKind, ToolSpec};
    use crate::responses::stream::NdjsonToResponses;
    let Some((&first, input)) = data.split_first() else { return };
    let split = 1 + first as usize % 64;
    let mut out = Vec::new();
    if first & 1 == 0 {
        let mut w = NdjsonToAnthropic::new("msg_fuzz", "m\"odel", 7);
        w.start(&mut out);
        for piece in input.chunks(split) {
            w.feed(piece, &mut out);
        }
        w.finish(&mut out);
    } else {
        let shape = Shape {
            id: "resp_fuzz".into(),
            created_at: 0,
            model_json: br#""m\"odel""#.to_vec(),
            echo: br#""instructions":null,"metadata":{}"#.to_vec(),
            tools: vec![
                ToolSpec::plain("f", ToolKind::Custom),
                ToolSpec::plain("local_shell", ToolKind::LocalShell),
                ToolSpec::member("ns", "g"),
                ToolSpec::client("tool_search", "tool_search"),
            ],
            reasoning_content: first & 2 == 2,
        };
        let mut w = NdjsonToResponses::new(shape, Some(Vec::new()));
        w.start(&mut out);
        for piece in input.chunks(split) {
            w.feed(piece, &mut out);
        }
        w.finish(&mut out);
        if let Some((history, response)) = w.take_record() {
            let history = format!("[{}]", String::from_utf8_lossy(&history));
            serde_json::from_str::<serde_json::Value>(&history).expect("the stored conversation is valid JSON");
            serde_json::from_slice::<serde_json::Value>(&response).expect("the stored response is valid JSON");
            w.release(&mut out);
        }
    }
    let text = std::str::from_utf8(&out).expect("events are UTF-8");
    assert!(text.ends_with("\n\n"));
    for (i, event) in text.split("\n\n").filter(|e| !e.is_empty()).enumerate() {
        let (name, data) = event.split_once('\n').expect("an event line and a data line");
        let name = name.strip_prefix("event: ").expect("an event line");
        let data = data.strip_prefix("data: ").expect("a data line");
        assert!(!data.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(data).expect("data is valid JSON");
        assert_eq!(v["type"].as_str(), Some(name));
        if first & 1 == 1 {
            assert_eq!(v["sequence_number"].as_u64(), Some(i as u64));
        }
    }
}

fn fuzz_aliases() -> crate::config::ModelTable {
    let map = std::collections::BTreeMap::from([("gpt-4o".to_owned(), "llama3:latest".to_owned())]);
    crate::config::aliases::Aliases::new(map).unwrap_or_default().into()
}

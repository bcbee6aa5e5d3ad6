//! Whatever the upstream sends, split however, the transcoder's output is
//! well-formed SSE whose data lines are valid JSON or `[DONE]`.
#![no_main]

use ai_gateway::ollama::transcode::NdjsonToSse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = 1 + data[0] as usize % 64;
    let mut t = NdjsonToSse::new("chatcmpl-fuzz", "m\"odel", data[0] & 1 == 1);
    let mut out = Vec::new();
    for piece in data[1..].chunks(split) {
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
});

//! Any request body either converts to a valid JSON native body or is a 400.
#![no_main]

use ai_gateway::openai::chat_request::convert_chat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    match convert_chat(data, &mut out) {
        Ok(_) => {
            serde_json::from_slice::<serde_json::Value>(&out).expect("native body is valid JSON");
        }
        Err(e) => assert_eq!(e.status, 400),
    }
});

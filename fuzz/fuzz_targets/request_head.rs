//! The request head parser never panics, and what it accepts is consistent:
//! ranges lie inside the head, and the head length fits the input.
#![no_main]

use ai_gateway::http::request::parse_request_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(h)) = parse_request_head(data, 64 * 1024) {
        assert!(h.len <= data.len());
        assert!(h.path.end <= h.len);
        for r in [&h.origin, &h.authorization, &h.x_api_key, &h.host].into_iter().flatten() {
            assert!(r.end <= h.len);
        }
    }
});

//! Fuzzes `ai_gateway::fuzzing::responses_request` (see that function for the invariant).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ai_gateway::fuzzing::responses_request(data);
});

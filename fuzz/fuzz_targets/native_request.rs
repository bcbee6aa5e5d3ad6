//! Fuzzes `ai_gateway::fuzzing::native_request` (see that function for the invariant).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ai_gateway::fuzzing::native_request(data);
});

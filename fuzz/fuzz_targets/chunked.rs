//! The chunked decoder gives the same body however its input is split.
#![no_main]

use ai_gateway::http::chunked::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = 1 + data[0] as usize % 17;
    let input = &data[1..];
    let mut whole = ChunkedDecoder::new();
    let mut a = Vec::new();
    let ra = whole.decode(input, &mut |d| a.extend_from_slice(d));
    let mut pieces = ChunkedDecoder::new();
    let mut b = Vec::new();
    let mut rb = Ok(0);
    let mut used = 0;
    for p in input.chunks(split) {
        if pieces.is_done() {
            break;
        }
        match pieces.decode(p, &mut |d| b.extend_from_slice(d)) {
            Ok(n) => used += n,
            Err(e) => {
                rb = Err(e);
                break;
            }
        }
    }
    if let (Ok(n), Ok(_)) = (&ra, &rb) {
        assert_eq!(whole.is_done(), pieces.is_done());
        if whole.is_done() {
            assert_eq!(*n, used);
        }
    }
    if ra.is_ok() && rb.is_ok() {
        assert_eq!(a, b);
    }
});

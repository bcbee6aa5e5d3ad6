//! Replays every committed fuzz corpus input and every input that once
//! crashed a target (`fuzz/regressions/<target>/`) through the targets'
//! invariants, so the suite keeps what fuzzing found without a fuzzer.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        for entry in entries.flatten() {
            // (A fuzzer running beside the suite may be rewriting its corpus.)
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(data) = std::fs::read(entry.path()) else { continue };
            check(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn request_head_corpus_and_regressions() {
    assert!(replay("request_head", ai_gateway::fuzzing::request_head) > 0);
}

#[test]
fn chunked_corpus_and_regressions() {
    assert!(replay("chunked", ai_gateway::fuzzing::chunked) > 0);
}

#[test]
fn transcode_corpus_and_regressions() {
    assert!(replay("transcode", ai_gateway::fuzzing::transcode) > 0);
}

#[test]
fn chat_request_corpus_and_regressions() {
    assert!(replay("chat_request", ai_gateway::fuzzing::chat_request) > 0);
}

#[test]
fn upstream_response_corpus_and_regressions() {
    assert!(replay("upstream_response", ai_gateway::fuzzing::upstream_response) > 0);
}

#[test]
fn completion_request_corpus_and_regressions() {
    assert!(replay("completion_request", ai_gateway::fuzzing::completion_request) > 0);
}

#[test]
fn embeddings_corpus_and_regressions() {
    assert!(replay("embeddings", ai_gateway::fuzzing::embeddings) > 0);
}

#[test]
fn anthropic_request_corpus_and_regressions() {
    assert!(replay("anthropic_request", ai_gateway::fuzzing::anthropic_request) > 0);
}

#[test]
fn responses_request_corpus_and_regressions() {
    assert!(replay("responses_request", ai_gateway::fuzzing::responses_request) > 0);
}

#[test]
fn native_relay_corpus_and_regressions() {
    assert!(replay("native_relay", ai_gateway::fuzzing::native_relay) > 0);
}

#[test]
fn agent_streams_corpus_and_regressions() {
    assert!(replay("agent_streams", ai_gateway::fuzzing::agent_streams) > 0);
}

#[test]
fn native_request_corpus_and_regressions() {
    assert!(replay("native_request", ai_gateway::fuzzing::native_request) > 0);
}

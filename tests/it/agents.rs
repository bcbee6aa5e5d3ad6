//! The shapes the real agents ship, without Node: the first requests each
//! pinned agent version sent (kept by tests/agents/test_agents.py in
//! `fixtures/agents/`) are sent again, headers, query and body as they
//! were, through an alias (the agent's default model name), to a local model
//! that thinks and to one that does not. Each must be answered whole, and
//! what reached the host must fit the model: thinking only for the model
//! that can, and the agent's tools declared.

use std::io::Write;

use crate::common::*;
use serde_json::{Value, json};

const THINKS: &str = "qwen3:8b";
const PLAIN: &str = "qwen3-coder:30b";

/// One recorded request.
struct Recorded {
    agent: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

fn fixtures() -> Vec<Recorded> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/agents");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let doc: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let agent = format!("{}-{}", doc["agent"].as_str().unwrap(), doc["version"].as_str().unwrap());
        for r in doc["requests"].as_array().unwrap() {
            assert_eq!(r["method"], "POST", "{agent}");
            let headers = r["headers"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let body = r.get("body").cloned().expect("a JSON body (a compressed one is recorded as body_base64)");
            out.push(Recorded { agent: agent.clone(), path: r["path"].as_str().unwrap().to_owned(), headers, body });
        }
    }
    assert!(out.len() >= 5, "the fixtures of Claude Code, Codex, opencode and both agent SDKs");
    out
}

/// Whether the request asks the model to think (as each API says so).
fn asks_to_think(body: &Value) -> bool {
    let effort = body["reasoning"]["effort"].as_str().or(body["reasoning_effort"].as_str());
    match body["thinking"]["type"].as_str() {
        Some(t) => t != "disabled",
        None => effort.or(body["output_config"]["effort"].as_str()).is_some_and(|e| e != "none"),
    }
}

/// The reply is whole: the stream's last event, or a complete body.
fn assert_whole(r: &Response, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let text = r.text();
    if r.header("content-type").is_some_and(|t| t.starts_with("text/event-stream")) {
        assert!(
            text.contains("event: message_stop")
                || text.contains("event: response.completed")
                || text.contains("data: [DONE]"),
            "{what}: the stream did not end as it should:\n{}",
            &text[text.len().saturating_sub(600)..]
        );
    } else {
        let v = r.json();
        assert!(v["error"].is_null(), "{what}: {v}");
    }
}

#[test]
fn each_agents_first_requests_are_served_on_a_model_that_thinks_and_on_one_that_does_not() {
    let m = mock(&["--models", &format!("{PLAIN},{THINKS}"), "--capabilities", &format!("{PLAIN}=completion+tools")]);
    let dir = temp_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::File::create(&config)
        .unwrap()
        .write_all(format!("[aliases]\n\"claude-*\" = \"{PLAIN}\"\n\"gpt-*\" = \"{PLAIN}\"\n").as_bytes())
        .unwrap();
    let g = gateway(&m, &["--config", config.to_str().unwrap()]);
    for r in fixtures() {
        let recorded = r.body["model"].as_str().unwrap().to_owned();
        for model in [recorded.as_str(), THINKS, PLAIN] {
            let mut body = r.body.clone();
            body["model"] = json!(model);
            let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let what = format!("{} {} as {model}", r.agent, r.path);
            let resp = request_with(g.addr, "POST", &r.path, Some(&body.to_string()), &headers);
            assert_whole(&resp, &what);
            let sent = get(m.addr, "/_last").json();
            let thinks = model == THINKS;
            assert_eq!(
                sent.get("think").is_some_and(|t| t != &json!(false)),
                thinks && asks_to_think(&r.body),
                "{what}: think sent upstream: {:?}",
                sent.get("think")
            );
            let declared = r.body["tools"].as_array().is_some_and(|t| !t.is_empty())
                || r.body["input"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|i| i["type"] == "additional_tools"));
            assert_eq!(
                sent["tools"].as_array().is_some_and(|t| !t.is_empty()),
                declared,
                "{what}: the agent's tools reach the model"
            );
        }
    }
}

//! Ollama's own API served with keys (docs/PROTOCOL.md, "The Ollama front"):
//! what Continue's `ollama` provider and Open WebUI call, relayed as Ollama
//! speaks it, through keys, allowlists, aliases, limits and usage.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

fn as_key(g: &Proc, method: &str, path: &str, body: Option<&Value>, key: &str) -> Response {
    let body = body.map(Value::to_string);
    request_with(g.addr, method, path, body.as_deref(), &[("Authorization", &format!("Bearer {key}"))])
}

#[test]
fn a_streamed_chat_is_relayed_as_ollama_wrote_it_and_counted_from_its_final_line() {
    let m = mock(&["--tokens", "3"]);
    let g = gateway(&m, &["--usage-flush-ms", "50"]);
    let body = json!({"model": "llama3", "messages": [{"role": "user", "content": "one two"}]});
    let r = as_key(&g, "POST", "/api/chat", Some(&body), ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = r.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["message"]["content"], "Hello");
    assert_eq!(lines[3]["done"], true);
    assert_eq!(lines[3]["eval_count"], 3);
    // The same request sent straight to the emulator makes the same lines, timestamps aside.
    let direct = post(m.addr, "/api/chat", &body.to_string()).text();
    let strip = |t: &str| -> Vec<Value> {
        t.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                for f in ["created_at", "total_duration", "eval_duration"] {
                    v.as_object_mut().unwrap().remove(f);
                }
                v
            })
            .collect()
    };
    assert_eq!(strip(&r.text()), strip(&direct));
    let usage = || get(g.addr, "/admin/v1/usage?by=api").json();
    assert!(eventually(Duration::from_secs(5), || usage()["data"]
        .as_array()
        .is_some_and(|d| d.iter().any(|r| r["api"] == "ollama"))));
    let row = usage()["data"].as_array().unwrap().iter().find(|r| r["api"] == "ollama").cloned().unwrap();
    assert_eq!(row["prompt_tokens"], 3);
    assert_eq!(row["completion_tokens"], 3);
}

#[test]
fn generate_embed_show_version_and_the_older_embeddings_route() {
    let m = mock(&["--tokens", "2", "--embed-dimensions", "4"]);
    let g = gateway(&m, &[]);
    let r = as_key(
        &g,
        "POST",
        "/api/generate",
        Some(&json!({"model": "llama3", "prompt": "hi", "stream": false})),
        ADMIN_KEY,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["response"], "Hello world");
    assert_eq!(r.json()["done"], true);
    let r =
        as_key(&g, "POST", "/api/embed", Some(&json!({"model": "nomic-embed-text", "input": ["a", "b"]})), ADMIN_KEY);
    assert_eq!(r.json()["embeddings"].as_array().unwrap().len(), 2);
    let r =
        as_key(&g, "POST", "/api/embeddings", Some(&json!({"model": "nomic-embed-text", "prompt": "a"})), ADMIN_KEY);
    assert_eq!(r.json()["embedding"].as_array().unwrap().len(), 4);
    let r = as_key(&g, "POST", "/api/show", Some(&json!({"model": "llama3"})), ADMIN_KEY);
    assert_eq!(r.status, 200);
    assert!(r.json()["capabilities"].is_array());
    assert_eq!(as_key(&g, "GET", "/api/version", None, ADMIN_KEY).json()["version"], "0.12.6");
}

#[test]
fn keys_allowlists_and_aliases_apply_and_errors_are_ollamas_shape() {
    let m = mock(&["--tokens", "2"]);
    let config = temp_data_dir().with_extension("toml");
    std::fs::write(&config, "[aliases]\n\"coder\" = \"qwen3:8b\"\n").unwrap();
    let g = gateway(&m, &["--config", config.to_str().unwrap()]);
    let coder_only = create_key(&g, "coder", &["--models", "coder"])["secret"].as_str().unwrap().to_owned();
    let chat = |model: &str| json!({"model": model, "stream": false, "messages": [{"role": "user", "content": "x"}]});

    let r = as_key(&g, "POST", "/api/chat", Some(&chat("coder")), &coder_only);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(m.addr, "/_last").json()["model"], "qwen3:8b", "the alias's target went upstream");

    let r = as_key(&g, "POST", "/api/chat", Some(&chat("llama3")), &coder_only);
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("llama3"), "{}", r.text());

    // The listing shows a key only what it may use, aliases included.
    let tags = as_key(&g, "GET", "/api/tags", None, &coder_only).json();
    let names: Vec<&str> = tags["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["coder"], "the key may use the target only through its alias");

    let r = request(g.addr, "POST", "/api/chat", Some(&chat("llama3").to_string()));
    assert_eq!(r.status, 200);
    let mut s = connect(g.addr);
    std::io::Write::write_all(&mut s, b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].is_string(), "Ollama's shape: {}", r.text());
    let r = as_key(&g, "POST", "/api/chat", Some(&chat("nope")), ADMIN_KEY);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("nope"));
    let r = as_key(&g, "POST", "/api/chat", Some(&json!({"messages": []})), ADMIN_KEY);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
}

#[test]
fn model_management_is_for_admin_keys_and_its_progress_is_relayed() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let user = create_key(&g, "user", &[])["secret"].as_str().unwrap().to_owned();
    let pull = json!({"model": "phi4"});
    let r = as_key(&g, "POST", "/api/pull", Some(&pull), &user);
    assert_eq!(r.status, 403);
    assert_eq!(as_key(&g, "DELETE", "/api/delete", Some(&pull), &user).status, 403);

    let r = as_key(&g, "POST", "/api/pull", Some(&pull), ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = r.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.first().unwrap()["status"], "pulling manifest");
    assert_eq!(lines.last().unwrap()["status"], "success");
    let tags = as_key(&g, "GET", "/api/tags", None, ADMIN_KEY).json();
    assert!(tags["models"].as_array().unwrap().iter().any(|m| m["name"] == "phi4:latest"));
    assert_eq!(as_key(&g, "DELETE", "/api/delete", Some(&pull), ADMIN_KEY).status, 200);
    assert_eq!(as_key(&g, "DELETE", "/api/delete", Some(&pull), ADMIN_KEY).status, 404);
}

#[test]
fn ps_lists_loaded_models_and_several_hosts_need_a_host_for_management() {
    let a = mock(&[]);
    let b = mock(&["--models", "phi4:latest"]);
    let g = gateway(&a, &["--upstream", &b.url()]);
    let body = json!({"model": "phi4", "stream": false, "messages": [{"role": "user", "content": "x"}]});
    // Once the health checks have read each host's models, phi4 goes to the host that has it.
    assert!(
        eventually(Duration::from_secs(10), || as_key(&g, "POST", "/api/chat", Some(&body), ADMIN_KEY).status == 200)
    );
    let ps = as_key(&g, "GET", "/api/ps", None, ADMIN_KEY).json();
    let names: Vec<&str> = ps["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["phi4:latest"]);
    let tags = as_key(&g, "GET", "/api/tags", None, ADMIN_KEY).json();
    assert!(tags["models"].as_array().unwrap().len() >= 4, "both hosts' models: {tags}");
    let r = as_key(&g, "POST", "/api/pull", Some(&json!({"model": "x"})), ADMIN_KEY);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("?host="));
    assert_eq!(
        as_key(&g, "POST", "/api/pull?host=1", Some(&json!({"model": "x", "stream": false})), ADMIN_KEY).status,
        200
    );
    assert!(get(b.addr, "/api/tags").text().contains("x:latest"));
    assert!(!get(a.addr, "/api/tags").text().contains("x:latest"));
}

#[test]
fn a_client_that_leaves_a_native_stream_cancels_the_generation() {
    let m = mock(&["--tokens", "100", "--token-delay-ms", "100"]);
    let g = gateway(&m, &[]);
    let mut s = connect(g.addr);
    let body = json!({"model": "llama3", "prompt": "x"}).to_string();
    send(&mut s, "POST", "/api/generate", Some(&body), &[]);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    while !line.contains("\"response\"") {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    drop(r);
    drop(s);
    assert!(eventually(Duration::from_secs(5), || stats(&m)["cancelled"] == 1), "{}", stats(&m));
}

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

/// What the emulator last received, as JSON.
fn last_upstream(m: &Proc) -> Value {
    serde_json::from_slice(&get(m.addr, "/_last").body).unwrap()
}

#[test]
fn a_member_given_twice_in_any_case_is_refused_and_never_reaches_the_host() {
    let m = mock(&["--tokens", "2"]);
    let g = gateway(&m, &[]);
    let key = create_key(&g, "narrow", &["--models", "llama3", "--daily-tokens", "500"]);
    let key = key["secret"].as_str().unwrap();
    let send = |path: &str, body: &str| {
        request_with(g.addr, "POST", path, Some(body), &[("Authorization", &format!("Bearer {key}"))])
    };
    let before = stats(&m);
    for path in ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show"] {
        for body in [
            r#"{"model":"llama3","model":"qwen3:8b","prompt":"x","input":"x","messages":[]}"#,
            r#"{"model":"llama3","MODEL":"qwen3:8b","prompt":"x","input":"x","messages":[]}"#,
            "{\"model\":\"llama3\",\"Model\":\"qwen3:8b\",\"prompt\":\"x\"}",
            r#"{"model":"llama3","stream":false,"stream":true,"prompt":"x"}"#,
            r#"{"model":"llama3","options":{"num_predict":5},"OPTIONS":{"num_predict":5000},"prompt":"x"}"#,
            "{\"model\":\"llama3\",\"stream\":false,\"\u{17f}tream\":true,\"prompt\":\"x\"}",
        ] {
            let r = send(path, body);
            assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
            assert!(r.json()["error"].as_str().unwrap().contains("twice"), "Ollama's error shape: {}", r.text());
        }
    }
    let deep = format!(r#"{{"model":"llama3","prompt":"x","format":{}1{}}}"#, "[".repeat(80), "]".repeat(80));
    assert_eq!(send("/api/generate", &deep).status, 400);
    let after = stats(&m);
    for counter in ["chat", "generate", "embed", "show"] {
        assert_eq!(
            before["by_endpoint"][counter], after["by_endpoint"][counter],
            "{counter}: a refused body reached the host"
        );
        assert!(after["by_endpoint"][counter].is_u64());
    }
    // One reading each: the allowed model is served, the other refused.
    assert_eq!(send("/api/generate", r#"{"model":"llama3","prompt":"x","stream":false}"#).status, 200);
    assert_eq!(send("/api/generate", r#"{"MODEL":"qwen3:8b","prompt":"x","stream":false}"#).status, 403);
    assert_eq!(last_upstream(&m)["model"], "llama3");
}

#[test]
fn load_time_settings_are_the_operators_unless_the_key_is_granted_them() {
    let m = mock(&["--tokens", "2", "--num-parallel", "1"]);
    let dir = temp_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gw.toml");
    std::fs::write(&config, "[models.llama3]\nkeep_alive = \"2h\"\nnum_ctx = 8192\n").unwrap();
    let g = gateway(&m, &["--config", config.to_str().unwrap(), "--upstream-num-parallel", "1"]);
    let plain = create_key(&g, "plain", &[])["secret"].as_str().unwrap().to_owned();
    let trusted = create_key(&g, "trusted", &["--load-options"])["secret"].as_str().unwrap().to_owned();
    let body = json!({"model": "llama3", "prompt": "hi", "stream": false, "keep_alive": 0,
        "options": {"num_ctx": 128, "num_gpu": 0, "temperature": 0.2}});

    let r = as_key(&g, "POST", "/api/generate", Some(&body), &plain);
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = last_upstream(&m);
    assert_eq!(sent["keep_alive"], "2h");
    assert_eq!(sent["options"], json!({"temperature": 0.2, "num_ctx": 8192}));

    let r = as_key(&g, "POST", "/api/generate", Some(&body), &trusted);
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = last_upstream(&m);
    assert_eq!(sent["keep_alive"], 0);
    assert_eq!(sent["options"], json!({"num_ctx": 128, "num_gpu": 0, "temperature": 0.2}));

    // The other fronts send the operator's settings too.
    let r = request_with(
        g.addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("llama3", false)),
        &[("Authorization", &format!("Bearer {plain}"))],
    );
    assert_eq!(r.status, 200);
    let sent = last_upstream(&m);
    assert_eq!((sent["keep_alive"].clone(), sent["options"]["num_ctx"].clone()), (json!("2h"), json!(8192)));

    // An unload-only request from a key without the grant does not unload the model.
    let unloads = stats(&m)["unloads"].as_u64().unwrap();
    let r = as_key(&g, "POST", "/api/generate", Some(&json!({"model": "llama3", "keep_alive": 0})), &plain);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stats(&m)["unloads"].as_u64().unwrap(), unloads, "a plain key unloaded a shared model");
    let r = as_key(&g, "POST", "/api/generate", Some(&json!({"model": "llama3", "keep_alive": 0})), &trusted);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stats(&m)["unloads"].as_u64().unwrap(), unloads + 1, "a granted key may unload it");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cloud_models_and_web_search_are_only_for_keys_that_are_given_them() {
    let m = mock(&["--tokens", "2", "--remote-models", "gpt-oss:120b-cloud,teamcopy:latest"]);
    let g = gateway(&m, &["--upstream-health-interval", "0.2"]);
    let all = create_key(&g, "all", &[])["secret"].as_str().unwrap().to_owned();
    let listed =
        create_key(&g, "listed", &["--models", "llama3,gpt-oss:120b-cloud"])["secret"].as_str().unwrap().to_owned();
    let searcher = create_key(&g, "searcher", &["--web-search"])["secret"].as_str().unwrap().to_owned();
    // The hosts' listing says which models are remote (learned with the model list).
    assert!(eventually(Duration::from_secs(5), || {
        as_key(&g, "POST", "/api/generate", Some(&json!({"model": "teamcopy", "prompt": "x", "stream": false})), &all)
            .status
            == 403
    }));
    for (path, body) in [
        ("/api/chat", json!({"model": "gpt-oss:120b-cloud", "messages": [{"role": "user", "content": "x"}]})),
        ("/api/generate", json!({"model": "GPT-OSS:120B-CLOUD", "prompt": "x"})),
        ("/api/generate", json!({"model": "teamcopy:latest", "prompt": "x"})),
        ("/api/show", json!({"model": "gpt-oss:120b-cloud"})),
    ] {
        let r = as_key(&g, "POST", path, Some(&body), &all);
        assert_eq!(r.status, 403, "{path} {body}: an 'all models' key reached a cloud model");
    }
    let r = request_with(
        g.addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("gpt-oss:120b-cloud", false)),
        &[("Authorization", &format!("Bearer {all}"))],
    );
    assert_eq!(r.status, 403);
    let r = as_key(
        &g,
        "POST",
        "/api/generate",
        Some(&json!({"model": "gpt-oss:120b-cloud", "prompt": "x", "stream": false})),
        &listed,
    );
    assert_eq!(r.status, 200, "a key that lists the cloud model may use it: {}", r.text());

    // Listings show a key only what it may use.
    let names = |key: &str| -> Vec<String> {
        let v = as_key(&g, "GET", "/api/tags", None, key).json();
        v["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(&all), ["llama3:latest", "qwen3:8b", "nomic-embed-text:latest"]);
    assert_eq!(names(&listed), ["llama3:latest", "gpt-oss:120b-cloud"]);
    let ids = |key: &str| -> Vec<String> {
        let v = as_key(&g, "GET", "/v1/models", None, key).json();
        v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(&all), ["llama3:latest", "qwen3:8b", "nomic-embed-text:latest"]);

    // Web search and fetch: only with the grant, in Ollama's error shape otherwise.
    for path in ["/api/experimental/web_search", "/api/experimental/web_fetch"] {
        let q = json!({"query": "ollama", "url": "https://ollama.com"});
        let r = as_key(&g, "POST", path, Some(&q), &all);
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("web search"));
        let r = as_key(&g, "POST", path, Some(&q), &searcher);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["results"][0]["content"], "found");
    }
}

#[test]
fn a_wrong_method_or_unknown_path_is_answered_in_the_shape_of_its_protocol() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let r = request(g.addr, "GET", "/api/chat", None);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST, OPTIONS")));
    assert!(r.json()["error"].is_string(), "Ollama's shape: {}", r.text());
    let r = request(g.addr, "GET", "/api/nothing-here", None);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string(), "Ollama's shape: {}", r.text());
    let r = request(g.addr, "GET", "/v1/messages", None);
    assert_eq!((r.status, r.json()["type"].as_str()), (405, Some("error")), "Anthropic's shape: {}", r.text());
    let r = request(g.addr, "GET", "/v1/chat/completions", None);
    assert_eq!(r.status, 405);
    assert!(r.json()["error"]["message"].is_string(), "OpenAI's shape: {}", r.text());
    // An absurd `dimensions` never reaches the host.
    for (path, body) in [
        ("/v1/embeddings", json!({"model": "nomic-embed-text", "input": "x", "dimensions": 1_000_000_000u64})),
        ("/api/embed", json!({"model": "nomic-embed-text", "input": "x", "dimensions": 1_000_000_000u64})),
    ] {
        let r = request(g.addr, "POST", path, Some(&body.to_string()));
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
    assert_eq!(stats(&m)["by_endpoint"]["embed"], 0, "{}", stats(&m));
}

//! The config file: model aliases end to end, precedence file < env < flags,
//! and unknown settings refused at start.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

fn config_file(text: &str) -> std::path::PathBuf {
    let dir = temp_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ai-gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn aliases_serve_the_target_keep_the_requested_name_and_show_in_models_and_usage() {
    let m = mock(&["--tokens", "2"]);
    let path = config_file(
        "usage_flush_ms = 50\n[aliases]\n\"gpt-4o\" = \"llama3:latest\"\n\"text-embedding-3-small\" = \"nomic-embed-text\"\n",
    );
    let g = gateway(&m, &["--config", path.to_str().unwrap()]);

    // The emulator knows no gpt-4o: a 200 means the target was asked for.
    let r = post(g.addr, "/v1/chat/completions", &chat_body("gpt-4o", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "gpt-4o");
    let r = post(g.addr, "/v1/embeddings", r#"{"model":"text-embedding-3-small","input":"x"}"#);
    assert_eq!((r.status, r.json()["model"].as_str()), (200, Some("text-embedding-3-small")));

    let models = get(g.addr, "/v1/models").json();
    let gpt = models["data"].as_array().unwrap().iter().find(|m| m["id"] == "gpt-4o").cloned().unwrap();
    assert_eq!(gpt["owned_by"], "library");
    assert_eq!(get(g.addr, "/v1/models/gpt-4o").status, 200);

    // A key allowed only the real model may use its alias, and one allowed only the alias too.
    for allowed in ["llama3:latest", "gpt-4o"] {
        let k = create_key(&g, &format!("k-{}", allowed.replace(':', ".")), &["--models", allowed]);
        let auth = format!("Bearer {}", k["secret"].as_str().unwrap());
        let r = request_with(
            g.addr,
            "POST",
            "/v1/chat/completions",
            Some(&chat_body("gpt-4o", false)),
            &[("Authorization", &auth)],
        );
        assert_eq!(r.status, 200, "allowed {allowed}: {}", r.text());
        let listed = request_with(g.addr, "GET", "/v1/models", None, &[("Authorization", &auth)]).json();
        assert!(listed["data"].as_array().unwrap().iter().any(|m| m["id"] == "gpt-4o"));
    }

    // Usage keeps both names: grouped as requested, and as served.
    assert!(eventually(Duration::from_secs(5), || {
        let by = |g_: &str| get(g.addr, &format!("/admin/v1/usage?by={g_}")).json()["data"].clone();
        let requested = by("model");
        let served = by("served_model");
        requested.as_array().is_some_and(|d| d.iter().any(|r| r["model"] == "gpt-4o" && r["requests"] == 3))
            && served
                .as_array()
                .is_some_and(|d| d.iter().any(|r| r["served_model"] == "llama3:latest" && r["requests"] == 3))
    }));
    // Filtering by the served model finds the aliased requests.
    let v = get(g.addr, "/admin/v1/usage?by=model&model=llama3:latest").json();
    assert_eq!(v["data"][0]["model"], "gpt-4o");
}

#[test]
fn the_file_sets_defaults_the_environment_overrides_it_and_flags_override_both() {
    let m = mock(&[]);
    let path = config_file("max_body_bytes = 100\n");
    let path = path.to_str().unwrap();
    let body =
        |n: usize| json!({"model": "llama3", "messages": [{"role": "user", "content": "x".repeat(n)}]}).to_string();

    // File only: 100 bytes.
    let g = gateway(&m, &["--config", path]);
    assert_eq!(post(g.addr, "/v1/chat/completions", &body(200)).status, 413);
    drop(g);
    // File and environment: the environment wins (1,000).
    let g = gateway_env(&m, &["--config", path], &[("AI_GATEWAY_MAX_BODY_BYTES", "1000")]);
    assert_eq!(post(g.addr, "/v1/chat/completions", &body(200)).status, 200);
    assert_eq!(post(g.addr, "/v1/chat/completions", &body(2000)).status, 413);
    drop(g);
    // All three: the flag wins (5,000).
    let g = gateway_env(&m, &["--config", path, "--max-body-bytes", "5000"], &[("AI_GATEWAY_MAX_BODY_BYTES", "1000")]);
    assert_eq!(post(g.addr, "/v1/chat/completions", &body(2000)).status, 200);
    drop(g);
    // The file named by the environment instead of a flag.
    let g = gateway_env(&m, &[], &[("AI_GATEWAY_CONFIG", path)]);
    assert_eq!(post(g.addr, "/v1/chat/completions", &body(200)).status, 413);
}

#[test]
fn an_unknown_setting_or_a_bad_value_stops_the_start_with_its_name() {
    let m = mock(&[]);
    for (text, expect) in [
        ("upstream_max_concurent = 8\n", "unknown setting 'upstream_max_concurent'"),
        ("workers = \"many\"\n", "workers"),
        ("[aliases]\n\"a\" = \"b\"\n\"b\" = \"c\"\n", "itself an alias"),
    ] {
        let path = config_file(text);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream", &m.url(), "--config", path.to_str().unwrap()])
            .env("AI_GATEWAY_DATA_DIR", temp_data_dir())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(err.contains(expect), "{text}: {err}");
    }
    // A missing file is named too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(["serve", "--config", "/nonexistent/ai-gateway.toml"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ai-gateway.toml"));
}

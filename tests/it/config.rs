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

/// Runs the gateway binary with `args` (and `env`); exit code, stdout, stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = temp_data_dir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(args)
        .env("AI_GATEWAY_DATA_DIR", &dir)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An openssl certificate and key in `dir` (`name.pem`, `name.key`), valid for `days`.
fn self_signed(dir: &std::path::Path, name: &str, days: &str) {
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            days,
            "-subj",
            "/CN=127.0.0.1",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_reports_every_problem_with_its_line_and_serve_refuses_with_the_same_words() {
    let good = config_file("listen = \"127.0.0.1:0\"\nworkers = 2\n[aliases]\n\"gpt-4o\" = \"llama3:latest\"\n");
    let (code, out, err) = run(&["check-config", good.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");

    // What the file's text gets wrong: each with its line, all of them.
    let path = config_file("workers = 2\nworkres = 3\n\n[aliases]\n\"a\" = 5\n");
    let (code, _, err) = run(&["check-config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    let file = path.display().to_string();
    assert!(err.contains(&format!("{file}:2: unknown setting 'workres'")), "{err}");
    assert!(err.contains(&format!("{file}:4: alias 'a' must name a model as a string")), "{err}");
    // A value its flag would not take, with its line.
    let path = config_file("listen = \"127.0.0.1:0\"\nworkers = \"many\"\n");
    let (code, _, err) = run(&["check-config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}:2: workers: invalid value 'many'", path.display())), "{err}");

    // What the settings name: files, certificates, hosts, addresses, limits.
    let dir = path.parent().unwrap().to_path_buf();
    self_signed(&dir, "server", "2");
    self_signed(&dir, "other", "2");
    // A certificate that expired yesterday.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    std::fs::write(dir.join("old.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
    std::fs::write(dir.join("old.key"), key.serialize_pem()).unwrap();
    let text = format!(
        "listen = \"127.0.0.1:4100\"\nworkers = 0\ntls_cert = \"{d}/server.pem\"\ntls_key = \"{d}/other.key\"\n\
         upstream = [\"http://a:11434\", \"http://a:11434\", \"ftp://b\"]\nmetrics_listen = \"127.0.0.1:4100\"\n\
         upstream_ca = \"{d}/missing.pem\"\nshutdown_grace = -1\n",
        d = dir.display()
    );
    let bad = config_file(&text);
    let file = bad.display().to_string();
    let (code, _, err) = run(&["check-config", &file], &[]);
    assert_eq!(code, 1);
    let expected = [
        format!("{file}:2: --workers must be between 1 and 1024, got 0"),
        format!(
            "{file}:3: the certificate {}/server.pem and the key {}/other.key do not go together",
            dir.display(),
            dir.display()
        ),
        format!("{file}:5: upstream 'http://a:11434' is given twice"),
        format!("{file}:5: upstream 'ftp://b' must start with http:// or https://"),
        format!("{file}:6: --metrics-listen is --listen's address (127.0.0.1:4100)"),
        format!("{file}:7: cannot read the certificate {}/missing.pem", dir.display()),
        format!("{file}:8: --shutdown-grace must be a number of seconds, got -1"),
    ];
    for line in &expected {
        assert!(err.contains(line.as_str()), "missing {line:?} in:\n{err}");
    }
    // `serve` refuses to start on the same problems, in the same words.
    let (code, _, serve_err) = run(&["serve", "--config", &file], &[]);
    assert_eq!(code, 1);
    for line in &expected {
        assert!(serve_err.contains(line.as_str()), "serve: missing {line:?} in:\n{serve_err}");
    }

    // An expired certificate.
    let expired = config_file(&format!("tls_cert = \"{d}/old.pem\"\ntls_key = \"{d}/old.key\"\n", d = dir.display()));
    let (code, _, err) = run(&["check-config", expired.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains(":1: the certificate") && err.contains("expired on"), "{err}");

    // A flag or a variable is named as such.
    let (code, _, err) = run(&["check-config", good.to_str().unwrap(), "--workers", "0"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("error: --workers: --workers must be between 1 and 1024"), "{err}");
    let (code, _, err) = run(&["check-config", good.to_str().unwrap()], &[("AI_GATEWAY_WORKERS", "0")]);
    assert_eq!(code, 1);
    assert!(err.contains("error: AI_GATEWAY_WORKERS: --workers must be"), "{err}");
}

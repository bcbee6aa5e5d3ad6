//! API keys end to end: bootstrap, auth errors, the CLI changing keys while
//! the server runs (another process on the same LMDB store), and the admin API.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

fn chat_as(g: &Proc, key: &str, model: &str) -> Response {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let auth = format!("Bearer {key}");
    request_with(g.addr, "POST", "/v1/chat/completions", Some(&body), &[("Authorization", &auth)])
}

fn get_as(g: &Proc, key: &str, path: &str) -> Response {
    let auth = format!("Bearer {key}");
    request_with(g.addr, "GET", path, None, &[("Authorization", &auth)])
}

fn admin(g: &Proc, key: &str, method: &str, path: &str, body: Option<Value>) -> Response {
    let auth = format!("Bearer {key}");
    let body = body.map(|b| b.to_string());
    request_with(g.addr, method, path, body.as_deref(), &[("Authorization", &auth)])
}

fn code(r: &Response) -> String {
    r.json()["error"]["code"].as_str().unwrap_or("").to_owned()
}

#[test]
fn first_start_prints_one_admin_key_once() {
    let m = mock(&[]);
    let dir = temp_data_dir();
    let args: Vec<String> =
        ["serve", "--listen", "127.0.0.1:0", "--upstream", &m.url(), "--data-dir", dir.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    // (The directory is removed by the second process's drop, not this one's.)
    let g = start(env!("CARGO_BIN_EXE_ai-gateway"), &args, &[]);
    assert!(eventually(Duration::from_secs(5), || g.log_text().contains("keys create")));
    let log = g.log_text();
    let secret = log.split_whitespace().find(|w| w.starts_with("sk_")).expect("the admin secret is printed").to_owned();
    assert_eq!(admin(&g, &secret, "GET", "/admin/v1/keys", None).status, 200);
    drop(g);

    // A restart on the same store creates nothing and prints no secret.
    let mut g2 = start(env!("CARGO_BIN_EXE_ai-gateway"), &args, &[]);
    g2.data_dir = Some(dir);
    assert!(!g2.log_text().contains("sk_"), "{}", g2.log_text());
    assert_eq!(admin(&g2, &secret, "GET", "/admin/v1/keys", None).json()["data"].as_array().unwrap().len(), 1);
}

#[test]
fn the_admin_key_can_come_from_the_environment() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    assert!(!g.log_text().contains(ADMIN_KEY), "the given secret is not logged");
    assert!(g.log_text().contains("AI_GATEWAY_ADMIN_KEY"));
    let list = admin(&g, ADMIN_KEY, "GET", "/admin/v1/keys", None).json();
    assert_eq!(list["data"][0]["name"], "admin");
    assert_eq!(list["data"][0]["role"], "admin");
}

#[test]
fn requests_without_a_valid_key_are_refused_with_the_spec_errors() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let body = chat_body("llama3", false);
    // Missing or malformed.
    for auth in ["", "Basic dXNlcjpwYXNz", "Bearer"] {
        let r = request_with(g.addr, "POST", "/v1/chat/completions", Some(&body), &[("Authorization", auth)]);
        assert_eq!((r.status, code(&r)), (401, "missing_api_key".to_owned()), "{auth:?}");
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    let mut s = connect(g.addr);
    std::io::Write::write_all(
        &mut s,
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .as_bytes(),
    )
    .unwrap();
    let r = read_response(&mut std::io::BufReader::new(s), false).unwrap();
    assert_eq!((r.status, code(&r)), (401, "missing_api_key".to_owned()), "no header at all");
    // Unknown.
    let unknown = format!("sk_{}", "x".repeat(43));
    let r = chat_as(&g, &unknown, "llama3");
    assert_eq!((r.status, code(&r)), (401, "invalid_api_key".to_owned()));
    assert!(!r.text().contains(&unknown), "the presented secret is not echoed");
    // x-api-key works like Bearer.
    let r = request_with(g.addr, "GET", "/v1/models", None, &[("x-api-key", ADMIN_KEY)]);
    assert_eq!(r.status, 200);
    // The health check stays open.
    assert_eq!(request_with(g.addr, "GET", "/healthz", None, &[("Authorization", "")]).status, 200);
    assert_eq!(stats(&m)["by_endpoint"]["chat"], 0, "refused requests never reach the upstream");
}

#[test]
fn cli_changes_apply_to_the_running_server_on_the_next_request() {
    let m = mock(&[]);
    let g = gateway(&m, &["--workers", "2"]);
    let dir = g.data_dir.clone().unwrap();
    let key = create_key(&g, "ci-bot", &["--models", "llama3"]);
    let secret = key["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk_") && secret.len() >= 46);
    assert_eq!(key["prefix"], format!("sk_{}…{}", &secret[3..7], &secret[secret.len() - 4..]));

    // Allowed model works (several times: both workers see the key); others are 403.
    for _ in 0..4 {
        assert_eq!(chat_as(&g, &secret, "llama3").status, 200);
    }
    let r = chat_as(&g, &secret, "qwen3:8b");
    assert_eq!((r.status, code(&r)), (403, "model_not_allowed".to_owned()));
    // Models list shows only what the key may use; retrieving another is 404.
    let ids: Vec<String> = get_as(&g, &secret, "/v1/models").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["llama3:latest"]);
    assert_eq!(get_as(&g, &secret, "/v1/models/qwen3:8b").status, 404);

    // Grants from the CLI.
    let (c, out, err) = keys_cli(&dir, &["update", "ci-bot", "--load-options", "true", "--json"]);
    assert_eq!(c, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["load_options"].clone(), v["web_search"].clone()), (json!(true), json!(false)));
    let (_, table, _) = keys_cli(&dir, &["show", "ci-bot"]);
    assert!(table.contains("GRANTS") && table.contains(" load "), "{table}");

    // Widen the allowlist from the CLI: applies at once.
    let (c, _, err) = keys_cli(&dir, &["update", "ci-bot", "--models", "all", "--rpm", "60"]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(chat_as(&g, &secret, "qwen3:8b").status, 200);

    // Rotate: the old secret stops working at once, the new one works.
    let (c, out, err) = keys_cli(&dir, &["rotate", "ci-bot", "--json"]);
    assert_eq!(c, 0, "{err}");
    let rotated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rotated["id"], key["id"]);
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_eq!(code(&chat_as(&g, &secret, "llama3")), "invalid_api_key");
    assert_eq!(chat_as(&g, &new_secret, "llama3").status, 200);

    // Revoke: refused with the same answer as an unknown key.
    let (c, _, _) = keys_cli(&dir, &["revoke", key["id"].as_str().unwrap()]);
    assert_eq!(c, 0);
    let revoked = chat_as(&g, &new_secret, "llama3");
    let unknown = chat_as(&g, &format!("sk_{}", "y".repeat(43)), "llama3");
    assert_eq!(revoked.status, 401);
    assert_eq!(revoked.json(), unknown.json());

    // Expiry set from the CLI takes effect when it passes.
    let temp = create_key(&g, "temp", &[]);
    let temp_secret = temp["secret"].as_str().unwrap().to_owned();
    assert_eq!(chat_as(&g, &temp_secret, "llama3").status, 200);
    let (c, _, _) = keys_cli(&dir, &["update", "temp", "--expires", "1s"]);
    assert_eq!(c, 0);
    assert!(eventually(Duration::from_secs(5), || chat_as(&g, &temp_secret, "llama3").status == 401));

    // No secret ever reached the server's log.
    let log = g.log_text();
    for s in [&secret, &new_secret, &temp_secret] {
        assert!(!log.contains(s.as_str()));
    }
}

#[test]
fn cli_output_and_errors() {
    let dir = temp_data_dir();
    let (c, out, _) = keys_cli(&dir, &["create", "--name", "a", "--rpm", "5", "--expires", "2099-01-01"]);
    assert_eq!(c, 0);
    assert!(out.contains("sk_") && out.contains("shown only now"));
    let (_, out, _) = keys_cli(&dir, &["create", "--name", "b", "--admin", "--models", "llama3,qwen3:8b", "--json"]);
    let b: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b["role"], "admin");
    assert_eq!(b["models"], json!(["llama3", "qwen3:8b"]));
    assert_eq!(
        b["limits"],
        json!({"rpm":null,"tpm":null,"max_concurrent":null,"daily_tokens":null,"monthly_tokens":null})
    );

    let (c, table, _) = keys_cli(&dir, &["list"]);
    assert_eq!(c, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("ID") && lines[0].contains("STATUS"));
    // Columns line up: each header starts where its values start.
    let col = lines[0].find("NAME").unwrap();
    assert!(lines[1][col..].starts_with('a') || lines[1][col..].starts_with('b'));
    assert!(!table.contains(b["secret"].as_str().unwrap()), "lists never show secrets");

    let (_, out, _) = keys_cli(&dir, &["list", "--json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert!(list["data"][0].get("secret").is_none());
    assert_eq!(list["data"][0]["expires"], "2099-01-01T00:00:00Z");

    for (args, msg) in [
        (vec!["create", "--name", "a"], "already exists"),
        (vec!["show", "nope"], "no key"),
        (vec!["create", "--name", "c", "--expires", "someday"], "invalid expiry"),
        (vec!["update", "a", "--rpm", "lots"], "invalid --rpm"),
        (vec!["update", "a", "--role", "root"], "invalid --role"),
        (vec!["create", "--name", "bad name"], "invalid key name"),
    ] {
        let (c, out, err) = keys_cli(&dir, &args);
        assert_ne!(c, 0, "{args:?}");
        assert!(err.contains(msg), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
        assert!(out.is_empty());
    }
    let (_, out, _) = keys_cli(&dir, &["update", "a", "--rpm", "none", "--expires", "never", "--json"]);
    let a: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((a["limits"]["rpm"].clone(), a["expires"].clone()), (Value::Null, Value::Null));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn admin_api_manages_keys_and_refuses_user_keys() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let created = admin(
        &g,
        ADMIN_KEY,
        "POST",
        "/admin/v1/keys",
        Some(json!({"name":"web","models":["llama3"],"limits":{"rpm":30},"expires":"30d"})),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let web = created.json();
    let secret = web["secret"].as_str().unwrap().to_owned();
    let id = web["id"].as_str().unwrap().to_owned();
    assert_eq!(web["limits"]["rpm"], 30);

    // A user key may not use the admin API.
    let r = admin(&g, &secret, "GET", "/admin/v1/keys", None);
    assert_eq!((r.status, code(&r)), (403, "admin_required".to_owned()));
    // No key at all: 401.
    let r = request_with(g.addr, "GET", "/admin/v1/keys", None, &[("Authorization", "")]);
    assert_eq!(r.status, 401);

    let list = admin(&g, ADMIN_KEY, "GET", "/admin/v1/keys", None).json();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&secret));
    assert_eq!(admin(&g, ADMIN_KEY, "GET", &format!("/admin/v1/keys/{id}"), None).json()["name"], "web");
    assert_eq!(admin(&g, ADMIN_KEY, "GET", "/admin/v1/keys/web", None).json()["id"], id.as_str());
    assert_eq!(admin(&g, ADMIN_KEY, "GET", "/admin/v1/keys/key_nope", None).status, 404);

    // Grants are off unless given.
    assert_eq!((web["load_options"].clone(), web["web_search"].clone()), (json!(false), json!(false)));
    let granted = admin(&g, ADMIN_KEY, "PATCH", &format!("/admin/v1/keys/{id}"), Some(json!({"web_search": true})));
    assert_eq!(
        (granted.json()["web_search"].clone(), granted.json()["load_options"].clone()),
        (json!(true), json!(false))
    );

    // PATCH changes apply at once; null clears.
    let patched = admin(
        &g,
        ADMIN_KEY,
        "PATCH",
        &format!("/admin/v1/keys/{id}"),
        Some(json!({"models":["qwen3:8b"],"limits":{"rpm":null}})),
    );
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["limits"]["rpm"], Value::Null);
    assert_eq!(chat_as(&g, &secret, "llama3").status, 403);
    assert_eq!(chat_as(&g, &secret, "qwen3:8b").status, 200);

    // Bad input names the field.
    for (body, param) in [
        (json!({"limits":{"rpm":"many"}}), "limits.rpm"),
        (json!({"role":"root"}), "role"),
        (json!({"expires":"later"}), "expires"),
        (json!({"nmae":"x"}), "nmae"),
        (json!({"web_search":"yes"}), "web_search"),
        (json!({"load_options":1}), "load_options"),
    ] {
        let r = admin(&g, ADMIN_KEY, "PATCH", &format!("/admin/v1/keys/{id}"), Some(body));
        assert_eq!(r.status, 400);
        assert_eq!(r.json()["error"]["param"], param);
    }
    let r = admin(&g, ADMIN_KEY, "POST", "/admin/v1/keys", Some(json!({"role":"user"})));
    assert_eq!((r.status, r.json()["error"]["param"].clone()), (400, json!("name")));
    let r = admin(&g, ADMIN_KEY, "POST", "/admin/v1/keys", Some(json!({"name":"web"})));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("already exists"));

    // Rotate, then revoke with DELETE.
    let rotated = admin(&g, ADMIN_KEY, "POST", &format!("/admin/v1/keys/{id}/rotate"), None).json();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_eq!(chat_as(&g, &secret, "qwen3:8b").status, 401);
    assert_eq!(chat_as(&g, &new_secret, "qwen3:8b").status, 200);
    let deleted = admin(&g, ADMIN_KEY, "DELETE", &format!("/admin/v1/keys/{id}"), None).json();
    assert_eq!(deleted["status"], "revoked");
    assert_eq!(chat_as(&g, &new_secret, "qwen3:8b").status, 401);
    assert!(!g.log_text().contains(&new_secret));
}

#[test]
fn a_store_from_a_newer_version_is_refused_at_startup() {
    let dir = temp_data_dir();
    let (c, _, _) = keys_cli(&dir, &["create", "--name", "a"]);
    assert_eq!(c, 0);
    // Another process (this test) marks the store as written by a newer version.
    let store = ai_gateway::store::Store::open(&dir).unwrap();
    store.set_schema_version(ai_gateway::store::SCHEMA_VERSION + 1).unwrap();
    let (c, _, err) = keys_cli(&dir, &["list"]);
    assert_ne!(c, 0);
    assert!(err.contains("newer ai-gateway"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("newer ai-gateway"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests sent with `secret` on one kept connection until `stop`: for each,
/// when it was sent and the status it got. `served` counts the clients that
/// have had a 200 (each once).
fn hammer(
    addr: std::net::SocketAddr,
    secret: String,
    path: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> std::thread::JoinHandle<Vec<(std::time::Instant, u16)>> {
    std::thread::spawn(move || {
        let auth = format!("Bearer {secret}");
        let mut sent = Vec::new();
        let mut s = connect(addr);
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            let at = std::time::Instant::now();
            send(&mut s, "GET", path, None, &[("Authorization", &auth)]);
            let Some(resp) = read_response(&mut r, false) else { break };
            if resp.status == 200 && !sent.iter().any(|&(_, s)| s == 200) {
                served.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            sent.push((at, resp.status));
            if resp.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                s = connect(addr);
                r = std::io::BufReader::new(s.try_clone().unwrap());
            }
        }
        sent
    })
}

/// The revocation of a key in use, `rounds` times: the requests sent after
/// the DELETE returned that were still served (with `load`, other keys'
/// streams run throughout).
fn served_after_revocation(g: &Proc, role: &str, path: &'static str, rounds: usize) -> usize {
    static NAMES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut served = 0;
    for round in 0..rounds {
        let name = format!("{role}{}", NAMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let created = admin(g, ADMIN_KEY, "POST", "/admin/v1/keys", Some(json!({"name": name, "role": role})));
        assert_eq!(created.status, 201, "{}", created.text());
        let (id, secret) = (created.json()["id"].as_str().unwrap().to_owned(), created.json()["secret"].to_string());
        let secret = secret.trim_matches('"').to_owned();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let in_use = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clients: Vec<_> =
            (0..2).map(|_| hammer(g.addr, secret.clone(), path, stop.clone(), in_use.clone())).collect();
        // The key is in use on both connections (each has been served) before it is revoked.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while in_use.load(std::sync::atomic::Ordering::Acquire) < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let r = admin(g, ADMIN_KEY, "DELETE", &format!("/admin/v1/keys/{id}"), None);
        let returned = std::time::Instant::now();
        assert_eq!(r.status, 200, "{}", r.text());
        std::thread::sleep(Duration::from_millis(30));
        stop.store(true, std::sync::atomic::Ordering::Release);
        for c in clients {
            let sent = c.join().unwrap();
            assert!(sent.iter().any(|&(_, s)| s == 200), "the key was in use before its revocation");
            served += sent.iter().filter(|&&(at, s)| at > returned && s == 200).count();
        }
        if role == "admin" {
            let r = admin(g, &secret, "POST", "/admin/v1/keys", Some(json!({"name": format!("made-by-{round}")})));
            assert_eq!(r.status, 401, "a revoked admin key created a key");
        }
    }
    served
}

#[test]
fn a_revoked_key_is_refused_from_the_moment_its_revocation_returns() {
    let m = mock(&["--token-delay-ms", "5"]);
    let g = gateway(&m, &["--workers", "2"]);
    // Idle: only the revoked key's own requests.
    assert_eq!(served_after_revocation(&g, "admin", "/metrics", 10), 0, "admin keys, idle gateway");
    assert_eq!(served_after_revocation(&g, "user", "/v1/usage", 10), 0, "user keys, idle gateway");
    // Loaded: other keys' streams on both workers meanwhile.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (g.addr, stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let mut r = open_stream(addr, None);
                    let _ = read_response(&mut r, false);
                }
            })
        })
        .collect();
    let loaded =
        served_after_revocation(&g, "admin", "/metrics", 10) + served_after_revocation(&g, "user", "/v1/usage", 10);
    stop.store(true, std::sync::atomic::Ordering::Release);
    load.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(loaded, 0, "loaded gateway");
}

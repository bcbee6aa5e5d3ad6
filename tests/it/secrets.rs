//! No secret leaks: a session that touches every surface — every endpoint,
//! the errors, the admin API, key rotation and revocation, metrics, usage,
//! the access log in both formats — collects everything the gateway said
//! (response heads and bodies, stdout, stderr) and searches it for every
//! secret it handled. Only the two answers that hand a new secret out
//! (create, rotate) may contain it.

use crate::common::*;
use serde_json::json;

#[test]
fn no_secret_appears_in_any_log_metric_header_or_body() {
    let m = mock(&["--tokens", "3"]);
    let mut outputs: Vec<String> = Vec::new();
    let mut secrets: Vec<String> = vec![ADMIN_KEY.to_owned()];
    for format in ["text", "json"] {
        let g = gateway(&m, &["--log-format", format, "--metrics-per-key"]);
        let auth = |k: &str| format!("Bearer {k}");
        let mut seen = |r: Response| {
            let head: String = r.headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
            outputs.push(format!("{} {head}{}", r.status, r.text()));
        };
        // Keys from the CLI and the admin API (their creation answers are the exception).
        let cli_key =
            create_key(&g, "cli", &["--models", "llama3", "--rpm", "1000"])["secret"].as_str().unwrap().to_owned();
        let created = request_with(
            g.addr,
            "POST",
            "/admin/v1/keys",
            Some(&json!({"name":"api","limits":{"tpm":100000,"daily_tokens":1000000}}).to_string()),
            &[("Authorization", &auth(ADMIN_KEY))],
        );
        let api_key = created.json()["secret"].as_str().unwrap().to_owned();
        secrets.push(cli_key.clone());
        secrets.push(api_key.clone());
        for key in [&cli_key, &api_key] {
            for body in [
                chat_body("llama3", false),
                chat_body("llama3", true),
                chat_body("qwen3:8b", false),
                chat_body("nope", false),
                "{bad".into(),
            ] {
                seen(request_with(
                    g.addr,
                    "POST",
                    "/v1/chat/completions",
                    Some(&body),
                    &[("Authorization", &auth(key))],
                ));
            }
            for path in
                ["/v1/models", "/v1/models/llama3", "/v1/usage", "/admin/v1/keys", "/metrics", "/healthz", "/nope"]
            {
                seen(request_with(g.addr, "GET", path, None, &[("Authorization", &auth(key))]));
            }
            seen(request_with(g.addr, "GET", "/v1/models", None, &[("x-api-key", key)]));
        }
        // Wrong and malformed keys are not echoed either.
        let wrong = format!("{}x", &cli_key[..cli_key.len() - 1]);
        secrets.push(wrong.clone());
        seen(request_with(g.addr, "GET", "/v1/models", None, &[("Authorization", &auth(&wrong))]));
        seen(request_with(g.addr, "GET", "/v1/models", None, &[("Authorization", &format!("Basic {wrong}"))]));
        // Rotation and revocation; the rotate answer is the exception.
        let rotated =
            request_with(g.addr, "POST", "/admin/v1/keys/api/rotate", None, &[("Authorization", &auth(ADMIN_KEY))]);
        let new_secret = rotated.json()["secret"].as_str().unwrap().to_owned();
        secrets.push(new_secret.clone());
        seen(request_with(
            g.addr,
            "POST",
            "/v1/chat/completions",
            Some(&chat_body("llama3", false)),
            &[("Authorization", &auth(&api_key))],
        ));
        seen(request_with(g.addr, "DELETE", "/admin/v1/keys/cli", None, &[("Authorization", &auth(ADMIN_KEY))]));
        seen(request_with(
            g.addr,
            "POST",
            "/v1/chat/completions",
            Some(&chat_body("llama3", false)),
            &[("Authorization", &auth(&cli_key))],
        ));
        for path in ["/admin/v1/keys", "/admin/v1/usage?by=key", "/metrics"] {
            seen(request_with(g.addr, "GET", path, None, &[("Authorization", &auth(ADMIN_KEY))]));
        }
        let (_, list, _) = keys_cli(g.data_dir.as_ref().unwrap(), &["list", "--json"]);
        outputs.push(list);
        let (_, table, _) = keys_cli(g.data_dir.as_ref().unwrap(), &["list"]);
        outputs.push(table);
        let usage = std::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
            .args(["usage", "--data-dir", g.data_dir.as_ref().unwrap().to_str().unwrap(), "--by", "key"])
            .output()
            .unwrap();
        outputs.push(String::from_utf8_lossy(&usage.stdout).into_owned());
        // Everything the gateway printed, once its buffers are out.
        assert!(eventually(std::time::Duration::from_secs(5), || g.stdout_text().lines().count() >= 34));
        outputs.push(g.stdout_text());
        outputs.push(g.log_text());
    }
    let everything = outputs.join("\n");
    assert!(everything.len() > 10_000, "the session produced output to search");
    for secret in &secrets {
        assert!(!everything.contains(secret.as_str()), "a secret leaked");
        // Not even its middle: only the display prefix's 4 + 4 characters may show.
        assert!(!everything.contains(&secret[3..15]), "part of a secret leaked");
    }
}

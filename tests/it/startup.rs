//! Starting the gateway: the startup log, a port held by another process,
//! the epoll fallback, and bad configuration.

use std::process::{Command, Stdio};

use crate::common::*;

fn run_gateway(args: &[&str]) -> (i32, String) {
    let dir = temp_data_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(args)
        .env("AI_GATEWAY_DATA_DIR", &dir)
        .stdin(Stdio::null())
        .output()
        .expect("run ai-gateway");
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn startup_log_names_the_driver_address_and_upstream() {
    let m = mock(&[]);
    let g = gateway(&m, &["--workers", "2"]);
    let log = g.log_text();
    assert!(log.contains(&format!("listening on {}", g.addr)), "{log}");
    assert!(log.contains("driver io_uring") || log.contains("driver epoll"), "{log}");
    assert!(log.contains("2 workers"), "{log}");
    assert!(log.contains(&m.url()), "{log}");
}

/// The cores each worker thread of `pid` may run on, by worker name.
fn worker_cores(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("worker-") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let cores = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("").trim();
        out.push((comm.trim().to_owned(), cores.to_owned()));
    }
    // A worker's helper threads carry its name (and its cores): one row each.
    out.sort();
    out.dedup();
    out
}

#[test]
fn workers_are_pinned_only_when_asked() {
    let m = mock(&[]);
    // The process's own cores: what an unpinned worker may use.
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_owned();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let g = gateway(&m, &["--workers", "2"]);
    let free = worker_cores(g.child.id());
    assert_eq!(free.len(), 2, "{free:?}");
    assert!(free.iter().all(|(_, c)| *c == own), "{free:?} against {own}");
    assert!(!g.log_text().contains("pinned"), "{}", g.log_text());

    let g = gateway(&m, &["--workers", "2", "--pin-workers"]);
    let pinned = worker_cores(g.child.id());
    let expected: Vec<(String, String)> = (0..2).map(|i| (format!("worker-{i}"), (i % cores).to_string())).collect();
    assert_eq!(pinned, expected);
    assert!(g.log_text().contains("2 workers, pinned"), "{}", g.log_text());
}

#[test]
fn a_port_held_by_another_process_is_a_clear_error() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    // A second gateway on the same port must not share it silently.
    let (code, err) = run_gateway(&["serve", "--listen", &g.addr.to_string(), "--upstream", &m.url()]);
    assert_ne!(code, 0);
    assert!(err.contains("already in use"), "{err}");
    // Nor next to a plain socket.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (code, err) =
        run_gateway(&["serve", "--listen", &holder.local_addr().unwrap().to_string(), "--upstream", &m.url()]);
    assert_ne!(code, 0);
    assert!(err.contains("already in use"), "{err}");
}

#[test]
fn epoll_fallback_serves_the_same() {
    let m = mock(&[]);
    let g = gateway_env(&m, &[], &[("MONOIO_FORCE_LEGACY_DRIVER", "1")]);
    assert!(g.log_text().contains("driver epoll"), "{}", g.log_text());
    let resp = post(g.addr, "/v1/chat/completions", &chat_body("llama3", true));
    assert!(resp.text().ends_with("data: [DONE]\n\n"));
    let resp = post(g.addr, "/v1/chat/completions", &chat_body("llama3", false));
    assert_eq!(resp.status, 200);
}

#[test]
fn bad_configuration_is_refused_with_a_message() {
    let (code, err) = run_gateway(&["serve", "--listen", "127.0.0.1:0", "--upstream", "ftp://ollama.example:11434"]);
    assert_ne!(code, 0);
    assert!(err.contains("must start with http:// or https://"), "{err}");
    let (code, err) = run_gateway(&["serve", "--listen", "127.0.0.1:0", "--workers", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--workers"), "{err}");
    let (code, err) = run_gateway(&["serve", "--listen", "not-an-address"]);
    assert_ne!(code, 0);
    assert!(err.contains("listen"), "{err}");
}

#[test]
fn settings_come_from_the_environment_too() {
    let m = mock(&[]);
    let dir = temp_data_dir();
    let mut g = start(
        env!("CARGO_BIN_EXE_ai-gateway"),
        &["serve".into()],
        &[
            ("AI_GATEWAY_LISTEN", "127.0.0.1:0"),
            ("AI_GATEWAY_UPSTREAM", &m.url()),
            ("AI_GATEWAY_WORKERS", "1"),
            ("AI_GATEWAY_DATA_DIR", dir.to_str().unwrap()),
            ("AI_GATEWAY_ADMIN_KEY", ADMIN_KEY),
        ],
    );
    g.data_dir = Some(dir.clone());
    assert!(dir.join("data.mdb").exists(), "the store is created in AI_GATEWAY_DATA_DIR");
    assert!(g.log_text().contains("1 workers"), "{}", g.log_text());
    assert_eq!(post(g.addr, "/v1/chat/completions", &chat_body("llama3", false)).status, 200);
}

#[test]
fn one_server_per_data_directory_and_the_cli_works_beside_it_and_on_a_read_only_store() {
    let m = mock(&[]);
    let mut g = gateway(&m, &[]);
    let dir = g.data_dir.clone().unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", &m.url(), "--data-dir", dir.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(std::time::Duration::from_secs(10), || second.try_wait().unwrap().is_some());
    if !exited {
        let _ = second.kill();
    }
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(exited, "a second server on the same directory kept running: {err}");
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(dir.to_str().unwrap()) && err.contains(&format!("process {}", g.child.id())), "{err}");
    // The CLI works beside the running server.
    create_key(&g, "beside", &[]);
    let (code, out, err) = keys_cli(&dir, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("beside"));
    assert_eq!(terminate(&mut g), Some(0));

    // A store the user may only read: listing, showing and usage work; changes are refused.
    use std::os::unix::fs::PermissionsExt;
    let as_reader = |args: &[&str]| {
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            // Root reads and writes anything: run as nobody instead.
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_ai-gateway")]);
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        };
        let out = cmd.args(args).stdin(Stdio::null()).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    for f in std::fs::read_dir(&dir).unwrap() {
        std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    let d = dir.to_str().unwrap();
    let (code, out, err) = as_reader(&["keys", "--data-dir", d, "list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("beside"), "{out}");
    let (code, out, err) = as_reader(&["keys", "--data-dir", d, "show", "beside"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("beside"));
    let (code, _, err) = as_reader(&["usage", "--json", "--data-dir", d]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = as_reader(&["keys", "--data-dir", d, "create", "--name", "nope"]);
    assert_ne!(code, Some(0));
    assert!(err.starts_with("error: "), "{err}");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

//! `ai-gateway keys …`: managing API keys from the command line.
//!
//! The CLI opens the same LMDB store as a running server (LMDB is safe
//! across processes), so every change applies to the server's next request.
//! With `--redis` it acts on the cluster's keys in Redis instead, which
//! every instance mirrors within moments.
//! Human output is an aligned table; `--json` prints the same shape as the
//! admin API, stable for scripts. A failure is one line on stderr and a
//! non-zero exit.

use clap::{Args, Subcommand};

use crate::clock::{parse_expiry, unix_now};
use crate::cluster::keys::KeyAdmin;
use crate::config::{ClusterArgs, DataArgs};
use crate::store::Store;
use crate::store::keys::{Grants, KeyRecord, KeyUpdate, Limits, NewKey, Priority, Role, models_from_arg};

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// With `--redis`, the command acts on the cluster's keys (and needs no store here).
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create(CreateArgs),
    /// List all keys.
    List(JsonFlag),
    /// Show one key.
    Show(Target),
    /// Change a key's settings (takes effect on the next request).
    Update(UpdateArgs),
    /// Revoke a key: its secret stops working at once.
    Revoke(Target),
    /// Give a key a new secret (same id); the old one stops working at once.
    Rotate(Target),
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON (the admin API's shape) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Target {
    /// The key's id (`key_…`) or name.
    pub key: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A unique name (letters, digits, `-_.@`).
    #[arg(long)]
    pub name: String,
    /// Give the key the admin role (admin API access).
    #[arg(long)]
    pub admin: bool,
    /// Models the key may use, comma-separated, or `all` (the default).
    #[arg(long)]
    pub models: Option<String>,
    /// Expiry: a duration (30d, 12h, 90m) or a date (2026-12-31, 00:00 UTC).
    #[arg(long)]
    pub expires: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt + completion).
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// Tokens per UTC day.
    #[arg(long)]
    pub daily_tokens: Option<u64>,
    /// Tokens per UTC calendar month.
    #[arg(long)]
    pub monthly_tokens: Option<u64>,
    /// Lane in the upstream queue: `interactive`, `standard` (the default) or `batch`.
    #[arg(long)]
    pub priority: Option<String>,
    /// Let the key's requests set their own load-time settings
    /// (`keep_alive`, `num_ctx`, `num_gpu`, …); otherwise the operator's apply.
    #[arg(long)]
    pub load_options: bool,
    /// Let the key use Ollama's web search and fetch (run on the host
    /// owner's ollama.com account).
    #[arg(long)]
    pub web_search: bool,
    /// Record the key's message contents in its requests' traces (with
    /// `--otlp-endpoint`); otherwise they never are.
    #[arg(long)]
    pub trace_contents: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The key's id (`key_…`) or name.
    pub key: String,
    /// A new name.
    #[arg(long)]
    pub name: Option<String>,
    /// `user` or `admin`.
    #[arg(long)]
    pub role: Option<String>,
    /// Allowed models, comma-separated; `all` clears the list.
    #[arg(long)]
    pub models: Option<String>,
    /// A duration, a date, or `never`.
    #[arg(long)]
    pub expires: Option<String>,
    /// Requests per minute, or `none`.
    #[arg(long)]
    pub rpm: Option<String>,
    /// Tokens per minute, or `none`.
    #[arg(long)]
    pub tpm: Option<String>,
    /// Requests in flight at once, or `none`.
    #[arg(long)]
    pub max_concurrent: Option<String>,
    /// Tokens per UTC day, or `none`.
    #[arg(long)]
    pub daily_tokens: Option<String>,
    /// Tokens per UTC month, or `none`.
    #[arg(long)]
    pub monthly_tokens: Option<String>,
    /// Lane in the upstream queue: `interactive`, `standard` or `batch`.
    #[arg(long)]
    pub priority: Option<String>,
    /// `true` or `false`: whether the key's own load-time settings reach the host.
    #[arg(long)]
    pub load_options: Option<bool>,
    /// `true` or `false`: whether the key may use web search and fetch.
    #[arg(long)]
    pub web_search: Option<bool>,
    /// `true` or `false`: whether the key's message contents are recorded in traces.
    #[arg(long)]
    pub trace_contents: Option<bool>,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// Runs a `keys` command; prints its result. Errors are returned as one line.
pub fn run_keys(args: KeysArgs) -> Result<(), String> {
    let link = crate::cluster::link(&args.cluster)?;
    let store = match link {
        // The cluster's keys live in Redis: no local store is needed.
        Some(_) => None,
        // Listing and showing only read: they work on a store the user may only read.
        None if matches!(args.command, KeysCommand::List(_) | KeysCommand::Show(_)) => {
            Some(Store::open_read_only(&args.data.data_dir).map_err(|e| e.to_string())?)
        }
        None => Some(Store::open(&args.data.data_dir).map_err(|e| e.to_string())?),
    };
    let keys = KeyAdmin { store, link: link.as_ref() };
    match args.command {
        KeysCommand::Create(a) => {
            let expires = a.expires.as_deref().map(|e| parse_expiry(e, unix_now())).transpose()?;
            let new = NewKey {
                name: a.name,
                role: if a.admin { Role::Admin } else { Role::User },
                models: a.models.as_deref().map(models_from_arg).transpose()?.unwrap_or_default(),
                expires,
                limits: Limits {
                    rpm: a.rpm,
                    tpm: a.tpm,
                    max_concurrent: a.max_concurrent,
                    daily_tokens: a.daily_tokens,
                    monthly_tokens: a.monthly_tokens,
                },
                priority: a.priority.as_deref().map(priority_from_arg).transpose()?.unwrap_or_default(),
                grants: Grants {
                    load_options: a.load_options,
                    web_search: a.web_search,
                    trace_contents: a.trace_contents,
                },
                secret: None,
            };
            let (record, secret) = keys.create(new).map_err(|e| e.to_string())?;
            let what = format!("Created key '{}' ({}).", record.name, record.id);
            print_secret(&record, &secret, a.json.json, &what);
        }
        KeysCommand::List(j) => {
            let list = keys.list().map_err(|e| e.to_string())?;
            if j.json {
                let data: Vec<serde_json::Value> = list.iter().map(KeyRecord::view).collect();
                println!("{}", serde_json::json!({"object": "list", "data": data}));
            } else {
                print!("{}", table(&list));
            }
        }
        KeysCommand::Show(t) => {
            let record = keys.find(&t.key).map_err(|e| e.to_string())?;
            print_record(&record, t.json.json);
        }
        KeysCommand::Update(a) => {
            let update = update_from_args(&a)?;
            let record = keys.update(&a.key, &update).map_err(|e| e.to_string())?;
            print_record(&record, a.json.json);
        }
        KeysCommand::Revoke(t) => {
            let record = keys.revoke(&t.key).map_err(|e| e.to_string())?;
            print_record(&record, t.json.json);
        }
        KeysCommand::Rotate(t) => {
            let (record, secret) = keys.rotate(&t.key).map_err(|e| e.to_string())?;
            let what = format!("Rotated key '{}' ({}); the old secret no longer works.", record.name, record.id);
            print_secret(&record, &secret, t.json.json, &what);
        }
    }
    Ok(())
}

fn update_from_args(a: &UpdateArgs) -> Result<KeyUpdate, String> {
    let limit = |flag: &str, v: &Option<String>| -> Result<Option<Option<u64>>, String> {
        match v.as_deref() {
            None => Ok(None),
            Some("none" | "unlimited") => Ok(Some(None)),
            Some(n) => n
                .parse::<u64>()
                .map(|n| Some(Some(n)))
                .map_err(|_| format!("invalid --{flag} '{n}': give a whole number or 'none'")),
        }
    };
    Ok(KeyUpdate {
        name: a.name.clone(),
        role: match a.role.as_deref() {
            None => None,
            Some("user") => Some(Role::User),
            Some("admin") => Some(Role::Admin),
            Some(r) => return Err(format!("invalid --role '{r}': use 'user' or 'admin'")),
        },
        models: a.models.as_deref().map(models_from_arg).transpose()?,
        expires: match a.expires.as_deref() {
            None => None,
            Some("never" | "none") => Some(None),
            Some(e) => Some(Some(parse_expiry(e, unix_now())?)),
        },
        rpm: limit("rpm", &a.rpm)?,
        tpm: limit("tpm", &a.tpm)?,
        max_concurrent: limit("max-concurrent", &a.max_concurrent)?,
        daily_tokens: limit("daily-tokens", &a.daily_tokens)?,
        monthly_tokens: limit("monthly-tokens", &a.monthly_tokens)?,
        priority: a.priority.as_deref().map(priority_from_arg).transpose()?,
        load_options: a.load_options,
        web_search: a.web_search,
        trace_contents: a.trace_contents,
    })
}

fn priority_from_arg(p: &str) -> Result<Priority, String> {
    Priority::parse(p).ok_or_else(|| format!("invalid --priority '{p}': use 'interactive', 'standard' or 'batch'"))
}

/// Prints a new secret: the one time it is shown.
fn print_secret(record: &KeyRecord, secret: &str, json: bool, what: &str) {
    if json {
        println!("{}", record.view_with_secret(secret));
    } else {
        println!("{what} Its secret is shown only now, store it safely:\n\n    {secret}\n");
    }
}

fn print_record(record: &KeyRecord, json: bool) {
    if json {
        println!("{}", record.view());
    } else {
        print!("{}", table(std::slice::from_ref(record)));
    }
}

/// An aligned table of keys.
pub fn table(keys: &[KeyRecord]) -> String {
    let now = unix_now();
    let date =
        |t: Option<i64>| t.map(|t| crate::clock::unix_to_rfc3339(t, 0)[..16].replace('T', " ")).unwrap_or("-".into());
    let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or("-".into());
    let mut rows = vec![
        [
            "ID", "NAME", "PREFIX", "ROLE", "MODELS", "RPM", "TPM", "CONC", "DAY", "MONTH", "LANE", "GRANTS",
            "CREATED", "EXPIRES", "STATUS",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for k in keys {
        rows.push(vec![
            k.id.clone(),
            k.name.clone(),
            k.prefix.clone(),
            format!("{:?}", k.role).to_lowercase(),
            if k.models.is_empty() { "all".into() } else { k.models.join(",") },
            opt(k.limits.rpm),
            opt(k.limits.tpm),
            opt(k.limits.max_concurrent),
            opt(k.limits.daily_tokens),
            opt(k.limits.monthly_tokens),
            k.priority.name().to_owned(),
            grants(&k.grants),
            date(Some(k.created)),
            date(k.expires),
            k.status(now).to_owned(),
        ]);
    }
    align(&rows)
}

/// A key's grants for the table: `load,web,contents`, or `-`.
fn grants(g: &Grants) -> String {
    let names: Vec<&str> = [(g.load_options, "load"), (g.web_search, "web"), (g.trace_contents, "contents")]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| n)
        .collect();
    if names.is_empty() { "-".into() } else { names.join(",") }
}

/// `ai-gateway usage …`
#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// With `--redis`, the cluster's usage (all instances) instead of this store's.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// With `--redis`: only one instance's part (its store id, as `/readyz` and the dashboard show it).
    #[arg(long, requires = "redis")]
    pub instance: Option<String>,
    /// Only this key (id or name).
    #[arg(long)]
    pub key: Option<String>,
    /// Only this model.
    #[arg(long)]
    pub model: Option<String>,
    /// First day (YYYY-MM-DD, UTC), inclusive.
    #[arg(long)]
    pub from: Option<String>,
    /// Last day (YYYY-MM-DD, UTC), inclusive.
    #[arg(long)]
    pub to: Option<String>,
    /// Group rows by day, model, the model that served it, key, protocol
    /// (api: openai, anthropic, responses, ollama), or agent session (each
    /// session with its key, the most tokens first; this store's sessions,
    /// not by model).
    #[arg(long, value_parser = ["day", "model", "served_model", "key", "api", "session"], default_value = "day")]
    pub by: String,
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV.
    #[arg(long)]
    pub csv: bool,
}

/// Prints stored usage, grouped.
pub fn run_usage(args: UsageArgs) -> Result<(), String> {
    let link = crate::cluster::link(&args.cluster)?;
    for (flag, d) in [("from", &args.from), ("to", &args.to)] {
        if let Some(d) = d
            && crate::clock::rfc3339_to_unix(format!("{d}T00:00:00Z").as_bytes()).is_none()
        {
            return Err(format!("invalid --{flag} '{d}': use a date like 2026-11-24"));
        }
    }
    if args.by == "session" {
        if link.is_some() {
            return Err("usage by session is kept by each instance's store: run it without --redis, with that instance's --data-dir".into());
        }
        if args.model.is_some() {
            return Err("usage by session is not kept by model: leave --model out".into());
        }
    }
    let store = match link {
        Some(_) => None,
        None => Some(Store::open_read_only(&args.data.data_dir).map_err(|e| e.to_string())?),
    };
    let keys = KeyAdmin { store, link: link.as_ref() };
    let key_id = match &args.key {
        Some(k) => Some(keys.find(k).map_err(|e| e.to_string())?.id),
        None => None,
    };
    let q = crate::accounting::usage::UsageQuery {
        key_id: key_id.as_deref(),
        model: args.model.as_deref(),
        from: args.from.as_deref(),
        to: args.to.as_deref(),
        by: &args.by,
    };
    let groups = match (&link, store) {
        (Some(link), _) => crate::accounting::usage::cluster_query(link, &q, args.instance.as_deref()),
        (None, Some(store)) => crate::accounting::usage::query(store, &q),
        (None, None) => Err(crate::store::StoreError::Io("no store to read".into())),
    }
    .map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", crate::accounting::usage::groups_json(&args.by, &groups));
        return Ok(());
    }
    // By session, the group is `session \t key`: two columns.
    let by: &[&str] = if args.by == "session" { &["session", "key"] } else { &[args.by.as_str()] };
    let header = [
        "requests",
        "errors",
        "cancelled",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "avg_ms",
        "max_ms",
        "avg_first_token_ms",
    ];
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|(name, r)| {
            let avg = |sum: u64| {
                if r.requests == 0 { "0".to_owned() } else { format!("{:.1}", sum as f64 / r.requests as f64 / 1000.0) }
            };
            let mut cells: Vec<String> = name.splitn(by.len(), '\t').map(str::to_owned).collect();
            cells.extend([
                r.requests.to_string(),
                r.errors.to_string(),
                r.cancelled.to_string(),
                r.prompt_tokens.to_string(),
                r.completion_tokens.to_string(),
                r.tokens().to_string(),
                avg(r.latency_sum_us),
                format!("{:.1}", r.latency_max_us as f64 / 1000.0),
                avg(r.first_token_sum_us),
            ]);
            cells
        })
        .collect();
    let header: Vec<&str> = by.iter().chain(header.iter()).copied().collect();
    if args.csv {
        println!("{}", header.join(","));
        for r in rows {
            let cells: Vec<String> = r
                .iter()
                .map(|c| if c.contains([',', '"']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c.clone() })
                .collect();
            println!("{}", cells.join(","));
        }
    } else {
        let mut all = vec![header.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>()];
        all.extend(rows);
        print!("{}", align(&all));
    }
    Ok(())
}

/// Left-aligned columns, two spaces apart.
fn align(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> =
            r.iter().zip(&widths).map(|(cell, w)| format!("{cell}{}", " ".repeat(w - cell.chars().count()))).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

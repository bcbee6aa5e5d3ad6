//! The configuration file (`--config ai-gateway.toml`, or `AI_GATEWAY_CONFIG`).
//!
//! Every `serve` setting may be written in the file under its flag's name
//! with `_` for `-` (`upstream_max_concurrent = 8`); `upstream` may also be a
//! list. The file's values become the defaults of the command line, so clap
//! still applies its own order on top: **file < environment < flags**, and a
//! value from the file is checked exactly like the same flag would be. The
//! `[aliases]` table maps requested model names to served ones. A key the
//! gateway does not know is an error naming the key and the file: a typo
//! must not silently leave a setting at its default.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::Command;

use crate::config::ModelTable;
use crate::config::aliases::Aliases;
use crate::config::loads::Loads;

/// The subcommands whose flags a file sets: `serve`, and `check-config`,
/// which reads them exactly as `serve` would.
const READERS: [&str; 2] = ["serve", "check-config"];

/// Where each setting of the config file stands in it.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub path: PathBuf,
    /// Setting (argument id) → its line; `aliases` and `models` for those tables.
    pub lines: BTreeMap<String, usize>,
}

impl Origin {
    /// `path:line` of `setting`, if the file sets it.
    pub fn place(&self, setting: &str) -> Option<String> {
        self.lines.get(setting).map(|line| format!("{}:{line}", self.path.display()))
    }
}

/// Reads the config file named on the command line (or in the environment),
/// if any, and returns the command with the file's values as defaults of
/// `serve` (and `check-config`), the file's tables, and where each setting
/// stands. Every problem the file has, each with its line, is an error:
/// one line per problem.
pub fn apply(cmd: Command, args: &[OsString]) -> Result<(Command, ModelTable, Option<Origin>), String> {
    let Some(path) = config_path(args) else {
        return Ok((cmd, ModelTable::default(), None));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let at = |line: usize| format!("{}:{line}", path.display());
    let parsed = parse(&text, &known_settings(&cmd)).map_err(|problems| {
        problems.iter().map(|(line, msg)| format!("{}: {msg}", at(*line))).collect::<Vec<_>>().join("\n")
    })?;
    // Each value is checked now as its flag would be, so that a bad one is
    // named with its line (and all of them at once).
    let serve = cmd.find_subcommand("serve").cloned().unwrap_or_else(|| Command::new("serve"));
    let mut problems = Vec::new();
    for (id, values, line) in &parsed.settings {
        let Some(long) = serve.get_arguments().find(|a| a.get_id().as_str() == id).and_then(|a| a.get_long()) else {
            continue;
        };
        let argv = values.iter().flat_map(|v| [format!("--{long}"), v.clone()]);
        if let Err(e) = serve.clone().no_binary_name(true).try_get_matches_from(argv) {
            use clap::error::ErrorKind as K;
            // Only what is wrong with the value itself: the flags it needs are checked together later.
            if matches!(e.kind(), K::InvalidValue | K::ValueValidation | K::InvalidUtf8 | K::TooManyValues) {
                let why = e.to_string();
                let why = why.lines().next().unwrap_or("").trim_start_matches("error: ").to_owned();
                problems.push(format!("{}: {id}: {why}", at(*line)));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let mut cmd = cmd;
    for reader in READERS {
        cmd = cmd.mut_subcommand(reader, |mut sub| {
            for (id, values, _) in &parsed.settings {
                sub = sub.mut_arg(id.as_str(), |a| a.default_values(values.clone()));
            }
            sub
        });
    }
    let lines = parsed.settings.iter().map(|(id, _, line)| (id.clone(), *line)).chain(parsed.tables).collect();
    Ok((cmd, parsed.models, Some(Origin { path, lines })))
}

/// The names a file may set: the `serve` arguments, except `config` itself.
fn known_settings(cmd: &Command) -> Vec<String> {
    cmd.get_subcommands()
        .find(|c| c.get_name() == "serve")
        .map(|serve| {
            serve
                .get_arguments()
                .map(|a| a.get_id().as_str().to_owned())
                .filter(|id| id != "config" && id != "help")
                .collect()
        })
        .unwrap_or_default()
}

/// What a file holds: its settings (id, values, line), its tables, and the
/// lines of the tables (`aliases`, `models`).
pub struct Parsed {
    pub settings: Vec<(String, Vec<String>, usize)>,
    pub models: ModelTable,
    pub tables: Vec<(String, usize)>,
}

/// Settings and tables from the file's text; every problem with its line.
pub fn parse(text: &str, known: &[String]) -> Result<Parsed, Vec<(usize, String)>> {
    let line_of = |offset: usize| 1 + text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count();
    let table: BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(s.start));
        vec![(line, format!("not valid TOML: {}", e.message()))]
    })?;
    let mut problems = Vec::new();
    let mut settings = Vec::new();
    let mut tables = Vec::new();
    let mut aliases = BTreeMap::new();
    let mut loads = Loads::default();
    let mut aliases_line = 0;
    for (key, value) in table {
        let line = line_of(key.span().start);
        let (key, value) = (key.into_inner(), value.into_inner());
        if key == "models" {
            tables.push((key.clone(), line));
            match &value {
                toml::Value::Table(t) => match Loads::from_toml(t) {
                    Ok(l) => loads = l,
                    Err(e) => problems.push((line, e)),
                },
                _ => problems.push((line, "[models] must be a table of per-model settings ([models.\"name\"])".into())),
            }
            continue;
        }
        if key == "aliases" {
            tables.push((key.clone(), line));
            aliases_line = line;
            let toml::Value::Table(t) = value else {
                problems.push((line, "[aliases] must be a table of \"requested\" = \"served\" names".into()));
                continue;
            };
            for (alias, target) in t {
                match target {
                    toml::Value::String(target) => {
                        aliases.insert(alias, target);
                    }
                    _ => problems.push((line, format!("alias '{alias}' must name a model as a string"))),
                }
            }
            continue;
        }
        if !known.contains(&key) {
            problems.push((line, format!("unknown setting '{key}' (settings are the serve flags with '_' for '-')")));
            continue;
        }
        let scalar = |v: &toml::Value| -> Result<String, String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                _ => Err(format!("setting '{key}' must be a string, number or boolean")),
            }
        };
        let values = match &value {
            toml::Value::Array(list) if key == "upstream" => list.iter().map(scalar).collect::<Result<Vec<_>, _>>(),
            v => scalar(v).map(|one| vec![one]),
        };
        match values {
            Ok(values) => settings.push((key, values, line)),
            Err(e) => problems.push((line, e)),
        }
    }
    let aliases = Aliases::new(aliases).unwrap_or_else(|e| {
        problems.push((aliases_line.max(1), e));
        Aliases::default()
    });
    if !problems.is_empty() {
        problems.sort();
        return Err(problems);
    }
    Ok(Parsed { settings, models: ModelTable { aliases, loads }, tables })
}

/// `--config PATH` / `--config=PATH` on the command line (or the file
/// `check-config` is given), else `AI_GATEWAY_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1).peekable();
    if it.peek().is_some_and(|a| *a == "check-config") {
        it.next();
        if let Some(file) = it.peek().filter(|a| !a.to_string_lossy().starts_with('-')) {
            return Some(PathBuf::from(file));
        }
    }
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
        if a == "--" {
            break;
        }
    }
    std::env::var_os("AI_GATEWAY_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        ["listen", "upstream", "workers", "metrics_per_key"].map(String::from).to_vec()
    }

    #[test]
    fn settings_lists_and_aliases() {
        let parsed = parse(
            r#"
            listen = "127.0.0.1:4000"
            workers = 2
            metrics_per_key = true
            upstream = ["http://gpu-a:11434", "http://gpu-b:11434"]
            [aliases]
            "gpt-4o" = "llama3:latest"
            "#,
            &known(),
        )
        .unwrap();
        let settings: Vec<(String, Vec<String>)> = parsed.settings.into_iter().map(|(k, v, _)| (k, v)).collect();
        assert_eq!(
            settings,
            vec![
                ("listen".to_owned(), vec!["127.0.0.1:4000".to_owned()]),
                ("metrics_per_key".to_owned(), vec!["true".to_owned()]),
                ("upstream".to_owned(), vec!["http://gpu-a:11434".to_owned(), "http://gpu-b:11434".to_owned()]),
                ("workers".to_owned(), vec!["2".to_owned()]),
            ]
        );
        assert_eq!(parsed.models.aliases.resolve("gpt-4o"), "llama3:latest");
    }

    #[test]
    fn unknown_keys_and_bad_shapes_are_errors_naming_the_key_and_its_line() {
        let err = |text: &str| parse(text, &known()).err().expect("a problem");
        assert_eq!(err("workers = 2\nlistne = \"x\"")[0].0, 2);
        assert!(err("listne = \"x\"")[0].1.contains("'listne'"));
        assert!(err("workers = [1, 2]")[0].1.contains("'workers'"));
        assert!(err("[aliases]\nx = 3")[0].1.contains("'x'"));
        assert!(err("aliases = 3")[0].1.contains("[aliases]"));
        let toml = err("workers = 2\n\nworkers = ");
        assert_eq!(toml[0].0, 3);
        assert!(toml[0].1.contains("not valid TOML"));
        // Every problem, not the first only.
        assert_eq!(err("a = 1\nb = 2\nworkers = 1").len(), 2);
    }
}

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

/// Reads the config file named on the command line (or in the environment),
/// if any, and returns the command with the file's values as defaults of the
/// `serve` subcommand, and the file's tables.
pub fn apply(cmd: Command, args: &[OsString]) -> Result<(Command, ModelTable), String> {
    let Some(path) = config_path(args) else {
        return Ok((cmd, ModelTable::default()));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (defaults, tables) = parse(&text, &known_settings(&cmd)).map_err(|e| format!("{}: {e}", path.display()))?;
    let cmd = cmd.mut_subcommand("serve", |mut serve| {
        for (id, values) in defaults {
            serve = serve.mut_arg(id, |a| a.default_values(values));
        }
        serve
    });
    Ok((cmd, tables))
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

/// Settings from a file: argument id → its values as text.
pub type Settings = Vec<(String, Vec<String>)>;

/// Settings and tables from the file's text.
pub fn parse(text: &str, known: &[String]) -> Result<(Settings, ModelTable), String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message()))?;
    let mut settings = Vec::new();
    let mut aliases = BTreeMap::new();
    let mut loads = Loads::default();
    for (key, value) in table {
        if key == "models" {
            let toml::Value::Table(t) = value else {
                return Err("[models] must be a table of per-model settings ([models.\"name\"])".into());
            };
            loads = Loads::from_toml(&t)?;
            continue;
        }
        if key == "aliases" {
            let toml::Value::Table(t) = value else {
                return Err("[aliases] must be a table of \"requested\" = \"served\" names".into());
            };
            for (alias, target) in t {
                let toml::Value::String(target) = target else {
                    return Err(format!("alias '{alias}' must name a model as a string"));
                };
                aliases.insert(alias, target);
            }
            continue;
        }
        if !known.contains(&key) {
            return Err(format!("unknown setting '{key}' (settings are the serve flags with '_' for '-')"));
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
            toml::Value::Array(list) if key == "upstream" => list.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
            v => vec![scalar(v)?],
        };
        settings.push((key, values));
    }
    Ok((settings, ModelTable { aliases: Aliases::new(aliases)?, loads }))
}

/// `--config PATH` / `--config=PATH` on the command line, else `AI_GATEWAY_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
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
        let (settings, tables) = parse(
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
        assert_eq!(
            settings,
            vec![
                ("listen".to_owned(), vec!["127.0.0.1:4000".to_owned()]),
                ("metrics_per_key".to_owned(), vec!["true".to_owned()]),
                ("upstream".to_owned(), vec!["http://gpu-a:11434".to_owned(), "http://gpu-b:11434".to_owned()]),
                ("workers".to_owned(), vec!["2".to_owned()]),
            ]
        );
        assert_eq!(tables.aliases.resolve("gpt-4o"), "llama3:latest");
    }

    #[test]
    fn unknown_keys_and_bad_shapes_are_errors_naming_the_key() {
        assert!(parse("listne = \"x\"", &known()).unwrap_err().contains("'listne'"));
        assert!(parse("workers = [1, 2]", &known()).unwrap_err().contains("'workers'"));
        assert!(parse("[aliases]\nx = 3", &known()).unwrap_err().contains("'x'"));
        assert!(parse("aliases = 3", &known()).unwrap_err().contains("[aliases]"));
        assert!(parse("workers = ", &known()).unwrap_err().contains("not valid TOML"));
    }
}

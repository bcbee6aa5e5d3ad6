//! Load-time settings per model: the operator's, not the clients'.
//!
//! A request to Ollama carries two kinds of settings. Sampling options
//! (`temperature`, `num_predict`, `stop`, …) shape one generation and belong
//! to whoever sends it. Load-time settings shape the loaded model that every
//! key shares: `keep_alive` (how long the host keeps it after this request;
//! `0` unloads it at once) and the runner options (`num_ctx`, `num_gpu`,
//! `num_batch`, …: a request whose runner options differ from the loaded
//! model's makes the host load it again). One key sending them would unload
//! or reload a model under everyone else, so they come from the `[models]`
//! table of the config file, per served model (`"*"` for every model
//! without its own entry), and a client's values are dropped unless its key
//! is granted `load_options`. A model without settings gets none: the
//! host's own defaults apply.
//!
//! ```toml
//! [models."qwen3-coder:30b"]
//! keep_alive = "2h"
//! num_ctx = 32768
//! ```

use std::collections::BTreeMap;

/// The runner options Ollama reloads a model for when they change (its
/// `api.Runner`), with whether each is a boolean (else an integer). Older
/// names it no longer reads are dropped from clients' requests all the same.
pub const RUNNER_OPTIONS: [(&str, bool); 7] = [
    ("num_ctx", false),
    ("num_batch", false),
    ("num_gpu", false),
    ("main_gpu", false),
    ("use_mmap", true),
    ("num_thread", false),
    ("draft_num_predict", false),
];

/// Names of load-time options older Ollama versions read (never the operator's to set here).
const OLDER_RUNNER_OPTIONS: [&str; 5] = ["use_mlock", "numa", "low_vram", "f16_kv", "vocab_only"];

/// Whether an `options` member is a load-time setting rather than a sampling one.
pub fn is_runner_option(name: &str) -> bool {
    RUNNER_OPTIONS.iter().any(|(n, _)| *n == name) || OLDER_RUNNER_OPTIONS.contains(&name)
}

/// One model's settings, as the JSON they are written with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load {
    /// `keep_alive`'s value as a JSON literal (`"2h"`, `-1`).
    pub keep_alive: Option<String>,
    /// Runner options: (name, JSON literal), in [`RUNNER_OPTIONS`] order.
    pub options: Vec<(&'static str, String)>,
}

impl Load {
    pub fn is_empty(&self) -> bool {
        self.keep_alive.is_none() && self.options.is_empty()
    }

    /// The value set for a runner option.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// The `[models]` table: served model name → its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loads {
    by_model: BTreeMap<String, Load>,
    /// `[models."*"]`: for every model without an entry of its own.
    every: Load,
}

impl Loads {
    /// The settings for requests served by `model` (`llama3` and `llama3:latest` are one model).
    pub fn for_model(&self, model: &str) -> &Load {
        if self.by_model.is_empty() {
            return &self.every;
        }
        let bare = model.strip_suffix(":latest").unwrap_or(model);
        self.by_model
            .get(model)
            .or_else(|| self.by_model.get(bare))
            .or_else(|| self.by_model.get(&format!("{bare}:latest")))
            .unwrap_or(&self.every)
    }

    /// Reads the config file's `[models]` table.
    pub fn from_toml(table: &toml::Table) -> Result<Self, String> {
        let mut loads = Loads::default();
        for (model, settings) in table {
            let toml::Value::Table(settings) = settings else {
                return Err(format!("[models.\"{model}\"] must be a table of settings"));
            };
            let load = load_from_toml(model, settings)?;
            if model == "*" {
                loads.every = load;
            } else if model.trim().is_empty() || model.len() > 256 || model.chars().any(char::is_control) {
                return Err(format!("[models.\"{model}\"]: not a model name"));
            } else {
                loads.by_model.insert(model.clone(), load);
            }
        }
        Ok(loads)
    }

    /// Every model with settings, for the startup log.
    pub fn len(&self) -> usize {
        self.by_model.len() + usize::from(!self.every.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn load_from_toml(model: &str, settings: &toml::Table) -> Result<Load, String> {
    let mut load = Load::default();
    for (name, value) in settings {
        let at = || format!("[models.\"{model}\"] {name}");
        if name == "keep_alive" {
            load.keep_alive = Some(keep_alive(value).map_err(|m| format!("{}: {m}", at()))?);
            continue;
        }
        let Some(&(known, boolean)) = RUNNER_OPTIONS.iter().find(|(n, _)| n == name) else {
            let names: Vec<&str> = RUNNER_OPTIONS.iter().map(|(n, _)| *n).collect();
            return Err(format!("{}: unknown setting (keep_alive, {})", at(), names.join(", ")));
        };
        let literal = match (value, boolean) {
            (toml::Value::Boolean(b), true) => b.to_string(),
            (toml::Value::Integer(i), false) if *i >= -1 && *i <= 1 << 24 => i.to_string(),
            (_, true) => return Err(format!("{}: must be true or false", at())),
            (_, false) => return Err(format!("{}: must be a whole number", at())),
        };
        load.options.push((known, literal));
    }
    load.options.sort_by_key(|(n, _)| RUNNER_OPTIONS.iter().position(|(k, _)| k == n));
    Ok(load)
}

/// A `keep_alive` as Ollama reads it: seconds (negative: forever), or a Go
/// duration such as `"30m"`, `"1h30m"`, `"-1m"` (negative: forever).
fn keep_alive(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::String(s) if is_go_duration(s) => {
            let mut out = Vec::new();
            crate::json::json_string(&mut out, s);
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        _ => Err("must be seconds (-1: forever) or a duration such as \"30m\" or \"2h\"".into()),
    }
}

/// Whether `s` parses as a Go duration, as Ollama reads a `keep_alive`
/// string: `300ms`, `1.5h`, `2h45m`, with an optional sign; a bare number
/// only when it is 0.
pub fn is_go_duration(s: &str) -> bool {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    if body == "0" {
        return true;
    }
    if body.is_empty() {
        return false;
    }
    let mut rest = body;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if digits == 0 || rest[..digits].parse::<f64>().is_err() {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .into_iter()
            .find(|u| rest.starts_with(u) && !(*u == "m" && rest.starts_with("ms")));
        let Some(unit) = unit else { return false };
        rest = &rest[unit.len()..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(text: &str) -> Result<Loads, String> {
        let table: toml::Table = text.parse().unwrap();
        Loads::from_toml(table["models"].as_table().unwrap())
    }

    #[test]
    fn settings_are_found_by_served_model_with_a_default_for_every_other() {
        let l = loads(
            r#"
            [models."qwen3:8b"]
            keep_alive = "2h"
            num_ctx = 32768
            use_mmap = false
            [models.llama3]
            keep_alive = -1
            [models."*"]
            keep_alive = "10m"
            "#,
        )
        .unwrap();
        let q = l.for_model("qwen3:8b");
        assert_eq!(q.keep_alive.as_deref(), Some("\"2h\""));
        assert_eq!(q.options, vec![("num_ctx", "32768".to_owned()), ("use_mmap", "false".to_owned())]);
        assert_eq!(l.for_model("llama3:latest").keep_alive.as_deref(), Some("-1"));
        assert_eq!(l.for_model("mistral").keep_alive.as_deref(), Some("\"10m\""));
        assert!(Loads::default().for_model("x").is_empty());
    }

    #[test]
    fn bad_settings_name_the_model_and_the_setting() {
        assert!(loads("[models.m]\nnum_ctxx = 1").unwrap_err().contains("[models.\"m\"] num_ctxx"));
        assert!(loads("[models.m]\nnum_ctx = \"big\"").unwrap_err().contains("whole number"));
        assert!(loads("[models.m]\nuse_mmap = 1").unwrap_err().contains("true or false"));
        assert!(loads("[models.m]\nkeep_alive = \"soon\"").unwrap_err().contains("keep_alive"));
        assert!(loads("[models]\nm = 3").unwrap_err().contains("must be a table"));
    }

    #[test]
    fn go_durations() {
        for ok in ["5m", "1h30m", "-1m", "300ms", "1.5h", "0", "2h45m10s", "1µs"] {
            assert!(is_go_duration(ok), "{ok}");
        }
        for bad in ["", "m", "5 m", "5x", "h1", "--1m", "1e400", "-1", "10"] {
            assert!(!is_go_duration(bad), "{bad}");
        }
    }

    #[test]
    fn runner_options_are_told_from_sampling_ones() {
        for n in ["num_ctx", "num_gpu", "use_mmap", "num_batch", "main_gpu", "num_thread", "use_mlock", "numa"] {
            assert!(is_runner_option(n), "{n}");
        }
        for n in ["num_predict", "temperature", "top_k", "stop", "seed", "num_keep"] {
            assert!(!is_runner_option(n), "{n}");
        }
    }
}

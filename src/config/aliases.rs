//! Model aliases: names clients ask for, mapped to the models that serve them.
//!
//! An operator maps a name a client is configured with (`gpt-4o`) to a local
//! model (`llama3:latest`) in the `[aliases]` table of the config file. The
//! request keeps the requested name in everything the client sees (the
//! response's `model`, the usage record); the upstream gets the target.
//! Aliases are listed by `GET /v1/models`, and a key's model allowlist may
//! name either side.
//!
//! An alias ending in `*` is a pattern: `"claude-*" = "qwen3-coder:30b"`
//! serves every name that starts with `claude-` (the names agents such as
//! Claude Code ask for change with every release). An exact alias wins over
//! a pattern, and a longer pattern over a shorter one. Since a pattern
//! matches names without end, requests through one are recorded under the
//! pattern (in usage and metrics), never under each name a client makes up.

use std::collections::BTreeMap;

/// Longest alias or target name, in bytes: a usage record's store key holds
/// both (with the key id and the day) and must stay under LMDB's 511 bytes.
pub const MAX_ALIAS_NAME: usize = 200;

/// The alias table, fixed at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases {
    map: BTreeMap<String, String>,
    /// Patterns as (prefix, pattern, target), longest prefix first.
    patterns: Vec<(String, String, String)>,
}

impl Aliases {
    /// Builds the table; an alias naming another alias, or itself, is an error
    /// (resolution is one step, so a chain would silently serve the wrong model).
    pub fn new(map: BTreeMap<String, String>) -> Result<Self, String> {
        for (alias, target) in &map {
            if alias.trim().is_empty() || target.trim().is_empty() {
                return Err(format!("alias '{alias}' = '{target}': names must not be empty"));
            }
            // Both names go into usage records' store keys together.
            for name in [alias, target] {
                if name.len() > MAX_ALIAS_NAME || name.chars().any(char::is_control) {
                    return Err(format!(
                        "alias '{alias}' = '{target}': names must be at most {MAX_ALIAS_NAME} bytes, without control characters"
                    ));
                }
            }
            if target.ends_with('*') {
                return Err(format!("alias '{alias}' = '{target}': a target must be a model, not a pattern"));
            }
            if alias.trim() == "*" {
                return Err(format!("alias '{alias}': a pattern needs a prefix before its '*'"));
            }
        }
        let (patterns, exact): (BTreeMap<_, _>, BTreeMap<_, _>) = map.into_iter().partition(|(a, _)| a.ends_with('*'));
        let mut patterns: Vec<(String, String, String)> =
            patterns.into_iter().map(|(a, t)| (a[..a.len() - 1].to_owned(), a, t)).collect();
        patterns.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let this = Self { map: exact, patterns };
        for (alias, target) in this.map.iter().chain(this.patterns.iter().map(|(_, p, t)| (p, t))) {
            if this.map.contains_key(target) || this.pattern_for(target).is_some() {
                return Err(format!("alias '{alias}' points at '{target}', which is itself an alias"));
            }
        }
        Ok(this)
    }

    /// The model that serves `requested`: its exact alias's target, else the
    /// longest matching pattern's, else the name itself.
    pub fn resolve<'a>(&'a self, requested: &'a str) -> &'a str {
        if let Some(t) = self.map.get(requested) {
            return t;
        }
        self.pattern_for(requested).map_or(requested, |(_, t)| t)
    }

    /// The pattern (`claude-*`) and target that serve `requested`, when no exact alias does.
    pub fn pattern_for(&self, requested: &str) -> Option<(&str, &str)> {
        if self.map.contains_key(requested) {
            return None;
        }
        self.patterns
            .iter()
            .find(|(prefix, _, _)| requested.starts_with(prefix.as_str()))
            .map(|(_, p, t)| (p.as_str(), t.as_str()))
    }

    /// Whether `name` is one of the exact aliases.
    pub fn is_alias(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Every exact alias and its target, in name order (patterns are not models to list).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(a, t)| (a.as_str(), t.as_str()))
    }

    /// Every pattern and its target, longest prefix first.
    pub fn patterns(&self) -> impl Iterator<Item = (&str, &str)> {
        self.patterns.iter().map(|(_, p, t)| (p.as_str(), t.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.patterns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_serve_names_by_prefix_and_exact_aliases_win() {
        let a = Aliases::new(BTreeMap::from([
            ("claude-*".to_owned(), "qwen3-coder:30b".to_owned()),
            ("claude-haiku-*".to_owned(), "qwen3:4b".to_owned()),
            ("claude-exact".to_owned(), "llama3:latest".to_owned()),
        ]))
        .unwrap();
        assert_eq!(a.resolve("claude-sonnet-4-5-20250929"), "qwen3-coder:30b");
        assert_eq!(a.resolve("claude-haiku-4-5-20251001"), "qwen3:4b");
        assert_eq!(a.resolve("claude-exact"), "llama3:latest");
        assert_eq!(a.resolve("gpt-4o"), "gpt-4o");
        assert_eq!(a.pattern_for("claude-opus-4"), Some(("claude-*", "qwen3-coder:30b")));
        assert_eq!(a.pattern_for("claude-exact"), None);
        assert!(!a.is_alias("claude-opus-4"));
        assert_eq!(a.iter().count(), 1);
        for bad in [("*", "m"), ("a", "b*"), ("x-*", "x-1")] {
            assert!(Aliases::new(BTreeMap::from([(bad.0.to_owned(), bad.1.to_owned())])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolves_one_step_and_refuses_chains() {
        let a = Aliases::new(BTreeMap::from([("gpt-4o".to_owned(), "llama3:latest".to_owned())])).unwrap();
        assert_eq!(a.resolve("gpt-4o"), "llama3:latest");
        assert_eq!(a.resolve("qwen3:8b"), "qwen3:8b");
        let chain = BTreeMap::from([("a".to_owned(), "b".to_owned()), ("b".to_owned(), "c".to_owned())]);
        assert!(Aliases::new(chain).unwrap_err().contains("itself an alias"));
        assert!(Aliases::new(BTreeMap::from([("x".to_owned(), String::new())])).is_err());
        assert!(Aliases::new(BTreeMap::from([("x".to_owned(), "m".repeat(201))])).is_err());
        assert!(Aliases::new(BTreeMap::from([("a\tb".to_owned(), "m".to_owned())])).is_err());
    }
}

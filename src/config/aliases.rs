//! Model aliases: names clients ask for, mapped to the models that serve them.
//!
//! An operator maps a name a client is configured with (`gpt-4o`) to a local
//! model (`llama3:latest`) in the `[aliases]` table of the config file. The
//! request keeps the requested name in everything the client sees (the
//! response's `model`, the usage record); the upstream gets the target.
//! Aliases are listed by `GET /v1/models`, and a key's model allowlist may
//! name either side.

use std::collections::BTreeMap;

/// Longest alias or target name, in bytes: a usage record's store key holds
/// both (with the key id and the day) and must stay under LMDB's 511 bytes.
pub const MAX_ALIAS_NAME: usize = 200;

/// The alias table, fixed at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases {
    map: BTreeMap<String, String>,
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
            if map.contains_key(target) {
                return Err(format!("alias '{alias}' points at '{target}', which is itself an alias"));
            }
        }
        Ok(Self { map })
    }

    /// The model that serves `requested`: its target, or the name itself.
    pub fn resolve<'a>(&'a self, requested: &'a str) -> &'a str {
        self.map.get(requested).map(String::as_str).unwrap_or(requested)
    }

    /// Whether `name` is one of the aliases.
    pub fn is_alias(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Every alias and its target, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(a, t)| (a.as_str(), t.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

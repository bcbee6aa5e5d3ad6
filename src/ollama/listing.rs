//! Ollama's listings (`/api/tags`, `/api/ps`) as one host would give them:
//! the `models` of every host that answered, merged (one entry per name,
//! the first host's), narrowed to what the key may use, with each alias
//! listed as its own entry (its target's details under the alias's name).

use serde_json::{Value, json};

use crate::error::ApiError;

/// Merges the `models` arrays of `bodies` (each a host's reply) into `out`.
/// `visible` says whether the key may see a model (by its name, and whether
/// the host lists it as a remote, cloud model); `aliases` are
/// `(alias, target)` pairs, listed when the key may see them and a host
/// lists their target.
pub fn merge(
    bodies: &[Vec<u8>],
    visible: &dyn Fn(&str, bool) -> bool,
    aliases: &[(&str, &str)],
    out: &mut Vec<u8>,
) -> Result<(), ApiError> {
    let mut models: Vec<Value> = Vec::new();
    for body in bodies {
        let v: Value = serde_json::from_slice(body)
            .map_err(|_| ApiError::upstream(502, "The model server sent a listing that is not valid JSON.".into()))?;
        for m in v["models"].as_array().into_iter().flatten() {
            let name = name_of(m);
            if !models.iter().any(|x| name_of(x) == name) {
                models.push(m.clone());
            }
        }
    }
    let mut listed: Vec<Value> = models.iter().filter(|m| visible(name_of(m), is_remote(m))).cloned().collect();
    for (alias, target) in aliases {
        if listed.iter().any(|m| name_of(m) == *alias) {
            continue;
        }
        if let Some(t) = models.iter().find(|m| crate::store::keys::same_model(name_of(m), target))
            && visible(alias, is_remote(t))
        {
            let mut entry = t.clone();
            entry["name"] = json!(alias);
            entry["model"] = json!(alias);
            listed.push(entry);
        }
    }
    out.clear();
    let _ = serde_json::to_writer(&mut *out, &json!({ "models": listed }));
    Ok(())
}

/// Whether a listed model runs on another host (a cloud model).
fn is_remote(m: &Value) -> bool {
    ["remote_host", "remote_model"].iter().any(|k| m[k].as_str().is_some_and(|r| !r.trim().is_empty()))
}

fn name_of(m: &Value) -> &str {
    m["name"].as_str().or(m["model"].as_str()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_merge_a_key_sees_its_models_and_aliases_are_listed() {
        let a = br#"{"models":[{"name":"llama3:latest","model":"llama3:latest","size":1},{"name":"qwen3:8b","model":"qwen3:8b","size":2}]}"#.to_vec();
        let b = br#"{"models":[{"name":"llama3:latest","model":"llama3:latest","size":9},{"name":"phi4:latest","model":"phi4:latest","size":3}]}"#.to_vec();
        let mut out = Vec::new();
        let visible = |n: &str, _remote: bool| n != "qwen3:8b";
        merge(&[a, b], &visible, &[("gpt-4o", "llama3")], &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let names: Vec<&str> = v["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["llama3:latest", "phi4:latest", "gpt-4o"]);
        assert_eq!(v["models"][0]["size"], 1, "the first host's entry");
        assert_eq!(v["models"][2]["size"], 1, "an alias has its target's details");
    }
}

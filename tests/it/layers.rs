//! The layering rules of ARCHITECTURE.md, kept by reading the source: every
//! path a module's code names into the crate (`crate::…`, or `super::…` that
//! leads out of its file) must lead to its own top-level module or to a
//! layer below it, and no file may reach itself through other files (no
//! import circle). Test modules inside the files are read too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first; a module may use only its own layer and those below.
const LAYERS: &[&[&str]] = &[
    &["clock", "histogram"],
    &["ids"],
    &["log"],
    &["error"],
    &["json"],
    &["config", "http"],
    &["store"],
    &["cluster"],
    &["upstream"],
    &["openai", "anthropic", "responses", "ollama"],
    &["accounting", "policy"],
    &["api"],
    &["server"],
    &["cli"],
    &["fuzzing"],
];

/// Modules of one layer that must not know each other either: the fronts
/// (each client protocol stands alone on the native side), and policy and
/// accounting.
const INDEPENDENT: &[&[&str]] = &[&["openai", "anthropic", "responses", "ollama"], &["accounting", "policy"]];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// A source file as a module path (`src/api/chat.rs` → `api::chat`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The file that defines the deepest module along `path` (the rest are items).
fn file_for(src: &Path, path: &[String]) -> Option<PathBuf> {
    let mut dir = src.to_path_buf();
    let mut found = None;
    for seg in path {
        let file = dir.join(format!("{seg}.rs"));
        let module = dir.join(seg).join("mod.rs");
        if file.exists() {
            found = Some(file);
        } else if module.exists() {
            found = Some(module);
        } else {
            break;
        }
        dir = dir.join(seg);
    }
    found
}

/// Every crate path a file's code names: `(path segments, line number)`.
fn paths_in(text: &str, module: &[String]) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    // Inside an inline module (`mod tests {`), `super` is the file's own module.
    let mut inline = false;
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        if (code.starts_with("mod ") || code.starts_with("pub mod ")) && code.trim_end().ends_with('{') {
            inline = true;
        }
        for (prefix, from_crate) in [("crate::", true), ("super::", false)] {
            let mut rest = code;
            while let Some(i) = rest.find(prefix) {
                let before = rest[..i].chars().last();
                let tail = &rest[i + prefix.len()..];
                rest = tail;
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let segs: Vec<String> = tail
                    .split("::")
                    .map(|s| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
                    .take_while(|s| !s.is_empty())
                    .collect();
                let full = if from_crate {
                    segs
                } else if inline {
                    continue;
                } else {
                    let mut parent = module[..module.len().saturating_sub(1)].to_vec();
                    parent.extend(segs);
                    parent
                };
                if !full.is_empty() {
                    out.push((full, n + 1));
                }
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "bin") {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The violations in the tree under `src`: upward imports and import circles.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| !matches!(f.strip_prefix(src).unwrap().to_str(), Some("lib.rs" | "main.rs")));
    let mut found = Vec::new();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        let Some(top) = module.first().cloned() else { continue };
        let Some(own) = layer_of(&top) else {
            found.push(format!(
                "{}: module '{top}' is in no layer (add it to ARCHITECTURE.md and here)",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (path, line) in paths_in(&text, &module) {
            let Some(dst) = layer_of(&path[0]) else { continue };
            if dst > own {
                found.push(format!(
                    "{}:{line}: '{top}' (layer {own}) uses '{}' (layer {dst}), a layer above it",
                    file.display(),
                    path.join("::")
                ));
            }
            if path[0] != top && INDEPENDENT.iter().any(|g| g.contains(&top.as_str()) && g.contains(&path[0].as_str()))
            {
                found.push(format!(
                    "{}:{line}: '{top}' uses '{}', a sibling it must not know",
                    file.display(),
                    path.join("::")
                ));
            }
            if let Some(target) = file_for(src, &path)
                && &target != file
            {
                edges.entry(file.clone()).or_default().insert(target);
            }
        }
    }
    // Circles between files: a depth-first walk that meets a file on its own path.
    fn walk(
        f: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
        found: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|s| s == f) {
            let circle: Vec<String> = stack[i..].iter().chain([f]).map(|p| p.display().to_string()).collect();
            found.push(format!("import circle: {}", circle.join(" → ")));
            return;
        }
        if !done.insert(f.clone()) {
            return;
        }
        stack.push(f.clone());
        for next in edges.get(f).into_iter().flatten() {
            walk(next, edges, stack, done, found);
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for f in edges.keys() {
        walk(f, &edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn every_module_uses_only_its_own_layer_and_those_below_and_no_imports_go_in_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

/// `lib.rs` declares the modules in layer order, lowest first, and none outside a layer.
#[test]
fn lib_lists_the_modules_in_layer_order() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|rest| rest.split(';').next().unwrap_or(rest).trim())
        .collect();
    assert_eq!(modules.len(), LAYERS.iter().map(|l| l.len()).sum::<usize>(), "{modules:?}");
    let layers: Vec<usize> = modules.iter().map(|m| layer_of(m).unwrap_or_else(|| panic!("{m} in no layer"))).collect();
    assert!(layers.windows(2).all(|w| w[0] <= w[1]), "lib.rs out of layer order: {modules:?}");
}

#[test]
fn the_check_sees_an_upward_import_and_a_circle() {
    let dir = std::env::temp_dir().join(format!("ai-gateway-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("store")).unwrap();
    std::fs::create_dir_all(dir.join("api")).unwrap();
    std::fs::write(dir.join("store/mod.rs"), "pub mod keys;\n").unwrap();
    std::fs::write(dir.join("store/keys.rs"), "use crate::api::reply::Reply;\nuse super::usage::Rollup;\n").unwrap();
    std::fs::write(dir.join("store/usage.rs"), "use super::keys::KeyRecord;\n").unwrap();
    std::fs::write(dir.join("api/mod.rs"), "pub mod reply;\n").unwrap();
    std::fs::write(dir.join("api/reply.rs"), "// use crate::server::Conn; (a comment is not an import)\n").unwrap();
    std::fs::create_dir_all(dir.join("anthropic")).unwrap();
    std::fs::write(dir.join("anthropic/mod.rs"), "use crate::openai::write::usage;\n").unwrap();
    let found = violations(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(found.iter().any(|v| v.contains("'store' (layer 6) uses 'api::reply::Reply'")), "{found:?}");
    assert!(found.iter().any(|v| v.starts_with("import circle:") && v.contains("usage.rs")), "{found:?}");
    assert!(found.iter().any(|v| v.contains("'anthropic' uses 'openai::write::usage', a sibling")), "{found:?}");
    assert_eq!(found.len(), 3, "{found:?}");
}

//! The module graph: no module imports in a circle, and the engine never names the host. Reads
//! every `crate::` / `super::` path in the sources. A module's use of its own parent (a trait
//! in `world/mod.rs` that `world/builtin.rs` implements) is Rust's usual nesting, not an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// A file's module path below its crate root: `world/builtin.rs` is `world::builtin`.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().to_string())
        .collect();
    if parts
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        parts.pop();
    }
    parts
}

/// The modules `text` refers to, resolved to module paths (longest known prefix).
fn references(
    module: &[String],
    text: &str,
    known: &BTreeSet<Vec<String>>,
) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (start, _) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        let path: String = code[start..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut parts: Vec<String> = path
            .split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let mut base: Vec<String> = if parts[0] == "crate" {
            vec![]
        } else {
            module.to_vec()
        };
        while parts.first().is_some_and(|p| p == "super" || p == "crate") {
            if parts.remove(0) == "super" {
                base.pop();
            }
        }
        base.extend(parts);
        while !base.is_empty() && !known.contains(&base) {
            base.pop();
        }
        if !base.is_empty() && base != module && !module.starts_with(&base) {
            out.insert(base);
        }
    }
    out
}

fn graph(root: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = vec![];
    rust_files(root, &mut files);
    let known: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(root, f)).collect();
    files
        .iter()
        .map(|f| {
            let m = module_of(root, f);
            let refs = references(&m, &std::fs::read_to_string(f).unwrap(), &known);
            (m, refs)
        })
        .collect()
}

/// A cycle through `start`, if any, as the modules along it.
fn cycle(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        m: &Vec<String>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            return Some(stack[i..].iter().chain([m]).map(|p| p.join("::")).collect());
        }
        if !done.insert(m.clone()) {
            return None;
        }
        stack.push(m.clone());
        for next in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, next, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|m| visit(g, m, &mut vec![], &mut done))
}

#[test]
fn no_module_imports_in_a_circle() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for root in [here.join("crates/engine/src"), here.join("src/host")] {
        let g = graph(&root);
        assert!(g.len() > 5, "{} has modules", root.display());
        if let Some(c) = cycle(&g) {
            panic!("{}: import cycle {}", root.display(), c.join(" -> "));
        }
    }
}

#[test]
fn the_engine_never_names_the_host_or_its_crates() {
    let mut files = vec![];
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/engine/src"),
        &mut files,
    );
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for name in [
            "rhai::",
            "use rhai",
            "rustyline",
            "clap::",
            "use clap",
            "host::",
        ] {
            let mut code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
            assert!(
                !code.any(|l| l.contains(name)),
                "{} names {name}",
                f.display()
            );
        }
    }
}

//! `metaapo script NAME --help`: a script's parameters, as its `params(#{...})` states their
//! defaults, with the descriptions its header's `Parameters:` block gives them.

use rhai::{Dynamic, Map};
use std::collections::HashMap;

/// The header's descriptions by parameter name. An entry is `//   names  description`, its
/// names separated by commas and from the description by two or more spaces; deeper-indented
/// lines continue it.
fn descriptions(text: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    let mut current: Vec<String> = vec![];
    let mut inside = false;
    for line in text.lines() {
        let Some(body) = line.strip_prefix("//") else {
            if inside {
                break;
            }
            continue;
        };
        if body.trim() == "Parameters:" {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        let indent = body.len() - body.trim_start().len();
        if body.trim().is_empty() || indent < 3 {
            break;
        }
        let entry = body.trim_start();
        match entry.split_once("  ") {
            Some((names, desc)) if indent < 8 => {
                current = names.split(',').map(|n| n.trim().to_string()).collect();
                for n in &current {
                    out.insert(n.clone(), desc.trim().to_string());
                }
            }
            _ => {
                for n in &current {
                    if let Some(d) = out.get_mut(n) {
                        d.push(' ');
                        d.push_str(entry.trim());
                    }
                }
            }
        }
    }
    out
}

fn shown(v: &Dynamic) -> String {
    if v.is_string() {
        format!("{:?}", v.to_string())
    } else {
        v.to_string()
    }
}

/// The parameter list `--help` prints for a script whose `params` got `defaults`.
pub fn render(name: &str, text: &str, defaults: &Map) -> String {
    let about = descriptions(text);
    let rows: Vec<(String, String)> = defaults
        .iter()
        .map(|(k, v)| {
            (
                format!("{k} = {}", shown(v)),
                about.get(k.as_str()).cloned().unwrap_or_default(),
            )
        })
        .collect();
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out =
        format!("{name}: parameters and their defaults (change one with --set KEY=VALUE)\n");
    for (k, d) in rows {
        out.push_str(format!("  {k:width$}  {d}").trim_end());
        out.push('\n');
    }
    out
}

//! Preference pairs and prompt sets, in memory and from TRL-layout JSONL/JSON files: `prompt`,
//! `chosen`, `rejected`, each plain text or a list of `{role, content}` messages.

use super::encode::Text;
use crate::model::template::Message;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub prompt: Text,
    pub chosen: Text,
    pub rejected: Text,
}

impl Text {
    /// Plain text as is; a conversation as `role: content` lines (for logs and summaries).
    pub fn display(&self) -> String {
        match self {
            Text::Plain(s) => s.clone(),
            Text::Chat(m) => m
                .iter()
                .map(|m| format!("{}: {}", m.role, m.content))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// The roles of TRL's conversational format, which chat templates know.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

fn text_field(v: &Value, field: &str) -> Result<Text> {
    match v.get(field) {
        Some(Value::String(s)) => Ok(Text::Plain(s.clone())),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = m.get("role").and_then(Value::as_str);
                let content = m.get("content").and_then(Value::as_str);
                match (role, content) {
                    (Some(r), Some(c)) if ROLES.contains(&r) => Ok(Message::new(r, c)),
                    (Some(r), Some(_)) => bail!(
                        "field `{field}[{i}].role`: {r:?} is not a chat role (one of {})",
                        ROLES.join(", ")
                    ),
                    _ => bail!("`{field}[{i}]` needs string fields `role` and `content`"),
                }
            })
            .collect::<Result<Vec<_>>>()
            .map(Text::Chat),
        Some(_) => bail!("`{field}` must be a string or a list of {{role, content}} messages"),
        None => bail!("missing field `{field}`"),
    }
}

/// Records of a `.jsonl` file (one object per line, blank lines skipped) or a `.json` array,
/// each with the 1-based line it starts on (0 for a JSON array).
fn records(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = crate::textfile::read_text(path)?;
    if path.extension().is_some_and(|e| e == "json") {
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", path.display()))?;
        let Value::Array(items) = v else {
            bail!("{}: expected a JSON array of records", path.display());
        };
        return Ok(items.into_iter().map(|v| (0, v)).collect());
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))
        })
        .collect()
}

fn at(path: &Path, line: usize, index: usize) -> String {
    if line > 0 {
        format!("{}:{line}", path.display())
    } else {
        format!("{} record {index}", path.display())
    }
}

/// The `prompt` field, which must say something: an empty string or message list is an error.
fn prompt_field(v: &Value) -> Result<Text> {
    let prompt = text_field(v, "prompt")?;
    let empty = match &prompt {
        Text::Plain(s) => s.trim().is_empty(),
        Text::Chat(m) => m.is_empty(),
    };
    if empty {
        bail!("field `prompt` is empty");
    }
    Ok(prompt)
}

/// The pairs of a file, each with where it is (`file:line`, or `file record i` in a JSON array).
pub fn located_pairs(path: &Path) -> Result<Vec<(String, Pair)>> {
    records(path)?
        .into_iter()
        .enumerate()
        .map(|(i, (line, v))| {
            let here = at(path, line, i);
            let field = |f| text_field(&v, f).with_context(|| here.clone());
            let pair = Pair {
                prompt: prompt_field(&v).with_context(|| here.clone())?,
                chosen: field("chosen")?,
                rejected: field("rejected")?,
            };
            Ok((here, pair))
        })
        .collect()
}

pub fn load_pairs(path: &Path) -> Result<Vec<Pair>> {
    Ok(located_pairs(path)?.into_iter().map(|(_, p)| p).collect())
}

/// The prompts of a file, each with where it is, as [`located_pairs`].
pub fn located_prompts(path: &Path) -> Result<Vec<(String, Text)>> {
    records(path)?
        .into_iter()
        .enumerate()
        .map(|(i, (line, v))| {
            let here = at(path, line, i);
            Ok((here.clone(), prompt_field(&v).with_context(|| here)?))
        })
        .collect()
}

pub fn load_prompts(path: &Path) -> Result<Vec<Text>> {
    Ok(located_prompts(path)?.into_iter().map(|(_, t)| t).collect())
}

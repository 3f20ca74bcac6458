//! Reading the user's text files (data, configs, scripts) as they are written: a UTF-8
//! byte-order mark is skipped, and bytes that are not UTF-8 are an error naming the file, the
//! line and the byte offset. JSON errors name the field.

use anyhow::{bail, Context, Result};
use std::path::Path;

const BOM: &str = "\u{feff}";

/// `bytes` as text; `origin` names them in errors (a path, usually).
pub fn decode(bytes: Vec<u8>, origin: &str) -> Result<String> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(match text.strip_prefix(BOM) {
            Some(rest) => rest.to_string(),
            None => text,
        }),
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let line = 1 + bytes[..offset].iter().filter(|&&b| b == b'\n').count();
            let column = offset
                - bytes[..offset]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)
                + 1;
            bail!(
                "{origin}:{line}:{column}: byte 0x{:02x} at byte offset {offset} is not UTF-8 \
                 (save the file as UTF-8)",
                bytes[offset]
            )
        }
    }
}

/// A whole text file; see [`decode`].
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode(bytes, &path.display().to_string())
}

/// `value` as a `T`; an error names the field that failed (`hidden_size`, `rope_scaling.factor`).
pub fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            anyhow::anyhow!("{inner}")
        } else {
            anyhow::anyhow!("field `{path}`: {inner}")
        }
    })
}

/// A JSON file as a `T`: errors name the file, and the line or the field.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    from_value(value).with_context(|| path.display().to_string())
}

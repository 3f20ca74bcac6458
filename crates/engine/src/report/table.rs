//! Result tables as files: CSV (for spreadsheets and pandas) and Markdown (for READMEs).

use crate::atomic;
use anyhow::{bail, Result};
use comfy_table::{presets::ASCII_MARKDOWN, Table};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_f64() => {
            let x = format!("{:.4}", n.as_f64().unwrap_or(f64::NAN));
            x.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        Some(other) => other.to_string(),
    }
}

/// Writes `<dir>/<name>.csv` and `<dir>/<name>.md` atomically, one column per `columns` entry
/// (a missing value is an empty cell), and returns their paths.
pub fn write(
    dir: &Path,
    name: &str,
    cols: &[String],
    rows: &[Map<String, Value>],
) -> Result<(PathBuf, PathBuf)> {
    if rows.is_empty() || cols.is_empty() {
        bail!("a table needs at least one row and one column");
    }
    let mut csv = csv::Writer::from_writer(vec![]);
    csv.write_record(cols)?;
    for row in rows {
        csv.write_record(cols.iter().map(|c| cell(row.get(c))))?;
    }
    let mut md = Table::new();
    md.load_preset(ASCII_MARKDOWN).set_header(cols);
    for row in rows {
        md.add_row(cols.iter().map(|c| cell(row.get(c))));
    }
    let (csv_path, md_path) = (
        dir.join(format!("{name}.csv")),
        dir.join(format!("{name}.md")),
    );
    atomic::write_file(&csv_path, &csv.into_inner()?)?;
    atomic::write_file(&md_path, format!("{md}\n").as_bytes())?;
    Ok((csv_path, md_path))
}

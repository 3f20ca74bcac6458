//! A run's records: `metrics.jsonl` (one object per logged step, TRL metric names),
//! `params.json`, `run.log` (everything printed), `summary.json`, a progress bar and the final
//! summary table. Every line is flushed as written, so an interrupted run loses nothing.

pub mod plot;
pub mod stats;
pub mod table;

use crate::atomic;
use anyhow::{Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const METRICS: &str = "metrics.jsonl";

/// The records of a `metrics.jsonl`. A last line without its newline is what a killed run
/// leaves: it is skipped, and the warning returned says so. Any other bad line is an error
/// naming the file and line.
pub fn read_metrics(path: &Path) -> Result<(Vec<Value>, Option<String>)> {
    let text = crate::textfile::read_text(path)?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => records.push(v),
            Err(_) if i + 1 == lines.len() && !line.ends_with('\n') => {
                let warning = format!(
                    "warning: {}:{}: skipped a torn last line (the run was killed while writing it)",
                    path.display(),
                    i + 1
                );
                return Ok((records, Some(warning)));
            }
            Err(e) => anyhow::bail!("{}:{}: invalid JSON: {e}", path.display(), i + 1),
        }
    }
    Ok((records, None))
}

pub struct Report {
    dir: PathBuf,
    metrics: File,
    log: File,
    step: u64,
    bar: Option<ProgressBar>,
    first: Map<String, Value>,
    last: Map<String, Value>,
    summary: Map<String, Value>,
    started: Instant,
}

impl Report {
    /// Creates `dir` (it may exist, but must not hold another run's metrics), and removes the
    /// temporary files and folders that a killed write left in it and its checkpoints.
    pub fn open(dir: &Path) -> Result<Self> {
        if dir.join(METRICS).exists() {
            anyhow::bail!(
                "{} already holds a run (metrics.jsonl); choose another --out",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for name in ["summary.json", "params.json"] {
            atomic::clean_stale(dir, Some(name));
        }
        atomic::clean_stale(&dir.join("checkpoints"), None);
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .with_context(|| format!("cannot create {}", dir.join(name).display()))
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            metrics: open(METRICS)?,
            log: open("run.log")?,
            step: 0,
            bar: None,
            first: Map::new(),
            last: Map::new(),
            summary: Map::new(),
            started: Instant::now(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one metrics line. `step` counts logged lines unless the record carries its own.
    pub fn log(&mut self, mut record: Map<String, Value>) -> Result<()> {
        self.step = match record.get("step").and_then(Value::as_u64) {
            Some(s) => s,
            None => self.step + 1,
        };
        record.insert("step".into(), self.step.into());
        // One write per line, so a kill leaves at most a torn last line (see `read_metrics`).
        let mut line = Value::Object(record.clone()).to_string();
        line.push('\n');
        self.metrics
            .write_all(line.as_bytes())
            .with_context(|| format!("cannot write {}", self.dir.join(METRICS).display()))?;
        for (k, v) in &record {
            self.first.entry(k.clone()).or_insert_with(|| v.clone());
            self.last.insert(k.clone(), v.clone());
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
            let show = |k: &str| record.get(k).and_then(Value::as_f64);
            let mut msg = vec![];
            for (key, label) in [("loss", "loss"), ("rewards/margins", "margin")] {
                if let Some(v) = show(key) {
                    msg.push(format!("{label} {v:.4}"));
                }
            }
            if !msg.is_empty() {
                bar.set_message(msg.join("  "));
            }
        }
        Ok(())
    }

    /// Shows a progress bar of `total` logged steps (replacing any earlier one).
    pub fn progress(&mut self, total: u64, label: &str) {
        if let Some(old) = self.bar.take() {
            old.finish_and_clear();
        }
        let bar = ProgressBar::new(total).with_prefix(label.to_string());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        self.bar = Some(bar);
    }

    /// Prints above the progress bar and appends to `run.log`.
    pub fn print(&mut self, line: &str) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => println!("{line}"),
        }
        let _ = writeln!(self.log, "{line}");
    }

    pub fn set_summary(&mut self, values: Map<String, Value>) {
        self.summary.extend(values);
    }

    pub fn write_json(&self, name: &str, value: &Value) -> Result<()> {
        atomic::write_file(
            &self.dir.join(name),
            serde_json::to_string_pretty(value)?.as_bytes(),
        )
    }

    /// Writes `summary.json` and returns the summary table: each metric's first and last value.
    pub fn finish(&mut self, status: &str) -> Result<String> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let mut summary = self.summary.clone();
        summary.insert("status".into(), status.into());
        summary.insert("steps".into(), self.step.into());
        summary.insert(
            "seconds".into(),
            ((self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0).into(),
        );
        summary.insert("last".into(), Value::Object(self.last.clone()));
        self.write_json("summary.json", &Value::Object(summary))?;
        // A run that logged no numbers (a comparison of sub-runs) has no table to show.
        if !self.last.values().any(|v| v.is_number()) {
            return Ok(format!("run directory: {}", self.dir.display()));
        }
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(vec!["metric", "first", "last"]);
        for (k, last) in &self.last {
            if k == "step" || !last.is_number() {
                continue;
            }
            table.add_row(vec![k.clone(), number(&self.first[k]), number(last)]);
        }
        Ok(format!("{table}\nrun directory: {}", self.dir.display()))
    }
}

fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e12 => format!("{x}"),
        // A learning rate of 1e-5 would read 0.0000 with four decimals.
        Some(x) if x.abs() < 1e-3 => format!("{x:.3e}"),
        Some(x) => format!("{x:.4}"),
        None => v.to_string(),
    }
}

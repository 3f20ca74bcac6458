//! Independent runs in parallel processes: each job is `metaapo script` run by this same
//! executable into a directory of its own, at most `parallel` at a time. A job whose directory
//! already holds a completed run of the same script, seed and settings is reused, so a
//! comparison stopped part-way resumes where it stopped; any other run there is moved aside
//! (never deleted) and the job runs again.

use super::limits::Limits;
use super::resolver::script_stem;
use super::run::interrupted;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One run to make: a script, its seed and `--set` values, and where it goes.
#[derive(Debug, Clone)]
pub struct Job {
    pub script: String,
    pub seed: u64,
    pub set: Vec<(String, String)>,
    pub dir: PathBuf,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran now and completed.
    Completed,
    /// Its directory held a completed run already.
    Reused,
    /// It failed (or was interrupted); the text is its error output, last lines.
    Failed(String),
    /// It never started: an earlier job had failed.
    NotStarted,
}

/// What the child process is started with, beyond the job itself.
#[derive(Debug, Clone)]
pub struct Launch {
    pub device: String,
    pub dtype: String,
    pub matmul: String,
    pub limits: Limits,
    /// Compute threads per process: the machine's cores shared among the parallel jobs, so
    /// they do not oversubscribe it.
    pub threads: usize,
}

/// How many jobs run at once unless the script says: one per core.
pub fn default_parallel() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether `dir` holds a run that completed (its summary.json says so).
fn completed(dir: &Path) -> bool {
    read_json(&dir.join("summary.json")).is_some_and(|v| v["status"] == "completed")
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether a `--set` text and the value `params` recorded for it are the same setting.
fn same_value(text: &str, recorded: &serde_json::Value) -> bool {
    use serde_json::Value;
    match recorded {
        Value::String(s) => s == text,
        Value::Number(n) => text.parse::<f64>().ok() == n.as_f64(),
        Value::Bool(b) => text.parse::<bool>().ok() == Some(*b),
        // Arrays and maps: the same JSON, or the same text without spaces.
        other => {
            serde_json::from_str::<Value>(text).ok().as_ref() == Some(other)
                || text.replace(' ', "") == other.to_string().replace(' ', "")
        }
    }
}

/// Whether the job's folder holds a completed run of this very job: the same script (by name,
/// not content), seed and `--set` values, as its params.json recorded them. A run made with
/// other settings is not this job's result, whatever its folder is called.
fn done(job: &Job) -> bool {
    let dir = &job.dir;
    let Some(record) = read_json(&dir.join("params.json")) else {
        return false;
    };
    completed(dir)
        && record["script"].as_str() == Some(script_stem(&job.script).as_str())
        && record["seed"].as_u64() == Some(job.seed)
        && job
            .set
            .iter()
            .all(|(k, v)| same_value(v, &record["params"][k.as_str()]))
}

/// Moves a run that is not this job's result out of the way, never deleting it:
/// `<dir>.set-aside-<n>`, the first free n.
fn set_aside(dir: &Path) -> Result<PathBuf> {
    let mut n = 1;
    loop {
        let mut name = dir.as_os_str().to_os_string();
        name.push(format!(".set-aside-{n}"));
        let to = PathBuf::from(name);
        if !to.exists() {
            std::fs::rename(dir, &to)
                .with_context(|| format!("moving the earlier run {} aside", dir.display()))?;
            return Ok(to);
        }
        n += 1;
    }
}

fn spawn(job: &Job, launch: &Launch) -> Result<Child> {
    std::fs::create_dir_all(&job.dir)
        .with_context(|| format!("cannot create {}", job.dir.display()))?;
    let exe = std::env::current_exe().context("finding the metaapo executable")?;
    let l = &launch.limits;
    let mut cmd = Command::new(exe);
    cmd.arg("script")
        .arg(&job.script)
        .arg("--seed")
        .arg(job.seed.to_string())
        .arg("--out")
        .arg(&job.dir)
        .arg("--device")
        .arg(&launch.device)
        .arg("--dtype")
        .arg(&launch.dtype)
        .arg("--matmul")
        .arg(&launch.matmul);
    for (flag, value) in [
        ("--max-call-depth", l.max_call_depth),
        ("--max-expr-depth", l.max_expr_depth),
        ("--max-array", l.max_array),
        ("--max-string", l.max_string),
        ("--max-map", l.max_map),
        // A job is one level of sub-runs deeper than its parent.
        ("--max-sub-runs", l.max_sub_runs.saturating_sub(1)),
    ] {
        cmd.arg(flag).arg(value.to_string());
    }
    for (k, v) in &job.set {
        cmd.arg("--set").arg(format!("{k}={v}"));
    }
    let stderr = std::fs::File::create(job.dir.join("stderr.log"))
        .with_context(|| format!("cannot create {}", job.dir.join("stderr.log").display()))?;
    cmd.env("RAYON_NUM_THREADS", launch.threads.max(1).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("starting a metaapo process")
}

/// The last lines of a failed job's error output.
fn failure(job: &Job, status: std::process::ExitStatus) -> String {
    let text = std::fs::read_to_string(job.dir.join("stderr.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("{status}: {tail}")
}

/// Runs `jobs`, at most `parallel` at a time, calling `report(i, outcome, seconds)` as each
/// ends and `note(line)` when an earlier run is moved aside. Returns every outcome in job
/// order. Once a job fails no new one starts (a mistake common to all jobs, such as a misspelt
/// parameter, shows at once), and the running ones finish. After Ctrl-C no new job starts, and
/// the running ones (which receive the same signal) are waited for.
pub fn run_all(
    jobs: &[Job],
    parallel: usize,
    launch: &Launch,
    report: &mut dyn FnMut(usize, &Outcome, f64),
    note: &dyn Fn(&str),
) -> Result<Vec<Outcome>> {
    if parallel == 0 {
        bail!("parallel must be at least 1");
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; jobs.len()];
    let mut running: Vec<(usize, Child, Instant)> = vec![];
    let mut next = 0;
    loop {
        let failed = outcomes
            .iter()
            .any(|o| matches!(o, Some(Outcome::Failed(_))));
        while running.len() < parallel && next < jobs.len() && !interrupted() && !failed {
            let job = &jobs[next];
            if done(job) {
                report(next, &Outcome::Reused, 0.0);
                outcomes[next] = Some(Outcome::Reused);
            } else {
                if job.dir.exists() {
                    let to = set_aside(&job.dir)?;
                    note(&format!(
                        "{} holds an unfinished run or one with other settings: moved to {}",
                        job.dir.display(),
                        to.display()
                    ));
                }
                running.push((next, spawn(job, launch)?, Instant::now()));
            }
            next += 1;
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            match running[i]
                .1
                .try_wait()
                .context("waiting for a metaapo process")?
            {
                Some(status) => {
                    let (index, _, started) = running.swap_remove(i);
                    let outcome = if status.success() && done(&jobs[index]) {
                        Outcome::Completed
                    } else {
                        Outcome::Failed(failure(&jobs[index], status))
                    };
                    report(index, &outcome, started.elapsed().as_secs_f64());
                    outcomes[index] = Some(outcome);
                }
                None => i += 1,
            }
        }
    }
    if interrupted() {
        bail!("interrupted");
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::NotStarted))
        .collect())
}

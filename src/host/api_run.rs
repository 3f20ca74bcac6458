//! run: the script's parameters (`params` with `--set` overrides), its seed and random stream,
//! its directory, and sub-runs of other scripts (`run_script` in this process, `run_scripts` in
//! parallel processes, for comparisons).

use super::jobs::{self, Job, Launch, Outcome};
use super::opts::Opts;
use super::registry::{error, fail, Family, Res};
use super::resolver::{find_script, script_stem};
use super::run::{interrupted, Run, RunOptions};
use super::values::{from_json, to_json};
use crate::report::{read_metrics, METRICS};
use candle_core::DeviceLocation;
use rand::Rng;
use rhai::{Array, Dynamic, Engine, Map};
use serde_json::json;
use std::path::Path;
use std::rc::Rc;

/// Parses `--set key=text` into the type of the parameter's default.
fn parse(key: &str, text: &str, default: &Dynamic) -> Res<Dynamic> {
    let bad = |what: &str| error(format!("--set {key}={text}: expected {what}"));
    if default.is_int() {
        return text
            .parse::<i64>()
            .map(Dynamic::from_int)
            .map_err(|_| bad("an integer"));
    }
    if default.is_float() {
        return text
            .parse::<f64>()
            .map(Dynamic::from_float)
            .map_err(|_| bad("a number"));
    }
    if default.is_bool() {
        return text
            .parse::<bool>()
            .map(Dynamic::from_bool)
            .map_err(|_| bad("true or false"));
    }
    if default.is_string() {
        return Ok(text.to_string().into());
    }
    if default.is_array() {
        return Engine::new_raw()
            .eval_expression::<Array>(text)
            .map(Dynamic::from_array)
            .map_err(|_| bad("an array like [1, 2.5, \"x\"]"));
    }
    Ok(Engine::new_raw()
        .eval_expression::<Dynamic>(text)
        .unwrap_or_else(|_| text.to_string().into()))
}

/// What `params` stops a script with under `--help`, once it has recorded the defaults.
const HELP_STOP: &str = "stopped after params() for --help";

fn params(run: &Run, defaults: Map) -> Res<Map> {
    run.params_read.set(true);
    if run.options.help {
        *run.help_defaults.borrow_mut() = Some(defaults);
        return Err(error(HELP_STOP));
    }
    let mut out = defaults.clone();
    for (key, text) in &run.options.overrides {
        let Some(default) = defaults.get(key.as_str()) else {
            let mut known: Vec<&str> = defaults.keys().map(|k| k.as_str()).collect();
            known.sort();
            return Err(error(format!(
                "unknown parameter `{key}` (--set {key}={text}); this script's parameters are: {}",
                known.join(", ")
            )));
        };
        out.insert(key.as_str().into(), parse(key, text, default)?);
    }
    let record = json!({
        "script": run.options.name,
        "seed": run.options.seed,
        "device": format!("{:?}", run.options.device),
        "dtype": run.options.dtype.as_str(),
        "matmul": run.options.matmul.as_str(),
        "params": to_json(&Dynamic::from_map(out.clone())),
    });
    run.report()
        .and_then(|r| r.write_json("params.json", &record))
        .map_err(fail("params"))?;
    Ok(out)
}

/// Runs a script's text in a fresh host for a run: how a sub-run is executed. The host passes
/// it in, so this family does not depend on the host that registers it.
pub type Runner = fn(Rc<Run>, &str, &str) -> Result<(), String>;

pub fn register(api: &mut Family, run: &Rc<Run>, runner: Runner) {
    let r = run.clone();
    api.func(
        "params",
        "(defaults: Map) -> Map",
        "The script's parameters: defaults with --set overrides applied (unknown keys are an error); writes params.json.",
        move |defaults: Map| params(&r, defaults),
    );
    let r = run.clone();
    api.func("seed", "() -> int", "The run's --seed.", move || {
        r.options.seed as i64
    });
    let r = run.clone();
    api.func(
        "random",
        "() -> float",
        "A uniform draw in [0, 1) from the run's seeded stream.",
        move || r.rng.borrow_mut().random::<f64>(),
    );
    let r = run.clone();
    api.func(
        "run_dir",
        "() -> String",
        "The run directory (created on first use).",
        move || -> Res<String> {
            Ok(r.report()
                .map_err(fail("run_dir"))?
                .dir()
                .display()
                .to_string())
        },
    );
    let r = run.clone();
    api.func(
        "run_script",
        "(script: String, options: Map) -> Map",
        "Runs another script as a sub-run in <run dir>/runs/<name>: options seed (--seed), set (a map of --set values), name (<script>-s<seed>). Returns #{ dir, status, summary, metrics } (metrics: every logged step).",
        move |script: &str, opts: Map| sub_run(&r, runner, script, &opts),
    );
    let r = run.clone();
    api.func(
        "run_scripts",
        "(jobs: Array, options: Map) -> Array",
        "Runs independent sub-runs in parallel processes, each job a map like run_script's options plus `script`; options: parallel (the machine's cores), dir (<run dir>/runs). A job whose directory holds a completed run of the same script, seed and set values is reused; any other run there is moved aside to <name>.set-aside-N; a failed job stops new ones from starting and fails the call once the running ones have ended. Returns run_script's map per job, in order.",
        move |list: Array, opts: Map| sub_runs(&r, list, &opts),
    );
}

/// The `set` option of a sub-run: its parameters as `--set` texts (none when absent).
fn set_values(o: &Opts, what: &str) -> Res<Vec<(String, String)>> {
    let Some(v) = o.get("set") else {
        return Ok(vec![]);
    };
    Ok(v.read_lock::<Map>()
        .ok_or_else(|| error(format!("{what}: `set` must be a map of parameters")))?
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// One `run_scripts` job from its map: the script, seed (the parent's), set values and name.
fn job(parent: &Run, value: &Dynamic, runs: &Path, index: usize) -> Res<(String, Job)> {
    let what = format!("run_scripts job {index}");
    let map = value.read_lock::<Map>().map(|m| m.clone()).ok_or_else(|| {
        error(format!(
            "{what}: expected a map like #{{ script: \"dpo\", seed: 0 }}"
        ))
    })?;
    let o = Opts::new(&what, &map);
    let script = o.string("script", "")?;
    if script.is_empty() {
        return Err(error(format!("{what}: needs a `script`")));
    }
    let seed = o.usize("seed", parent.options.seed as usize)? as u64;
    let set = set_values(&o, &what)?;
    let (name, _) = find_script(&script).map_err(fail("run_scripts"))?;
    let stem = script_stem(&name);
    let label = o.string("name", &format!("{stem}-s{seed}"))?;
    o.finish()?;
    if label.is_empty() || label.contains(['/', '\\']) || label.starts_with('.') {
        return Err(error(format!(
            "{what}: name {label:?} must be a plain folder name"
        )));
    }
    let dir = runs.join(&label);
    Ok((
        label,
        Job {
            script: name,
            seed,
            set,
            dir,
        },
    ))
}

fn sub_runs(parent: &Rc<Run>, list: Array, opts: &Map) -> Res<Array> {
    let o = Opts::new("run_scripts options", opts);
    let parallel = o.usize("parallel", jobs::default_parallel())?;
    let runs = match o.string("dir", "")? {
        d if d.is_empty() => parent.output("runs").map_err(fail("run_scripts"))?,
        d => parent.output(&d).map_err(fail("run_scripts"))?,
    };
    o.finish()?;
    let limit = parent.options.limits.max_sub_runs;
    if parent.options.parents.len() + 1 > limit {
        return Err(error(format!(
            "run_scripts: sub-runs would nest past --max-sub-runs {limit}"
        )));
    }
    let mut labels = vec![];
    let mut list_jobs = vec![];
    for (i, v) in list.iter().enumerate() {
        let (label, job) = job(parent, v, &runs, i)?;
        if labels.contains(&label) {
            return Err(error(format!(
                "run_scripts job {i}: the name {label:?} is taken by an earlier job; give each a `name`"
            )));
        }
        labels.push(label);
        list_jobs.push(job);
    }
    let parallel = parallel.min(list_jobs.len()).max(1);
    let launch = Launch {
        device: match parent.options.device.location() {
            DeviceLocation::Cpu => "cpu".into(),
            DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            DeviceLocation::Metal { .. } => {
                return Err(error("run_scripts: metaapo runs on cpu or cuda only"))
            }
        },
        dtype: parent.options.dtype.as_str().into(),
        matmul: parent.options.matmul.as_str().into(),
        limits: parent.options.limits,
        threads: jobs::default_parallel() / parallel,
    };
    parent.print(&format!(
        "run_scripts: {} jobs, {parallel} at a time, in {}",
        list_jobs.len(),
        runs.display()
    ));
    let mut done = 0;
    let total = list_jobs.len();
    let outcomes = jobs::run_all(
        &list_jobs,
        parallel,
        &launch,
        &mut |i, outcome, secs| {
            done += 1;
            let what = match outcome {
                Outcome::Completed => format!("completed in {secs:.1} s"),
                Outcome::Reused => "completed earlier, reused".into(),
                Outcome::Failed(_) => format!("FAILED after {secs:.1} s"),
                Outcome::NotStarted => "not started".into(),
            };
            parent.print(&format!("[{done}/{total}] {} {what}", labels[i]));
        },
        &|line| parent.print(line),
    )
    .map_err(fail("run_scripts"))?;
    let failed: Vec<String> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Outcome::Failed(e) => Some(format!(
                "{} ({}): {e}",
                labels[i],
                list_jobs[i].dir.display()
            )),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        let skipped = outcomes
            .iter()
            .filter(|o| **o == Outcome::NotStarted)
            .count();
        return Err(error(format!(
            "run_scripts: {} of {total} jobs failed and {skipped} did not start (the completed ones are kept and reused when run again):\n{}",
            failed.len(),
            failed.join("\n")
        )));
    }
    list_jobs
        .iter()
        .zip(&outcomes)
        .map(|(j, o)| {
            let status = if *o == Outcome::Reused {
                "reused"
            } else {
                "completed"
            };
            read_run(parent, &j.dir, status).map(Dynamic::from_map)
        })
        .collect()
}

/// A finished sub-run as scripts see it: #{ dir, status, summary, metrics }.
fn read_run(parent: &Run, dir: &Path, status: &str) -> Res<Map> {
    let read = || -> anyhow::Result<Map> {
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
        let (metrics, warning) = read_metrics(&dir.join(METRICS))?;
        if let Some(w) = warning {
            parent.print(&w);
        }
        let mut m = Map::new();
        m.insert("dir".into(), dir.display().to_string().into());
        m.insert("status".into(), status.into());
        m.insert("summary".into(), from_json(&summary)?);
        m.insert(
            "metrics".into(),
            from_json(&serde_json::Value::Array(metrics))?,
        );
        Ok(m)
    };
    read().map_err(|e| error(format!("reading the run in {}: {e:#}", dir.display())))
}

/// Runs `script` in a fresh host and run of its own (sharing only the worlds already built),
/// so a script can compare other scripts under the same seeds.
fn sub_run(parent: &Rc<Run>, runner: Runner, script: &str, opts: &Map) -> Res<Map> {
    let o = Opts::new("run_script options", opts);
    let seed = o.usize("seed", parent.options.seed as usize)? as u64;
    let set = set_values(&o, "run_script options")?;
    let (name, text) = find_script(script).map_err(fail("run_script"))?;
    let stem = script_stem(&name);
    let label = o.string("name", &format!("{stem}-s{seed}"))?;
    o.finish()?;
    let dir = parent
        .report()
        .map_err(fail("run_script"))?
        .dir()
        .join("runs")
        .join(&label);
    let mut parents = parent.options.parents.clone();
    parents.push(parent.options.name.clone());
    let limit = parent.options.limits.max_sub_runs;
    if parents.len() > limit {
        return Err(error(format!(
            "run_script: sub-runs would nest {} deep ({} -> {stem}), past --max-sub-runs {limit}",
            parents.len(),
            parents.join(" -> ")
        )));
    }
    let child = Run::new(RunOptions {
        name: stem,
        out: Some(dir.clone()),
        seed,
        device: parent.options.device.clone(),
        dtype: parent.options.dtype,
        matmul: parent.options.matmul,
        overrides: set,
        limits: parent.options.limits,
        parents,
        help: false,
    });
    *child.worlds.borrow_mut() = parent.worlds.borrow().clone();
    parent.print(&format!("[{label}] running {name}"));
    let result = runner(child.clone(), &name, &text);
    parent.worlds.borrow_mut().extend(child.worlds.take());
    let status = match (&result, interrupted()) {
        (Ok(()), _) => "completed",
        (Err(_), true) => "interrupted",
        (Err(_), false) => "failed",
    };
    child.finish(status).map_err(fail("run_script"))?;
    if let Err(e) = result {
        return Err(error(format!("run_script: {label} {status}:\n{e}")));
    }
    read_run(parent, &dir, status)
}

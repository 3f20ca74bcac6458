//! MetaAPO's scripts end to end on the tiny world: the ablation switches do what they say, a
//! resumed run continues with the same meta-learner state, and `compare.rhai` writes its table
//! and plots.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metaapo-meta-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `scripts/<name>` on the tiny world with `--set` pairs into `out`; returns its metrics.
fn run(dir: &Path, name: &str, out: &Path, set: &[&str]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let mut c = Command::new(env!("CARGO_BIN_EXE_metaapo"));
    c.env("METAAPO_CACHE", dir.join("cache"))
        .arg("script")
        .arg(&script)
        .args(["--set", "world=tiny"]);
    for s in set {
        c.args(["--set", s]);
    }
    let o = c.arg("--out").arg(out).output().unwrap();
    assert!(
        o.status.success(),
        "{name} {set:?}:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn with<'a>(metrics: &'a [Value], key: &str) -> Vec<&'a Value> {
    metrics.iter().filter(|r| r.get(key).is_some()).collect()
}

#[test]
fn without_adaptive_sampling_every_prompt_is_selected() {
    let dir = scratch("adaptive");
    let adaptive = run(&dir, "metaapo_dpo.rhai", &dir.join("a"), &[]);
    let fractions: Vec<f64> = with(&adaptive, "online/selected_fraction")
        .iter()
        .map(|r| r["online/selected_fraction"].as_f64().unwrap())
        .collect();
    assert_eq!(fractions.len(), 3);
    assert!(fractions.iter().any(|&f| f < 1.0), "{fractions:?}");
    let all = run(
        &dir,
        "metaapo_dpo.rhai",
        &dir.join("b"),
        &["adaptive_sampling=false"],
    );
    let selected = with(&all, "online/selected_fraction");
    assert_eq!(selected.len(), 3);
    for r in selected {
        assert_eq!(r["online/selected_fraction"].as_f64(), Some(1.0), "{r}");
    }
}

#[test]
fn the_weighting_and_update_switches_and_unselected_drop() {
    let dir = scratch("ablations");
    // At the start policy = reference, so s = log σ(0) for every pair and the fixed weight of
    // "no meta weighting" is σ(log 0.5) = 1/3.
    let fixed = run(
        &dir,
        "metaapo_dpo.rhai",
        &dir.join("fixed"),
        &["meta_weighting=false", "t_meta=1"],
    );
    let first = with(&fixed, "meta/weight_mean")[0];
    assert!((first["meta/weight_mean"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-6);
    assert!(
        !with(&fixed, "meta/loss").is_empty(),
        "meta updates still run"
    );

    let frozen = run(
        &dir,
        "metaapo_dpo.rhai",
        &dir.join("frozen"),
        &["meta_updates=false", "t_meta=1"],
    );
    assert!(with(&frozen, "meta/loss").is_empty());
    let updated = run(
        &dir,
        "metaapo_dpo.rhai",
        &dir.join("updated"),
        &["t_meta=1"],
    );
    let steps = with(&updated, "grad_norm").len();
    assert_eq!(
        with(&updated, "meta/loss").len(),
        steps,
        "one meta step per policy step"
    );

    // "drop" trains only pairs with an online pair: one batch per 32 online pairs.
    let dropped = run(
        &dir,
        "metaapo_dpo.rhai",
        &dir.join("drop"),
        &["unselected=drop"],
    );
    let batches: usize = with(&dropped, "online/pairs")
        .iter()
        .map(|r| (r["online/pairs"].as_u64().unwrap() as usize).div_ceil(32))
        .sum();
    assert_eq!(with(&dropped, "grad_norm").len(), batches);
    assert!(with(&dropped, "grad_norm").len() < steps);
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every tensor of a safetensors file as raw bytes (metadata, whose key order varies, aside).
fn tensors(p: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let data = bytes(p);
    let st = safetensors::SafeTensors::deserialize(&data).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

fn same_tensors(a: &Path, b: &Path) {
    let (x, y) = (tensors(a), tensors(b));
    assert!(!x.is_empty(), "{} holds no tensors", a.display());
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

#[test]
fn a_resumed_run_continues_with_the_same_meta_learner() {
    let dir = scratch("resume");
    let full = dir.join("full");
    // 3 policy steps per iteration and a meta step every 2: the first checkpoint holds a
    // half-full buffer, which the resumed run must carry on with.
    let set = ["t_meta=2", "batch=16"];
    let whole = run(&dir, "metaapo_dpo.rhai", &full, &set);
    // A run directory whose latest checkpoint is the first iteration's.
    let partial = dir.join("partial");
    std::fs::create_dir_all(partial.join("checkpoints")).unwrap();
    let ckpt = full.join("checkpoints/iteration-0");
    let copy = partial.join("checkpoints/iteration-0");
    std::fs::create_dir_all(copy.join("learner")).unwrap();
    for entry in std::fs::read_dir(&ckpt)
        .unwrap()
        .chain(std::fs::read_dir(ckpt.join("learner")).unwrap())
    {
        let p = entry.unwrap().path();
        if p.is_file() {
            let rel = p.strip_prefix(&ckpt).unwrap();
            std::fs::copy(&p, copy.join(rel)).unwrap();
        }
    }
    let state: Value = serde_json::from_slice(&bytes(&copy.join("trainer_state.json"))).unwrap();
    let buffered = state["counters"]["buffer"]["scores"]
        .as_array()
        .unwrap()
        .len();
    assert!(buffered > 0, "{state}");
    let resume = format!("resume={}", partial.display());
    let resumed_dir = dir.join("resumed");
    let resumed = run(
        &dir,
        "metaapo_dpo.rhai",
        &resumed_dir,
        &[set[0], set[1], &resume],
    );
    assert!(
        with(&resumed, "online/selected").len() == 2,
        "iterations 1 and 2 only"
    );

    for file in [
        "learner/meta_learner.safetensors",
        "learner/meta_optimizer.safetensors",
        "model.safetensors",
    ] {
        let rel = Path::new("checkpoints/iteration-2").join(file);
        same_tensors(&full.join(&rel), &resumed_dir.join(&rel));
    }
    let last_eval =
        |m: &[Value]| with(m, "eval/gold_reward").last().unwrap()["eval/gold_reward"].clone();
    assert_eq!(last_eval(&whole), last_eval(&resumed));
    let state: Value = serde_json::from_slice(&bytes(
        &resumed_dir.join("checkpoints/iteration-2/trainer_state.json"),
    ))
    .unwrap();
    assert!(
        state["meta_learners"] == serde_json::json!(["learner"]),
        "{state}"
    );
    assert!(state["counters"]["online/annotations"].as_u64().unwrap() > 0);
}

#[test]
fn compare_writes_the_table_and_the_plots() {
    let dir = scratch("compare");
    let out = dir.join("cmp");
    run(
        &dir,
        "compare.rhai",
        &out,
        &["seeds=[0, 1]", "methods=[\"online_dpo\", \"metaapo_dpo\"]"],
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "method,gold,win_rate,annotations,annotation_ratio,seconds"
    );
    assert!(
        lines[1].starts_with("online_dpo,") && lines[1].contains(",1,"),
        "{csv}"
    );
    assert!(
        lines[2].starts_with("metaapo_dpo,") && lines[2].contains(" ± "),
        "{csv}"
    );
    assert_eq!(lines.len(), 3);
    assert!(std::fs::read_to_string(out.join("results.md"))
        .unwrap()
        .contains("| metaapo_dpo"));
    for plot in ["gold_vs_step.svg", "meta_weights.svg"] {
        let svg = std::fs::read_to_string(out.join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<text"), "{plot}");
    }
    for sub in [
        "online_dpo-s0",
        "online_dpo-s1",
        "metaapo_dpo-s0",
        "metaapo_dpo-s1",
    ] {
        assert!(
            out.join("runs").join(sub).join("summary.json").is_file(),
            "{sub}"
        );
    }
}

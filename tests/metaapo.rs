//! MetaAPO's scripts end to end on the tiny world: the ablation switches and the published
//! pipeline's options do what they say, a resumed run continues with the same meta-learner state
//! (and lagged reference), and `compare.rhai` writes its table and plots.

mod common;

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
fn run(name: &str, out: &Path, set: &[&str]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let mut c = Command::new(env!("CARGO_BIN_EXE_metaapo"));
    c.env("METAAPO_CACHE", common::shared_cache())
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
    let adaptive = run("metaapo_dpo.rhai", &dir.join("a"), &[]);
    let fractions: Vec<f64> = with(&adaptive, "online/selected_fraction")
        .iter()
        .map(|r| r["online/selected_fraction"].as_f64().unwrap())
        .collect();
    assert_eq!(fractions.len(), 3);
    assert!(fractions.iter().any(|&f| f < 1.0), "{fractions:?}");
    let all = run(
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
        "metaapo_dpo.rhai",
        &dir.join("frozen"),
        &["meta_updates=false", "t_meta=1"],
    );
    assert!(with(&frozen, "meta/loss").is_empty());
    let updated = run("metaapo_dpo.rhai", &dir.join("updated"), &["t_meta=1"]);
    let steps = with(&updated, "grad_norm").len();
    assert_eq!(
        with(&updated, "meta/loss").len(),
        steps,
        "one meta step per policy step"
    );

    // "drop" trains only pairs with an online pair: one batch per 32 online pairs.
    let dropped = run("metaapo_dpo.rhai", &dir.join("drop"), &["unselected=drop"]);
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

/// Runs MetaAPO-DPO with `set` whole, then again resumed from a run directory holding only the
/// checkpoints of iterations 0..=`upto`; both must end with the same meta-learner, meta-optimizer,
/// policy and evaluation.
fn resumed_run_equals_the_whole(name: &str, set: &[&str], upto: usize) {
    let dir = scratch(name);
    let full = dir.join("full");
    let whole = run("metaapo_dpo.rhai", &full, set);
    let partial = dir.join("partial");
    for k in 0..=upto {
        let ckpt = full.join(format!("checkpoints/iteration-{k}"));
        let copy = partial.join(format!("checkpoints/iteration-{k}"));
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
    }
    let state: Value = serde_json::from_slice(&bytes(
        &partial.join(format!("checkpoints/iteration-{upto}/trainer_state.json")),
    ))
    .unwrap();
    let buffered = state["counters"]["buffer"]["scores"]
        .as_array()
        .unwrap()
        .len();
    assert!(buffered > 0, "{state}");
    let resume = format!("resume={}", partial.display());
    let resumed_dir = dir.join("resumed");
    let mut resumed_set = set.to_vec();
    resumed_set.push(&resume);
    let resumed = run("metaapo_dpo.rhai", &resumed_dir, &resumed_set);
    assert_eq!(
        with(&resumed, "online/selected").len(),
        2 - upto,
        "only the iterations after {upto}"
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
fn a_resumed_run_continues_with_the_same_meta_learner() {
    // 3 policy steps per iteration and a meta step every 2: the first checkpoint holds a
    // half-full buffer, which the resumed run must carry on with.
    resumed_run_equals_the_whole("resume", &["t_meta=2", "batch=16"], 0);
}

#[test]
fn a_resumed_lagged_run_reloads_its_reference() {
    // Resumed at iteration 2, the lagged reference is the policy at the start of iteration 1:
    // the checkpoint of iteration 0. A meta step every 4 of the 6 steps so far leaves the
    // buffer half full here too.
    resumed_run_equals_the_whole(
        "resume-lagged",
        &["t_meta=4", "batch=16", "reference=lagged"],
        1,
    );
}

/// The weights `w` the meta-learner gave at each iteration's selection.
fn selection_weights(metrics: &[Value]) -> Vec<Vec<f64>> {
    with(metrics, "meta/weights")
        .iter()
        .map(|r| {
            r["meta/weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn a_lagged_reference_trails_the_policy_by_one_iteration() {
    let dir = scratch("lagged");
    let fixed = selection_weights(&run("metaapo_dpo.rhai", &dir.join("f"), &[]));
    let lagged = selection_weights(&run(
        "metaapo_dpo.rhai",
        &dir.join("l"),
        &["reference=lagged"],
    ));
    // Iterations 0 and 1 score against the SFT model either way (the policy at the start of
    // iteration 0 is the SFT model); iteration 2 against the policy at the start of iteration 1.
    assert_eq!(fixed[0], lagged[0]);
    assert_eq!(fixed[1], lagged[1]);
    assert_ne!(fixed[2], lagged[2]);
    // Δ is not 0 after the first iteration, so the weights differ between pairs (a reference
    // equal to the policy at the start of the iteration would make them all equal).
    for w in &lagged[1..] {
        assert!(w.iter().any(|x| x != &w[0]), "{w:?}");
    }
    assert!(
        lagged[0].iter().all(|x| x == &lagged[0][0]),
        "Δ = 0 at the start"
    );
}

#[test]
fn kept_ties_give_every_selected_prompt_an_online_pair() {
    let dir = scratch("ties");
    for (ties, out) in [("drop", "d"), ("keep", "k")] {
        let m = run(
            "metaapo_dpo.rhai",
            &dir.join(out),
            &[&format!("ties={ties}")],
        );
        let rows = with(&m, "online/selected");
        let tied: u64 = rows
            .iter()
            .map(|r| r["online/ties"].as_u64().unwrap())
            .sum();
        assert!(tied > 0, "the tiny world has tied prompts");
        for r in rows {
            let (selected, pairs, ties_n) = (
                r["online/selected"].as_u64().unwrap(),
                r["online/pairs"].as_u64().unwrap(),
                r["online/ties"].as_u64().unwrap(),
            );
            match ties {
                "keep" => assert_eq!(pairs, selected, "{r}"),
                _ => assert_eq!(pairs + ties_n, selected, "{r}"),
            }
        }
    }
}

#[test]
fn the_published_optimizer_restarts_a_cosine_schedule_every_iteration() {
    let dir = scratch("optim");
    let m = run(
        "metaapo_dpo.rhai",
        &dir.join("p"),
        &["optim=published", "lr=1e-4", "batch=8"],
    );
    let steps = with(&m, "learning_rate");
    for it in 0..3 {
        let lr: Vec<f64> = steps
            .iter()
            .filter(|r| r["iteration"] == it)
            .map(|r| r["learning_rate"].as_f64().unwrap())
            .collect();
        assert!(lr.len() > 3, "{lr:?}");
        // One warm-up step from 0, the peak, then a cosine decay that ends above 0.1·lr.
        assert_eq!(lr[0], 0.0, "iteration {it} restarts: {lr:?}");
        assert!((lr[1] - 1e-4).abs() < 1e-12, "{lr:?}");
        assert!(lr.windows(2).skip(1).all(|w| w[1] <= w[0]), "{lr:?}");
        let last = *lr.last().unwrap();
        assert!((1e-5..5e-5).contains(&last), "{lr:?}");
    }
}

#[test]
fn init_from_starts_from_a_dpo_run_with_the_sft_reference() {
    let dir = scratch("init");
    let dpo = run("dpo.rhai", &dir.join("dpo"), &["lr=1e-3"]);
    let final_dir = dir.join("dpo/final");
    let m = run(
        "metaapo_dpo.rhai",
        &dir.join("m"),
        &[
            &format!("init_from={}", final_dir.display()),
            "iterations=1",
        ],
    );
    let eval = |m: &[Value], i: usize| with(m, "eval/gold_reward")[i]["eval/gold_reward"].clone();
    assert_eq!(eval(&m, 0), eval(&dpo, 1), "MetaAPO starts where DPO ended");
    // Against the SFT reference the DPO policy already has a Δ per pair: the first selection
    // is no longer uniform.
    let w = &selection_weights(&m)[0];
    assert!(w.iter().any(|x| x != &w[0]), "{w:?}");
}

/// A CSV file's rows as maps from its header's names.
fn csv_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            header
                .iter()
                .cloned()
                .zip(rec.iter().map(String::from))
                .collect()
        })
        .collect()
}

const COMPARE: [&str; 5] = [
    "lrs=[1e-4, 3e-4]",
    "betas=[0.1]",
    "validation_seeds=[0]",
    "test_seeds=[1, 2]",
    "methods=[\"online_dpo\", \"metaapo_dpo\"]",
];

#[test]
fn compare_chooses_on_validation_reports_on_test_and_resumes() {
    let dir = scratch("compare");
    let out = dir.join("cmp");
    run("compare.rhai", &out, &COMPARE);
    // The grid: every method at every setting, on the validation split.
    let grid = csv_rows(&out.join("grid.csv"));
    assert_eq!(grid.len(), 4, "{grid:?}");
    let gold = |method: &str, lr: &str| -> f64 {
        let row = grid
            .iter()
            .find(|r| r["method"] == method && r["lr"] == lr)
            .unwrap();
        row["validation gold"].parse().unwrap()
    };
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for method in ["online_dpo", "metaapo_dpo"] {
        let lr = summary["chosen"][method][0].as_f64().unwrap();
        let best = if gold(method, "0.0003") > gold(method, "0.0001") {
            3e-4
        } else {
            1e-4
        };
        assert_eq!(lr, best, "{method} keeps its best validation setting");
        let run: Value = serde_json::from_str(
            &std::fs::read_to_string(
                out.join(format!("runs/{method}-lr0.0001-beta0.1-s0/params.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(run["params"]["split"], "validation");
    }
    // The report: test seeds, mean ± CI, steps, annotations and the test against the focus.
    let results = csv_rows(&out.join("results.csv"));
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["method"], "online_dpo");
    assert_eq!(results[0]["annotation_ratio"], "1");
    assert!(results[0]["gold"].contains(" ± "), "{results:?}");
    let p: f64 = results[0]["p vs focus"].parse().unwrap();
    assert!((0.0..=1.0).contains(&p), "{results:?}");
    assert_eq!(results[1]["p vs focus"], "-");
    assert!(results[1]["steps"].parse::<u64>().unwrap() > 0);
    for plot in ["gold_vs_step.svg", "meta_weights.svg"] {
        let svg = std::fs::read_to_string(out.join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<text"), "{plot}");
    }
    // The focus method's meta weights per iteration: quartiles and the share sent online.
    let weights = csv_rows(&out.join("meta_weights.csv"));
    assert_eq!(weights.len(), 3, "{weights:?}");
    for w in &weights {
        let q = |k: &str| w[k].parse::<f64>().unwrap();
        assert!(q("q1") <= q("median") && q("median") <= q("q3"), "{w:?}");
        assert!((0.0..=1.0).contains(&q("online fraction")), "{w:?}");
    }
    let test_run = out.join("runs/metaapo_dpo-test-s2");
    let params = std::fs::read_to_string(test_run.join("params.json")).unwrap();
    assert!(params.contains("\"split\": \"test\""), "{params}");

    // A comparison stopped part-way: the unfinished run is set aside, not deleted, and run
    // again; the completed ones are reused, and the results are the same.
    std::fs::remove_file(test_run.join("summary.json")).unwrap();
    let again = dir.join("again");
    let runs = format!("runs={}", out.join("runs").display());
    let mut set = COMPARE.to_vec();
    set.push(&runs);
    run("compare.rhai", &again, &set);
    assert!(out
        .join("runs/metaapo_dpo-test-s2.set-aside-1/metrics.jsonl")
        .is_file());
    let log = std::fs::read_to_string(again.join("run.log")).unwrap();
    assert_eq!(
        log.matches("completed earlier, reused").count(),
        4 + 3,
        "{log}"
    );
    let gold = |rows: &[std::collections::HashMap<String, String>]| -> Vec<String> {
        rows.iter().map(|r| r["gold"].clone()).collect()
    };
    assert_eq!(gold(&csv_rows(&again.join("results.csv"))), gold(&results));

    // Runs made with other settings are not reused under the same names: they are moved aside
    // and the jobs run again.
    let other = dir.join("other");
    set.push("settings=#{ online_dpo: [2e-4, 0.1], metaapo_dpo: [2e-4, 0.1] }");
    run("compare.rhai", &other, &set);
    let log = std::fs::read_to_string(other.join("run.log")).unwrap();
    assert_eq!(log.matches("completed earlier, reused").count(), 0, "{log}");
    assert_eq!(log.matches("one with other settings").count(), 4, "{log}");
    let params = std::fs::read_to_string(test_run.join("params.json")).unwrap();
    assert!(params.contains("\"lr\": 0.0002"), "{params}");
    assert!(out
        .join("runs/metaapo_dpo-test-s2.set-aside-2/summary.json")
        .is_file());
}

#[test]
fn compare_names_a_bad_grid_or_method_entry() {
    let dir = scratch("compare-bad");
    for (i, (set, says)) in [
        ("lrs=[1e-4, -1.0]", "lrs: -1"),
        ("betas=[]", "betas: the grid needs"),
        (
            "methods=[\"dpo:beta\"]",
            "\"beta\" in \"dpo:beta\" is not key=value",
        ),
        ("methods=[\"dpo:lr=1.0\"]", "sets lr"),
        ("methods=[\"nope\"]", "no script \"nope\""),
        ("settings=#{dpo: [1e-4]}", "settings: dpo must be [lr, β]"),
        ("test_seeds=[1]", "test_seeds"),
        ("focus=nope", "focus \"nope\""),
    ]
    .iter()
    .enumerate()
    {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compare.rhai");
        let o = Command::new(env!("CARGO_BIN_EXE_metaapo"))
            .env("METAAPO_CACHE", common::shared_cache())
            .arg("script")
            .arg(&script)
            .args(["--set", "world=tiny", "--set", set])
            // A method list gets its one method as the focus.
            .args(match set.strip_prefix("methods=[\"") {
                Some(spec) => vec![
                    "--set".to_string(),
                    format!("focus={}", spec.trim_end_matches("\"]")),
                ],
                None => vec![],
            })
            .arg("--out")
            .arg(dir.join(i.to_string()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{set}: {err}");
    }
}

//! The script host end to end, through the `metaapo` binary: every bundled script in reduced
//! mode, the REPL over standard input, `check`, `--set` and `api`.

mod common;

use metaapo::world::World;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn metaapo(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_metaapo"));
    c.env("METAAPO_CACHE", cache);
    c
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metaapo-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `metaapo script ARGS... --out OUT`, with the tests' shared cache.
fn script(out: &Path, args: &[&str]) -> Output {
    metaapo(&common::shared_cache())
        .arg("script")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn every_bundled_script_runs_in_reduced_mode() {
    let dir = scratch("scripts");
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&scripts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 2,
        "expected bundled scripts in {}",
        scripts.display()
    );
    for script in names {
        let stem = script.file_stem().unwrap().to_string_lossy().to_string();
        let out = dir.join(&stem);
        // A script that opens a world runs on the tiny one, a suite of worlds on the tiny one
        // alone; the others (train_reward) as they are.
        let source = std::fs::read_to_string(&script).unwrap();
        let uses_world = source.contains("world(p.world)");
        let mut cmd = metaapo(&common::shared_cache());
        cmd.arg("script").arg(&script);
        if uses_world {
            cmd.args(["--set", "world=tiny"]);
        }
        // A comparison on a grid of one setting and one validation seed.
        if source.contains("p.lrs") {
            cmd.args([
                "--set",
                "lrs=[1e-4]",
                "--set",
                "betas=[0.1]",
                "--set",
                "validation_seeds=[0]",
                "--set",
                "test_seeds=[1, 2]",
            ]);
        }
        if source.contains("p.worlds") {
            cmd.args(["--set", "worlds=[\"tiny\"]", "--set", "tune_on=tiny"]);
            cmd.args([
                "--set",
                "compare=#{ lrs: [1e-4], betas: [0.1], validation_seeds: [0], test_seeds: [1, 2] }",
            ]);
        }
        let o = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{stem} failed:\n{stdout}\n{stderr}");
        for file in ["metrics.jsonl", "params.json", "summary.json", "run.log"] {
            assert!(out.join(file).is_file(), "{stem}: no {file}");
        }
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["status"], "completed", "{stem}");
        let params: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("params.json")).unwrap())
                .unwrap();
        if uses_world {
            assert_eq!(
                params["params"]["world"], "tiny",
                "{stem}: --set not applied"
            );
        }
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        for line in metrics.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(
                v["step"].is_u64(),
                "{stem}: a metrics line without step: {line}"
            );
        }
    }
}

#[test]
fn the_reward_model_beats_chance_on_the_held_out_preferences() {
    // all-MiniLM-L6-v2 (fetched into the shared cache) with a Bradley-Terry head, trained on
    // data/prefs/train.jsonl; 37 of the 40 held-out pairs were ranked right when this was written.
    let dir = scratch("prefs");
    let out = dir.join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_metaapo"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["script", "scripts/train_reward.rhai", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let heldout = summary["last"]["reward/heldout_accuracy"].as_f64().unwrap();
    assert_eq!(summary["last"]["reward/heldout_pairs"], 40);
    assert!(heldout > 0.75, "held-out accuracy {heldout}");
    assert!(out
        .join("reward_model")
        .join(metaapo::reward::bradley_terry::HEAD_FILE)
        .is_file());
}

#[test]
fn api_tour_checks_every_other_function() {
    let dir = scratch("tour");
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"prompt\": \"1+1=\", \"chosen\": \"2\", \"rejected\": \"3\"}\n\n\
         {\"prompt\": \"2+3=\", \"chosen\": \"5\", \"rejected\": \"6\"}\n",
    )
    .unwrap();
    // The tiny reward-model fixture with the tiny world's tokenizer (its ids fit the vocabulary).
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let rm = dir.join("rm");
    std::fs::create_dir_all(&rm).unwrap();
    for f in ["config.json", metaapo::model::hf::WEIGHTS] {
        std::fs::copy(fixtures.join("tiny_llama_rm").join(f), rm.join(f)).unwrap();
    }
    metaapo::world::vocab::tokenizer()
        .unwrap()
        .save(&rm)
        .unwrap();
    let out = dir.join("run");
    let tour = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/api_tour.rhai");
    let set = |k: &str, v: &Path| format!("{k}={}", v.display());
    let o = script(
        &out,
        &[
            tour.to_str().unwrap(),
            "--set",
            &set("pairs_file", &pairs),
            "--set",
            &set("prompts_file", &pairs),
            "--set",
            &set("rm_dir", &rm),
            "--set",
            &set("encoder_dir", &fixtures.join("tiny_bert")),
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let ckpt = out.join("checkpoints/step1");
    assert!(ckpt.join(metaapo::train::checkpoint::OPTIMIZER).is_file());
    assert!(ckpt
        .join(metaapo::train::checkpoint::TRAINER_STATE)
        .is_file());
    assert!(out
        .join("final")
        .join(metaapo::model::hf::WEIGHTS)
        .is_file());
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("\"tour\": \"done\""), "{summary}");
}

#[test]
fn dpo_logs_trl_metrics_every_step() {
    let dir = scratch("dpo");
    let out = dir.join("run");
    let o = script(&out, &["dpo", "--set", "world=tiny", "--set", "batch=16"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Evaluation, 128 pairs / 16 = 8 steps, evaluation.
    assert_eq!(lines.len(), 10);
    for step in &lines[1..9] {
        for key in [
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "grad_norm",
            "learning_rate",
        ] {
            assert!(step[key].is_number(), "missing {key} in {step}");
        }
    }
    for key in ["eval/gold_reward", "eval/success", "eval/win_rate"] {
        assert!(lines[0][key].is_number() && lines[9][key].is_number());
    }
    // The run starts from the warm-up policy, so its first win rate is exactly a tie.
    assert_eq!(lines[0]["eval/win_rate"], 0.5);
}

#[test]
fn online_dpo_improves_the_tiny_worlds_policy() {
    // The tiny world's warm-up policy is trained (greedy gold 0.616), so a reduced run can
    // learn something: three iterations of Online DPO at lr 3e-4 raised the gold reward by
    // 0.025, 0.138 and 0.193 for seeds 0, 1 and 2 when this was written.
    let dir = scratch("gain");
    let mut gains = vec![];
    for seed in ["0", "1", "2"] {
        let out = dir.join(seed);
        let o = script(
            &out,
            &[
                "online_dpo",
                "--seed",
                seed,
                "--set",
                "world=tiny",
                "--set",
                "lr=3e-4",
            ],
        );
        assert!(o.status.success(), "{:?}", text(&o));
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let gold = |when: &str| summary[when]["eval/gold_reward"].as_f64().unwrap();
        assert!(gold("before") > 0.5, "the warm-up is trained: {summary}");
        assert!(gold("after") > gold("before"), "seed {seed}: {summary}");
        gains.push(gold("after") - gold("before"));
    }
    assert!(gains.iter().sum::<f64>() / 3.0 > 0.05, "{gains:?}");
}

#[test]
fn runs_are_deterministic_under_a_seed() {
    let dir = scratch("seed");
    let run = |name: &str, seed: &str| {
        let out = dir.join(name);
        let o = script(
            &out,
            &[
                "dpo",
                "--set",
                "world=tiny",
                "--set",
                "epochs=2",
                "--seed",
                seed,
            ],
        );
        assert!(o.status.success(), "{:?}", text(&o));
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap()
    };
    let a = run("a", "3");
    assert_eq!(a, run("b", "3"));
    assert_ne!(a, run("c", "4"), "the seed should change the shuffling");
}

#[test]
fn repl_keeps_going_after_an_error() {
    let dir = scratch("repl");
    let mut child = metaapo(&dir)
        .arg("repl")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = "let xs = [1,\n  2,\n  3];\nfn twice(x) {\n  x * 2\n}\nnot_a_function(1)\n\
                 twice(xs.len())\nlet t = tensor([1.0, 2.0, 4.0]);\nt * 2\n:vars\n:help score\n\
                 import \"report\" as r;\nr::round(1.23456)\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("not_a_function"), "{stdout}");
    assert!(stdout.contains("<repl:3>:1:1"), "error location: {stdout}");
    assert!(
        stdout.lines().any(|l| l.trim() == "6"),
        "twice(3) after the error: {stdout}"
    );
    assert!(
        stdout.contains("Tensor[3] F32 mean 4.6667"),
        "tensor summary: {stdout}"
    );
    assert!(stdout.contains("xs: "), ":vars: {stdout}");
    assert!(
        stdout.contains("score(policy: Policy"),
        ":help score: {stdout}"
    );
}

#[test]
fn check_finds_calls_of_unknown_functions_and_errors_list_the_known_forms() {
    let dir = scratch("check-calls");
    std::fs::write(
        dir.join("typo.rhai"),
        "let w = world(\"tiny\");\nlet p = w.policy();\nlet s = scroe(p, p, w.pairs);\n",
    )
    .unwrap();
    let o = metaapo(&dir)
        .arg("check")
        .arg(dir.join("typo.rhai"))
        .output()
        .unwrap();
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains("scroe") && stderr.contains("typo.rhai:3:9"),
        "{stderr}"
    );
    std::fs::write(
        dir.join("args.rhai"),
        "let w = world(\"tiny\");\nlet p = w.policy();\nlet s = score(p, p, [1]);\n",
    )
    .unwrap();
    let o = metaapo(&dir)
        .arg("script")
        .arg(dir.join("args.rhai"))
        .arg("--out")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let (_, stderr) = text(&o);
    assert!(
        stderr.contains("`score` takes:")
            && stderr.contains("score(policy: Policy, reference: Policy, pairs: Pairs) -> Scores"),
        "{stderr}"
    );
}

#[test]
fn check_reports_line_and_column_in_the_script_and_its_imports() {
    let dir = scratch("check");
    std::fs::write(dir.join("broken.rhai"), "let a = 1;\nlet b = (a + ;\n").unwrap();
    let o = metaapo(&dir)
        .arg("check")
        .arg(dir.join("broken.rhai"))
        .output()
        .unwrap();
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("broken.rhai:2:14"), "{stderr}");
    assert!(stderr.contains("2 | let b = (a + ;"), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.trim_end().ends_with('^')),
        "{stderr}"
    );

    std::fs::write(
        dir.join("helper.rhai"),
        "fn ok() { 1 }\n\nfn bad() { let = 2; }\n",
    )
    .unwrap();
    std::fs::write(dir.join("main.rhai"), "import \"helper\" as h;\nh::ok();\n").unwrap();
    let o = metaapo(&dir)
        .arg("check")
        .arg(dir.join("main.rhai"))
        .output()
        .unwrap();
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("helper.rhai:3:16"), "{stderr}");
    assert!(stderr.contains("importing"), "{stderr}");

    let o = metaapo(&dir)
        .args(["check", "dpo", "custom_loss"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
fn host_errors_name_the_function_and_position() {
    let dir = scratch("hosterr");
    std::fs::write(
        dir.join("w.rhai"),
        "let x = 1;\nlet w = world(\"nowhere\");\n",
    )
    .unwrap();
    let o = metaapo(&dir)
        .args(["script"])
        .arg(dir.join("w.rhai"))
        .arg("--out")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("world: unknown world \"nowhere\""),
        "{stderr}"
    );
    assert!(stderr.contains("w.rhai:2:9"), "{stderr}");
}

#[test]
fn unknown_set_key_lists_the_known_ones() {
    let dir = scratch("set");
    let o = metaapo(&dir)
        .args(["script", "dpo", "--set", "betta=0.2", "--out"])
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("unknown parameter `betta`"), "{stderr}");
    assert!(
        stderr.contains("batch, beta, epochs, gradient_checkpointing, lora_rank, lr, max_pairs, rpo_alpha, split, world"),
        "{stderr}"
    );

    let o = metaapo(&dir)
        .args(["script", "dpo", "--set", "batch=many", "--out"])
        .arg(dir.join("run2"))
        .output()
        .unwrap();
    assert!(text(&o).1.contains("--set batch=many: expected an integer"));
}

#[test]
fn api_lists_every_family_with_docs() {
    let o = metaapo(Path::new("/nonexistent"))
        .args(["api", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    for (family, _) in metaapo::host::FAMILIES {
        let n = docs.iter().filter(|d| d["family"] == family).count();
        assert!(n > 0, "family {family} has no functions");
    }
    for name in [
        "score",
        "dpo",
        "optimizer",
        "log",
        "params",
        "world",
        "evaluate",
        "log_sigmoid",
    ] {
        assert!(
            docs.iter().any(|d| d["name"] == name),
            "{name} is not listed"
        );
    }
    assert!(docs.iter().all(|d| !d["doc"].as_str().unwrap().is_empty()));
}

#[test]
fn api_shows_the_defaults_of_the_engine_configs() {
    let o = metaapo(Path::new("/nonexistent"))
        .args(["api", "--json"])
        .output()
        .unwrap();
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let doc = |name: &str| -> String {
        docs.iter()
            .find(|d| d["name"] == name)
            .map(|d| d["doc"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    // Numbers as the docs print them: JSON's form of the default.
    let n = |x: f64| serde_json::Value::from(x).to_string();
    let dpo = metaapo::objective::DpoConfig::default();
    assert!(
        doc("dpo").contains(&format!("beta ({})", n(dpo.beta))),
        "{}",
        doc("dpo")
    );
    assert!(doc("dpo").contains("rpo_alpha (off)"), "{}", doc("dpo"));
    let simpo = metaapo::objective::SimpoConfig::default();
    assert!(
        doc("simpo").contains(&format!("gamma ({})", n(simpo.gamma))),
        "{}",
        doc("simpo")
    );
    let gen = metaapo::generate::SampleConfig::default();
    assert!(doc("generate").contains(&format!("max_new_tokens ({})", gen.max_new_tokens)));
    let opt = metaapo::train::TrainerConfig::default();
    assert!(
        doc("optimizer").contains(&format!("clip ({})", n(opt.clip))),
        "{}",
        doc("optimizer")
    );
    assert!(
        doc("optimizer").contains("schedule (\"constant\")"),
        "{}",
        doc("optimizer")
    );
}

#[test]
fn script_help_lists_parameters_with_defaults_and_descriptions() {
    let dir = scratch("script-help");
    let o = metaapo(&common::shared_cache())
        .args(["script", "metaapo_simpo", "--help"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("beta = 2.5"), "{stdout}");
    assert!(stdout.contains("objective = \"simpo\""), "{stdout}");
    let k = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("k = 8"))
        .unwrap();
    assert!(k.contains("samples per selected prompt"), "{k}");
    assert!(!dir.join("runs").exists(), "--help must not start a run");
    let plain = metaapo(&common::shared_cache())
        .args(["script", "--help"])
        .output()
        .unwrap();
    assert!(text(&plain).0.contains("--set"), "{}", text(&plain).0);
}

#[test]
fn a_misspelt_params_key_is_an_error_naming_it() {
    let dir = scratch("map-property");
    std::fs::write(
        dir.join("typo.rhai"),
        "let p = params(#{ beta: 0.1 });\nprint(p.bata);\n",
    )
    .unwrap();
    let o = script(&dir.join("out"), &[dir.join("typo.rhai").to_str().unwrap()]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains("bata") && stderr.contains("typo.rhai:2"),
        "{stderr}"
    );
}

#[test]
fn a_world_from_files_runs_the_scripts_unchanged() {
    // The tiny world's policy and pairs written out as a user's files, with the tiny
    // sequence-classifier fixture (given the same tokenizer) as the reward model.
    let dir = scratch("file-world");
    let world = common::tiny_world();
    let files = dir.join("files");
    common::policy_and_reward(&files, &world);
    let line = |p: &metaapo::data::pairs::Pair| {
        serde_json::json!({ "prompt": p.prompt.display(), "chosen": p.chosen.display(),
                            "rejected": p.rejected.display() })
        .to_string()
    };
    let pairs: Vec<String> = world.pairs.iter().take(24).map(line).collect();
    std::fs::write(files.join("pairs.jsonl"), pairs.join("\n")).unwrap();
    let eval: Vec<String> = world
        .eval_prompts()
        .iter()
        .take(6)
        .map(|p| serde_json::json!({ "prompt": p.display() }).to_string())
        .collect();
    std::fs::write(files.join("eval.jsonl"), eval.join("\n")).unwrap();
    let spec = files.join("world.json");
    std::fs::write(
        &spec,
        r#"{"policy": "policy", "reward": "reward", "pairs": "pairs.jsonl", "eval": "eval.jsonl",
            "lr": 1e-4, "max_new_tokens": 4}"#,
    )
    .unwrap();
    let set_world = format!("world={}", spec.display());
    for (name, extra) in [
        ("dpo.rhai", vec![]),
        ("online_dpo.rhai", vec!["k=2", "prompts=8"]),
        ("selective_dpo.rhai", vec![]),
        ("metaapo_dpo.rhai", vec!["k=2", "t_meta=1", "batch=4"]),
    ] {
        let out = dir.join(name);
        let mut args = vec![name, "--set", &set_world];
        for e in &extra {
            args.extend(["--set", e]);
        }
        let o = script(&out, &args);
        assert!(o.status.success(), "{name}: {:?}", text(&o));
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let after = &summary["after"];
        assert!(
            after["eval/reward"].is_f64() && after["eval/win_rate"].is_f64(),
            "{name}: {summary}"
        );
        assert!(after.get("eval/gold_reward").is_none(), "{name}");
    }
    // MetaAPO wrote a checkpoint of the file world's policy that loads back.
    let ckpt = dir.join("metaapo_dpo.rhai/checkpoints/iteration-2");
    let (model, tok) = metaapo::model::hf::load(
        &ckpt,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        false,
    )
    .unwrap();
    assert!(tok.is_some() && model.num_parameters() > 0);

    // A spec with an unknown key is refused with the file's name.
    std::fs::write(&spec, r#"{"policy": "policy", "reward": "reward", "pairs": "pairs.jsonl", "eval": "eval.jsonl", "epochs": 3}"#).unwrap();
    let o = script(&dir.join("bad"), &["dpo.rhai", "--set", &set_world]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("world.json") && err.contains("epochs"),
        "{err}"
    );
}

#[test]
fn world_measures_the_premise_and_names_the_worlds() {
    let cache = common::shared_cache();
    let o = metaapo(&cache)
        .args(["world", "tiny", "--prompts", "64", "--json"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 5, "{report}");
    for c in checks {
        let value = c["value"].as_f64().unwrap();
        assert!(value.is_finite(), "{c}");
        assert!(c["pass"].is_boolean() && c["target"].is_string(), "{c}");
    }
    let table = metaapo(&cache).args(["world", "tiny"]).output().unwrap();
    let (stdout, _) = text(&table);
    assert!(
        stdout.contains("offline quality") && stdout.contains("FAIL"),
        "{stdout}"
    );

    let bad = metaapo(&cache).args(["world", "nope"]).output().unwrap();
    let (_, stderr) = text(&bad);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr.contains("\"nope\"") && stderr.contains("noisy-labels"),
        "{stderr}"
    );
    let bad_k = metaapo(&cache)
        .args(["world", "tiny", "--k", "1"])
        .output()
        .unwrap();
    assert_eq!(bad_k.status.code(), Some(1));
    assert!(text(&bad_k).1.contains("--k"), "{}", text(&bad_k).1);
}

#[test]
fn run_scripts_runs_jobs_in_processes_and_names_the_failed_ones() {
    let dir = scratch("jobs");
    let ok = dir.join("ok.rhai");
    let bad = dir.join("bad.rhai");
    std::fs::write(
        &ok,
        "let p = params(#{ x: 1 });\nlog(#{ x: p.x });\nsummary(#{ x: p.x, seed: seed() });\n",
    )
    .unwrap();
    std::fs::write(&bad, "throw \"boom\";\n").unwrap();
    let driver = dir.join("driver.rhai");
    std::fs::write(
        &driver,
        format!(
            "let runs = run_scripts([#{{ script: {ok:?} }}, #{{ script: {ok:?}, seed: 4, set: #{{ x: 7 }} }}], #{{ parallel: 2 }});\n\
             summary(#{{ xs: runs.map(|r| r.summary.x), seeds: runs.map(|r| r.summary.seed), status: runs[0].status, logged: runs[1].metrics[0].x }});\n"
        ),
    )
    .unwrap();
    let out = dir.join("good");
    let o = script(&out, &[driver.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["xs"], serde_json::json!([1, 7]));
    assert_eq!(summary["seeds"], serde_json::json!([0, 4]));
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["logged"], 7);
    assert!(out.join("runs/ok-s4/metrics.jsonl").is_file());

    // A failing job stops new ones from starting and fails the call, naming it and its error.
    std::fs::write(
        &driver,
        format!("run_scripts([#{{ script: {ok:?} }}, #{{ script: {bad:?} }}, #{{ script: {ok:?}, seed: 1 }}, #{{ script: {ok:?}, seed: 2 }}], #{{ parallel: 1 }});\n"),
    )
    .unwrap();
    let out = dir.join("bad");
    let o = script(&out, &[driver.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("1 of 4 jobs failed and 2 did not start")
            && err.contains("bad-s0")
            && err.contains("boom"),
        "{err}"
    );
    assert!(
        out.join("runs/ok-s0/summary.json").is_file(),
        "the completed job is kept"
    );
    assert!(
        !out.join("runs/ok-s1").exists(),
        "no job starts after a failure"
    );

    // Two jobs may not share a folder; a job must name a script.
    for (i, (jobs, says)) in [
        (
            format!("[#{{ script: {ok:?} }}, #{{ script: {ok:?} }}]"),
            "is taken",
        ),
        ("[#{ seed: 1 }]".to_string(), "needs a `script`"),
        (
            format!("[#{{ script: {ok:?}, name: \"../up\" }}]"),
            "plain folder name",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&driver, format!("run_scripts({jobs}, #{{}});\n")).unwrap();
        let o = script(&dir.join(format!("x{i}")), &[driver.to_str().unwrap()]);
        let (_, err) = text(&o);
        assert!(!o.status.success() && err.contains(says), "{jobs}: {err}");
    }
}

//! Faults and bad input, as a new user meets them: nothing of the user's is deleted or replaced,
//! a checkpoint killed at any point still resumes safely, and every bad input ends in one clear
//! error that says where (file and line, field, tensor or script position), never an abort.

mod common;

use common::{metaapo, text};

use candle_core::DType;
use metaapo::model::hf;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metaapo-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a script file written into `dir`; returns the output, which must be a failure.
fn fails(dir: &Path, name: &str, source: &str, extra: &[&str]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    let o = metaapo(dir)
        .arg("script")
        .arg(&path)
        .args(extra)
        .arg("--out")
        .arg(dir.join(format!("run-{name}")))
        .output()
        .unwrap();
    let out = text(&o);
    assert!(!o.status.success(), "{name} should fail:\n{out}");
    assert_eq!(
        o.status.code(),
        Some(1),
        "a clean error, not an abort:\n{out}"
    );
    out
}

fn contains(out: &str, parts: &[&str]) {
    for p in parts {
        assert!(out.contains(p), "expected {p:?} in:\n{out}");
    }
}

fn tiny_model_dir(dir: &Path) -> PathBuf {
    let d = dir.join("tiny-model");
    let model = common::tiny_model("LlamaForCausalLM", false, DType::F32, false);
    hf::save(&d, &model, None).unwrap();
    d
}

// ---- nothing of the user's is deleted or replaced -------------------------------------------

#[test]
fn convert_never_deletes_a_users_folder_or_file() {
    let dir = scratch("convert");
    let model = tiny_model_dir(&dir);
    let convert = |out: &Path, force: bool| {
        let mut c = metaapo(&dir);
        c.arg("convert").arg(&model).arg(out);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    // A folder of the user's: refused, its files untouched.
    let users = dir.join("mine");
    std::fs::create_dir_all(&users).unwrap();
    std::fs::write(users.join("notes.txt"), "keep me").unwrap();
    for force in [false, true] {
        let o = convert(&users, force);
        assert!(!o.status.success());
        contains(&text(&o), &["mine", "metaapo did not write", "notes.txt"]);
        assert_eq!(
            std::fs::read_to_string(users.join("notes.txt")).unwrap(),
            "keep me"
        );
        assert_eq!(std::fs::read_dir(&users).unwrap().count(), 1);
    }
    // A file in place of the folder: refused before anything is written or moved.
    let file = dir.join("a-file");
    std::fs::write(&file, "data").unwrap();
    let o = convert(&file, true);
    assert!(!o.status.success());
    contains(&text(&o), &["a-file", "not a folder"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("a-file.")), "{names:?}");
    // An earlier conversion: replaced only with --force, and a file the user added stays.
    let out = dir.join("converted");
    assert!(convert(&out, false).status.success());
    std::fs::write(out.join("README.md"), "my notes").unwrap();
    let o = convert(&out, false);
    assert!(!o.status.success());
    contains(&text(&o), &["already holds a model", "--force"]);
    let o = convert(&out, true);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("README.md")).unwrap(),
        "my notes"
    );
    assert!(out.join(hf::WEIGHTS).is_file());
    // The usual permissions, not the 0600 of a temporary file.
    let mode = std::fs::metadata(out.join(hf::WEIGHTS))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // An empty folder is fine.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(convert(&empty, false).status.success());
}

#[test]
fn script_saves_refuse_foreign_folders_and_replace_only_when_asked() {
    let dir = scratch("save");
    let users = dir.join("mine");
    std::fs::create_dir_all(&users).unwrap();
    std::fs::write(users.join("data.csv"), "1,2").unwrap();
    let out = fails(
        &dir,
        "save_foreign.rhai",
        &format!(
            "let w = world(\"tiny\");\nlet p = w.policy();\np.save({:?});\n",
            users.display()
        ),
        &[],
    );
    contains(
        &out,
        &["save:", "metaapo did not write", "save_foreign.rhai:3"],
    );
    assert_eq!(
        std::fs::read_to_string(users.join("data.csv")).unwrap(),
        "1,2"
    );

    let twice = dir.join("twice.rhai");
    std::fs::write(
        &twice,
        "let p = world(\"tiny\").policy();\np.save(\"m\");\np.save(\"m\", #{ overwrite: true });\n\
         let failed = false;\ntry { p.save(\"m\"); } catch (e) { failed = true; }\n\
         if !failed { throw \"a second save without overwrite must fail\"; }\n",
    )
    .unwrap();
    let o = metaapo(&dir)
        .arg("script")
        .arg(&twice)
        .arg("--out")
        .arg(dir.join("run-twice"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // A name of this process's own, so no other folder of that name can fail the check.
    let escape = format!("escape-{}", std::process::id());
    let out = fails(
        &dir,
        "escape.rhai",
        &format!("let p = world(\"tiny\").policy();\nlet opt = optimizer(p, #{{ lr: 1e-3 }});\nopt.checkpoint(\"../../{escape}\");\n"),
        &[],
    );
    contains(&out, &["checkpoint", "plain folder name", "escape.rhai:3"]);
    assert!(!dir.join(&escape).exists() && !dir.parent().unwrap().join(&escape).exists());
}

// ---- checkpoints survive a kill at any point --------------------------------------------------

fn metrics(path: &Path) -> Vec<Value> {
    metaapo::report::read_metrics(&path.join("metrics.jsonl"))
        .unwrap()
        .0
}

fn last_eval(run: &Path) -> Value {
    metrics(run)
        .iter()
        .rev()
        .find_map(|r| r.get("eval/gold_reward").cloned())
        .unwrap()
}

fn tensors(p: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let data = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let st = safetensors::SafeTensors::deserialize(&data).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

#[test]
fn a_checkpoint_killed_after_any_filesystem_operation_resumes_safely() {
    let dir = scratch("kill");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/metaapo_dpo.rhai");
    let run = |out: &Path, crash: Option<usize>, resume: Option<&Path>| {
        let mut c = metaapo(&dir);
        c.arg("script").arg(&script).args([
            "--set",
            "world=tiny",
            "--set",
            "batch=16",
            "--set",
            "t_meta=2",
        ]);
        if let Some(r) = resume {
            c.arg("--set").arg(format!("resume={}", r.display()));
        }
        if let Some(k) = crash {
            c.env("METAAPO_CRASH_AFTER", format!("checkpoint:{k}"));
        }
        c.arg("--out").arg(out).output().unwrap()
    };
    let full = dir.join("full");
    let o = run(&full, None, None);
    assert!(o.status.success(), "{}", text(&o));
    let final_model = full.join("checkpoints/iteration-2/model.safetensors");
    let (mut refused, mut resumed) = (0, 0);
    let mut k = 1;
    loop {
        let crashed = dir.join(format!("crash-{k}"));
        let o = run(&crashed, Some(k), None);
        if o.status.success() {
            break; // k is past the last operation of the last checkpoint
        }
        assert_eq!(o.status.signal(), Some(9), "k = {k}: {}", text(&o));
        // The run's metrics stay readable after the kill.
        assert!(!metrics(&crashed).is_empty());
        let again = dir.join(format!("resumed-{k}"));
        let o = run(&again, None, Some(&crashed));
        let out = text(&o);
        assert!(
            !out.contains(".tmp-"),
            "k = {k}: a temporary folder was used:\n{out}"
        );
        if o.status.success() {
            resumed += 1;
            assert_eq!(last_eval(&again), last_eval(&full), "k = {k}");
            let model = if again.join("checkpoints/iteration-2").exists() {
                again.join("checkpoints/iteration-2/model.safetensors")
            } else {
                crashed.join("checkpoints/iteration-2/model.safetensors")
            };
            assert!(
                tensors(&model) == tensors(&final_model),
                "k = {k}: weights differ"
            );
        } else {
            refused += 1;
            contains(&out, &["resume", "no complete checkpoint"]);
        }
        // The stale temporary folders of the killed write are gone.
        let left: Vec<String> = std::fs::read_dir(crashed.join("checkpoints"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                    .filter(|n| n.contains(".tmp-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "k = {k}: {left:?}");
        k += 1;
    }
    println!(
        "kill points: {}, resumes refused: {refused}, resumed: {resumed}",
        k - 1
    );
    // Three checkpoints of about ten operations each: every point was tried.
    assert!(k > 25, "only {k} crash points");
    assert!(
        refused > 0 && resumed > refused,
        "{refused} refused, {resumed} resumed"
    );
}

#[test]
fn resume_never_picks_a_temporary_or_incomplete_checkpoint() {
    use metaapo::train::checkpoint;
    let dir = scratch("latest");
    let o = metaapo(&dir)
        .args([
            "script",
            "metaapo_dpo",
            "--set",
            "world=tiny",
            "--set",
            "iterations=1",
        ])
        .arg("--out")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let ckpts = dir.join("run/checkpoints");
    let good = ckpts.join("iteration-0");
    // What a kill during a later checkpoint leaves: a temporary folder with a higher step, of a
    // process that is gone, and a complete-looking folder without its marker.
    let state = std::fs::read_to_string(good.join("trainer_state.json")).unwrap();
    let later = state.replacen(
        "\"global_step\":",
        "\"global_step\": 999999, \"old_step\":",
        1,
    );
    for name in ["iteration-1.tmp-999999999-0", "iteration-5"] {
        std::fs::create_dir_all(ckpts.join(name)).unwrap();
        std::fs::write(ckpts.join(name).join("trainer_state.json"), &later).unwrap();
    }
    assert_eq!(checkpoint::latest(&dir.join("run")).unwrap(), good);
    assert!(!ckpts.join("iteration-1.tmp-999999999-0").exists());
    let err = checkpoint::latest(&ckpts.join("iteration-5")).unwrap_err();
    contains(&format!("{err:#}"), &["iteration-5", "incomplete"]);
}

#[test]
fn a_torn_last_metrics_line_is_skipped_with_a_warning() {
    let dir = scratch("torn");
    let path = dir.join("metrics.jsonl");
    std::fs::write(&path, "{\"step\":1}\n{\"step\":2}\n{\"st").unwrap();
    let (records, warning) = metaapo::report::read_metrics(&path).unwrap();
    assert_eq!(records.len(), 2);
    contains(&warning.unwrap(), &["metrics.jsonl:3", "torn"]);
    std::fs::write(&path, "{\"step\":1}\n{bad\n{\"step\":3}\n").unwrap();
    let err = metaapo::report::read_metrics(&path).unwrap_err();
    contains(&format!("{err:#}"), &["metrics.jsonl:2"]);
}

// ---- no abort, whatever the script -------------------------------------------------------------

#[test]
fn import_cycles_are_errors_that_show_the_chain() {
    let dir = scratch("cycle");
    std::fs::write(dir.join("a.rhai"), "import \"b\" as b;\nprint(1);\n").unwrap();
    std::fs::write(dir.join("b.rhai"), "import \"a\" as a;\nfn f() { 1 }\n").unwrap();
    std::fs::write(dir.join("me.rhai"), "import \"me\" as me;\n").unwrap();
    for (file, chain) in [
        ("a.rhai", "a.rhai -> b.rhai -> a.rhai"),
        ("me.rhai", "me.rhai -> me.rhai"),
    ] {
        for cmd in ["check", "script"] {
            let o = metaapo(&dir).arg(cmd).arg(file).output().unwrap();
            assert_eq!(o.status.code(), Some(1), "{cmd} {file}: {}", text(&o));
            contains(&text(&o), &["import cycle", chain]);
        }
    }
    std::fs::write(
        dir.join("missing.rhai"),
        "let x = 1;\nimport \"nowhere\" as n;\n",
    )
    .unwrap();
    let o = metaapo(&dir)
        .args(["check", "missing.rhai"])
        .output()
        .unwrap();
    contains(
        &text(&o),
        &["cannot find module \"nowhere\"", "missing.rhai:2:8"],
    );
}

#[test]
fn engine_limits_end_runaway_scripts_with_an_error() {
    let dir = scratch("limits");
    let cases = [
        (
            "array.rhai",
            "let a = [];\na.pad(2000000000, 0);\n",
            "--max-array",
            2,
        ),
        (
            "string.rhai",
            "let s = \"x\";\nloop { s += s; }\n",
            "--max-string",
            2,
        ),
        // Rhai checks a map grown by index assignment when it is next used.
        (
            "map.rhai",
            "let m = #{};\nfor i in 0..1100000 { m[`k${i}`] = i; }\nprint(m.len());\n",
            "--max-map",
            3,
        ),
        (
            "recursion.rhai",
            "fn f(n) { 1 + f(n + 1) }\nprint(f(0));\n",
            "--max-call-depth",
            2,
        ),
    ];
    for (name, source, flag, line) in cases {
        let out = fails(&dir, name, source, &[]);
        contains(&out, &[flag, &format!("{name}:{line}")]);
    }
    let deep = format!("let x = {}1{};\n", "(".repeat(5000), ")".repeat(5000));
    for cmd in ["check", "script"] {
        std::fs::write(dir.join("deep.rhai"), &deep).unwrap();
        let o = metaapo(&dir).arg(cmd).arg("deep.rhai").output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        contains(&text(&o), &["--max-expr-depth", "deep.rhai:1"]);
    }
    // The limits are the user's to change.
    let out = fails(
        &dir,
        "small.rhai",
        "let a = [1, 2, 3];\na.push(4);\na.push(5);\n",
        &["--max-array", "4"],
    );
    contains(&out, &["limit of 4", "small.rhai:3"]);
    let out = fails(
        &dir,
        "literal.rhai",
        "let a = [1, 2, 3, 4, 5];\n",
        &["--max-array", "4"],
    );
    contains(&out, &["--max-array", "literal.rhai:1"]);
    let o = metaapo(&dir).args(["script", "--help"]).output().unwrap();
    contains(
        &text(&o),
        &[
            "--max-array",
            "10000000",
            "--max-call-depth",
            "--max-sub-runs",
        ],
    );
}

#[test]
fn every_function_survives_edge_case_arguments() {
    let dir = scratch("edges");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/edge_calls.rhai");
    let o = metaapo(&dir)
        .arg("script")
        .arg(&script)
        .arg("--out")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    contains(&out, &["survived 118 calls"]);
    // Nothing was written outside the run directory.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(names.iter().all(|n| n == "run"), "{names:?}");
}

#[test]
fn sizes_are_checked_before_anything_is_allocated() {
    let dir = scratch("sizes");
    let out = fails(
        &dir,
        "n.rhai",
        "let w = world(\"tiny\");\nlet s = generate(w.policy(), [\"1+1=\"], #{ n: 1000000000000 });\n",
        &[],
    );
    contains(
        &out,
        &[
            "generate:",
            "n = 1000000000000",
            "would need about",
            "n.rhai:2",
        ],
    );
    assert!(!out.contains("generate: generate:"), "{out}");
    let out = fails(
        &dir,
        "hidden.rhai",
        "let l = meta_learner(#{ hidden: 100000000000 });\n",
        &[],
    );
    contains(
        &out,
        &["meta_learner", "hidden = 100000000000", "would need about"],
    );
    let out = fails(
        &dir,
        "self.rhai",
        "let r = run_script(\"self.rhai\", #{});\n",
        &[],
    );
    contains(
        &out,
        &["run_script", "nest", "--max-sub-runs 4", "self -> self"],
    );
}

#[test]
fn ctrl_c_stops_a_long_generate_within_seconds() {
    let dir = scratch("ctrlc");
    // About a minute of decoding on 2 cores; Ctrl-C must end it long before.
    let script = dir.join("long.rhai");
    std::fs::write(
        &script,
        "let w = world(\"tiny\");\nlog(#{ started: 1 });\n\
         let s = generate(w.policy(), [\"12+34=\"], #{ n: 200000, max_new_tokens: 8 });\n",
    )
    .unwrap();
    let out = dir.join("run");
    let mut child = metaapo(&dir)
        .arg("script")
        .arg(&script)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the script is in its generate call.
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(out.join("metrics.jsonl")).is_ok_and(|t| t.contains("started")) {
        assert!(started.elapsed().as_secs() < 60, "the script never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let asked = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            asked.elapsed().as_secs() < 20,
            "still running 20 s after Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let o = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{}", text(&o));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "interrupted");
}

// ---- every error says where ------------------------------------------------------------------

/// A file world around the tiny world's policy and a reward directory, with the given pair,
/// prompt and eval files and extra spec fields.
fn file_world(dir: &Path, pairs: &str, eval: &str, extra: &str) -> PathBuf {
    let world = common::tiny_world();
    let files = dir.join("files");
    if !files.join("policy").exists() {
        common::policy_and_reward(&files, &world);
    }
    std::fs::write(files.join("pairs.jsonl"), pairs).unwrap();
    std::fs::write(files.join("eval.jsonl"), eval).unwrap();
    let spec = files.join("world.json");
    std::fs::write(
        &spec,
        format!(
            "{{\"policy\": \"policy\", \"reward\": \"reward\", \"pairs\": \"pairs.jsonl\", \
             \"eval\": \"eval.jsonl\"{extra}}}"
        ),
    )
    .unwrap();
    spec
}

fn open_world(dir: &Path, spec: &Path) -> String {
    fails(
        dir,
        "open.rhai",
        &format!("let w = world({:?});\n", spec.display()),
        &[],
    )
}

#[test]
fn world_files_are_checked_when_they_load() {
    let dir = scratch("world-files");
    let pair = "{\"prompt\": \"1+1=\", \"chosen\": \"2\", \"rejected\": \"3\"}\n";
    let prompt = "{\"prompt\": \"2+2=\"}\n";
    let spec = file_world(&dir, "", prompt, "");
    contains(
        &open_world(&dir, &spec),
        &["pairs.jsonl", "`pairs`", "no records"],
    );
    let spec = file_world(&dir, pair, "\n\n", "");
    contains(
        &open_world(&dir, &spec),
        &["eval.jsonl", "`eval`", "no records"],
    );
    let spec = file_world(&dir, pair, prompt, ", \"eval_temperature\": -1");
    contains(
        &open_world(&dir, &spec),
        &["world.json", "`eval_temperature`", "-1"],
    );
    let spec = file_world(&dir, pair, prompt, ", \"max_new_tokens\": \"many\"");
    contains(&open_world(&dir, &spec), &["world.json", "max_new_tokens"]);
    let chat = "{\"prompt\": [{\"role\": \"narrator\", \"content\": \"hi\"}], \"chosen\": \"a\", \"rejected\": \"b\"}\n";
    let spec = file_world(&dir, &format!("{pair}{chat}"), prompt, "");
    contains(
        &open_world(&dir, &spec),
        &["pairs.jsonl:2", "`prompt[0].role`", "narrator"],
    );
    // The policy has no chat template: a conversation fails when the world loads, not later.
    let chat = "{\"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}], \"chosen\": \"a\", \"rejected\": \"b\"}\n";
    let spec = file_world(&dir, &format!("{pair}{pair}{chat}"), prompt, "");
    contains(
        &open_world(&dir, &spec),
        &["pairs.jsonl:3", "chat template"],
    );
    // A byte-order mark is skipped; a byte that is not UTF-8 is located.
    let spec = file_world(&dir, &format!("\u{feff}{pair}"), prompt, "");
    std::fs::write(
        dir.join("ok.rhai"),
        format!(
            "let w = world({:?});\nprint(w.pairs.len());\n",
            spec.display()
        ),
    )
    .unwrap();
    let o = metaapo(&dir)
        .arg("script")
        .arg("ok.rhai")
        .arg("--out")
        .arg(dir.join("run-ok"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut bad = pair.as_bytes().to_vec();
    bad.extend(b"{\"prompt\": \"\xff\"}\n");
    std::fs::write(dir.join("files/bad.jsonl"), &bad).unwrap();
    let out = fails(
        &dir,
        "utf8.rhai",
        &format!(
            "let p = load_pairs({:?});\n",
            dir.join("files/bad.jsonl").display()
        ),
        &[],
    );
    contains(&out, &["bad.jsonl:2:13", "byte offset", "not UTF-8"]);
}

#[test]
fn model_files_name_the_field_or_tensor_at_fault() {
    let dir = scratch("model-files");
    let good = tiny_model_dir(&dir);
    let load = |d: &Path| {
        metaapo::model::load_pretrained(d, &candle_core::Device::Cpu, DType::F32, false)
            .map(|_| ())
            .unwrap_err()
    };
    let copy = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", hf::WEIGHTS] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    // A config field of the wrong type.
    let d = copy("config-type");
    let config = std::fs::read_to_string(d.join("config.json")).unwrap();
    let config = config.replace("\"hidden_size\": 16", "\"hidden_size\": \"16\"");
    std::fs::write(d.join("config.json"), config).unwrap();
    contains(
        &format!("{:#}", load(&d)),
        &["config.json", "field `hidden_size`"],
    );
    // Tensors: a header whose shape disagrees with its bytes, an integer tensor, NaN weights.
    let write = |name: &str, edit: &dyn Fn(&mut Vec<f32>) -> DType| {
        let d = copy(name);
        let (mut tensors, _) =
            metaapo::model::weights::read(&d.join(hf::WEIGHTS), &candle_core::Device::Cpu).unwrap();
        let key = "model.layers.0.mlp.up_proj.weight";
        let t = &tensors[key];
        let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dtype = edit(&mut values);
        let new = candle_core::Tensor::from_vec(values, t.shape(), t.device())
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        tensors.insert(key.to_string(), new);
        candle_core::safetensors::save(&tensors, d.join(hf::WEIGHTS)).unwrap();
        d
    };
    let d = write("nan", &|v| {
        v[3] = f32::NAN;
        DType::F32
    });
    contains(
        &format!("{:#}", load(&d)),
        &["model.layers.0.mlp.up_proj.weight", "NaN"],
    );
    let d = write("int", &|_| DType::U32);
    contains(
        &format!("{:#}", load(&d)),
        &["model.layers.0.mlp.up_proj.weight", "not floating point"],
    );
    let d = copy("header");
    let mut bytes = std::fs::read(d.join(hf::WEIGHTS)).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let key = "\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[16]";
    assert!(header.contains(key), "{header}");
    let header = header.replace(key, &key.replace("[16]", "[17]"));
    bytes.splice(8..8 + n, header.into_bytes());
    std::fs::write(d.join(hf::WEIGHTS), bytes).unwrap();
    contains(
        &format!("{:#}", load(&d)),
        &["model.safetensors", "tensor `model.norm.weight`", "[17]"],
    );
}

#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_refused_at_load() {
    let dir = scratch("vocab");
    let world = common::tiny_world();
    // A model with a vocabulary of 8 next to the world's larger tokenizer.
    let mut raw = world.model(false).unwrap().config.raw.clone();
    raw["vocab_size"] = 8.into();
    let config = metaapo::model::config::ModelConfig::from_json(raw).unwrap();
    let tensors = common::random_tensors(&config, 3);
    let model =
        metaapo::model::CausalLm::from_tensors(config, tensors, "test", DType::F32, false).unwrap();
    let d = dir.join("policy");
    hf::save(&d, &model, Some(&world.tokenizer)).unwrap();
    let err = metaapo::model::load_pretrained(&d, &candle_core::Device::Cpu, DType::F32, false)
        .map(|_| ())
        .unwrap_err();
    let ids = world.tokenizer.vocab_size().to_string();
    contains(
        &format!("{err:#}"),
        &["policy", "the tokenizer has", &ids, "has 8"],
    );
}

#[test]
fn script_errors_come_first_and_name_each_function_once() {
    let dir = scratch("messages");
    let out = fails(
        &dir,
        "temp.rhai",
        "let w = world(\"tiny\");\nlet s = generate(w.policy(), [\"1+1=\"], #{ temperature: -1.0 });\n",
        &[],
    );
    contains(&out, &["generate: temperature must be >= 0", "temp.rhai:2"]);
    assert!(!out.contains("generate: generate:"), "{out}");
    let out = fails(
        &dir,
        "betas.rhai",
        "let p = world(\"tiny\").policy();\nlet o = optimizer(p, #{ betas: [2, -1] });\n",
        &[],
    );
    contains(&out, &["betas[0]", "[0, 1)", "betas.rhai:2"]);
    // --set for a script that reads no parameters: refused before anything runs.
    let out = fails(
        &dir,
        "noparams.rhai",
        "print(\"it ran\");\n",
        &["--set", "beta=1"],
    );
    contains(&out, &["--set", "never calls params()"]);
    assert!(!out.contains("it ran"), "{out}");
    // The run directory cannot take summary.json: the script's own error still comes first.
    let run = dir.join("run-first.rhai");
    std::fs::create_dir_all(run.join("summary.json")).unwrap();
    let path = dir.join("first.rhai");
    std::fs::write(
        &path,
        "log(#{ a: 1 });\nthrow \"the script's own error\";\n",
    )
    .unwrap();
    let o = metaapo(&dir)
        .arg("script")
        .arg(&path)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    let own = err.find("the script's own error").expect(&err);
    let summary = err.find("summary.json").expect(&err);
    assert!(own < summary, "{err}");
    let names: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
}

#[test]
fn the_repl_survives_bad_input() {
    let dir = scratch("repl");
    let mut child = metaapo(&dir)
        .arg("repl")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"let x = 40;\n\xff\xfe bad\nprint(x + 2);\nlet y = [1,\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    contains(&out, &["not UTF-8", "42", "still open", "let y = [1,"]);
}

#[test]
fn long_inputs_are_truncated_to_the_models_context() {
    let dir = scratch("long");
    let long = "9".repeat(1_000_000);
    std::fs::write(
        dir.join("long.jsonl"),
        format!("{{\"prompt\": \"1+1=\", \"chosen\": \"{long}\", \"rejected\": \"3\"}}\n{{\"prompt\": \"{long}+1=\", \"chosen\": \"2\", \"rejected\": \"3\"}}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("score.rhai"),
        "let p = world(\"tiny\").policy();\nlet s = score(p, p.frozen(), load_pairs(\"long.jsonl\"));\n\
         if !(s.chosen.to_array()[0] < 0.0) { throw \"not scored\"; }\nprint(\"scored\");\n\
         let g = generate(p, [`${\"9\".pad(1000000, \"9\")}+1=`], #{ max_new_tokens: 4 });\n\
         print(`generated ${g.len()}`);\n",
    )
    .unwrap();
    let o = metaapo(&dir)
        .args(["script", "score.rhai", "--out"])
        .arg(dir.join("run"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    contains(&text(&o), &["scored", "generated 1"]);
}

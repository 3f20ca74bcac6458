//! A corpus of bad inputs, one class at a time (preference and prompt files, world files,
//! scripts, model directories, GGUF files, output paths, resumes): each must end in one clean
//! error (exit code 1, no panic or abort) that names where the problem is.

mod common;

use candle_core::DType;
use metaapo::model::hf;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One bad input: files to write (relative path, bytes), the metaapo arguments, and the texts
/// the error must contain (the place, and what is wrong).
struct Case {
    label: &'static str,
    files: Vec<(String, Vec<u8>)>,
    args: Vec<String>,
    expect: Vec<String>,
}

fn s(x: &str) -> String {
    x.to_string()
}

/// A script case: `source` runs as `<label>.rhai`.
fn script(label: &'static str, source: &str, expect: &[&str]) -> Case {
    let name = format!("{label}.rhai");
    Case {
        label,
        files: vec![(name.clone(), source.as_bytes().to_vec())],
        args: vec![s("script"), name],
        expect: expect.iter().map(|e| s(e)).collect(),
    }
}

/// A data-file case: `file` holds `content`, read by `reader("file")`.
fn data(label: &'static str, reader: &str, file: &str, content: &[u8], expect: &[&str]) -> Case {
    let mut c = script(label, &format!("let x = {reader}({file:?});\n"), expect);
    c.files.push((s(file), content.to_vec()));
    c
}

/// A world-file case: `world.json` holds `spec`, next to valid policy, reward and data files.
fn world(label: &'static str, spec: &str, expect: &[&str]) -> Case {
    let mut c = script(label, "let w = world(\"w/world.json\");\n", expect);
    c.files.push((s("w/world.json"), spec.as_bytes().to_vec()));
    c
}

/// A model-directory case and the edit that breaks the tiny model's files.
type ModelCase = (Case, fn(&Path));

/// A model-directory case: the tiny model's files, edited, converted by `metaapo convert`.
fn model(label: &'static str, edit: fn(&Path), expect: &[&str]) -> ModelCase {
    (
        Case {
            label,
            files: vec![],
            args: vec![s("convert"), format!("m-{label}"), format!("out-{label}")],
            expect: expect.iter().map(|e| s(e)).collect(),
        },
        edit,
    )
}

fn gguf(label: &'static str, bytes: Vec<u8>) -> Case {
    let file = format!("{label}.gguf");
    Case {
        label,
        files: vec![(file.clone(), bytes)],
        args: vec![s("convert"), file.clone(), format!("out-{label}")],
        expect: vec![file],
    }
}

const PAIR: &str = "{\"prompt\": \"1+1=\", \"chosen\": \"2\", \"rejected\": \"3\"}";

fn gguf_header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

fn edit_tensor(
    dir: &Path,
    f: impl FnOnce(&mut std::collections::HashMap<String, candle_core::Tensor>),
) {
    let path = dir.join(hf::WEIGHTS);
    let (mut t, _) = metaapo::model::weights::read(&path, &candle_core::Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

const NORM: &str = "model.norm.weight";

fn cases() -> (Vec<Case>, Vec<ModelCase>) {
    let mut c = vec![];
    // Preference files: the file and line, and the field.
    let pairs = |label, content: &str, expect: &[&str]| {
        data(label, "load_pairs", "p.jsonl", content.as_bytes(), expect)
    };
    c.push(pairs(
        "pairs_bad_json",
        &format!("{PAIR}\n{{\"prompt\": \n"),
        &["p.jsonl:2", "invalid JSON"],
    ));
    c.push(pairs(
        "pairs_no_chosen",
        "{\"prompt\": \"a\", \"rejected\": \"b\"}\n",
        &["p.jsonl:1", "`chosen`"],
    ));
    c.push(pairs(
        "pairs_no_rejected",
        "{\"prompt\": \"a\", \"chosen\": \"b\"}\n",
        &["p.jsonl:1", "`rejected`"],
    ));
    c.push(pairs(
        "pairs_no_prompt",
        "{\"chosen\": \"a\", \"rejected\": \"b\"}\n",
        &["p.jsonl:1", "`prompt`"],
    ));
    c.push(pairs(
        "pairs_prompt_number",
        "{\"prompt\": 3, \"chosen\": \"a\", \"rejected\": \"b\"}\n",
        &["p.jsonl:1", "`prompt`"],
    ));
    c.push(pairs(
        "pairs_chosen_number",
        "{\"prompt\": \"a\", \"chosen\": 1, \"rejected\": \"b\"}\n",
        &["p.jsonl:1", "`chosen`"],
    ));
    c.push(pairs(
        "pairs_empty_prompt",
        &format!("{PAIR}\n{PAIR}\n{{\"prompt\": \" \", \"chosen\": \"a\", \"rejected\": \"b\"}}\n"),
        &["p.jsonl:3", "`prompt` is empty"],
    ));
    c.push(pairs(
        "pairs_no_messages",
        "{\"prompt\": [], \"chosen\": \"a\", \"rejected\": \"b\"}\n",
        &["p.jsonl:1", "`prompt` is empty"],
    ));
    c.push(pairs(
        "pairs_no_content",
        "{\"prompt\": [{\"role\": \"user\"}], \"chosen\": \"a\", \"rejected\": \"b\"}\n",
        &["p.jsonl:1", "`prompt[0]`", "content"],
    ));
    c.push(pairs(
        "pairs_no_role",
        "{\"prompt\": [{\"content\": \"x\"}], \"chosen\": \"a\", \"rejected\": \"b\"}\n",
        &["p.jsonl:1", "`prompt[0]`", "role"],
    ));
    c.push(pairs("pairs_unknown_role", "{\"prompt\": [{\"role\": \"bot\", \"content\": \"x\"}], \"chosen\": \"a\", \"rejected\": \"b\"}\n", &["p.jsonl:1", "`prompt[0].role`", "bot"]));
    c.push(pairs("pairs_content_number", "{\"prompt\": [{\"role\": \"user\", \"content\": 5}], \"chosen\": \"a\", \"rejected\": \"b\"}\n", &["p.jsonl:1", "`prompt[0]`"]));
    c.push(pairs(
        "pairs_array_line",
        "[1, 2]\n",
        &["p.jsonl:1", "`prompt`"],
    ));
    c.push(pairs(
        "pairs_null_line",
        "null\n",
        &["p.jsonl:1", "`prompt`"],
    ));
    c.push(pairs(
        "pairs_bom_then_bad",
        &format!("\u{feff}{PAIR}\n{{\"prompt\": 1}}\n"),
        &["p.jsonl:2", "`prompt`"],
    ));
    c.push(data(
        "pairs_not_utf8",
        "load_pairs",
        "p.jsonl",
        &[PAIR.as_bytes(), b"\n\n{\"prompt\": \"\xc3\x28\"}\n"].concat(),
        &["p.jsonl:3:13", "byte offset", "UTF-8"],
    ));
    c.push(data(
        "pairs_json_not_array",
        "load_pairs",
        "p.json",
        b"{\"prompt\": \"a\"}",
        &["p.json", "array"],
    ));
    c.push(data(
        "pairs_json_record",
        "load_pairs",
        "p.json",
        b"[{\"prompt\": \"a\"}]",
        &["p.json record 0", "`chosen`"],
    ));
    c.push(script(
        "pairs_missing_file",
        "let p = load_pairs(\"nowhere.jsonl\");\n",
        &["nowhere.jsonl", "cannot read"],
    ));
    let mut dir = script(
        "pairs_directory",
        "let p = load_pairs(\"adir\");\n",
        &["adir"],
    );
    dir.files.push((s("adir/x"), vec![]));
    c.push(dir);
    // Prompt files.
    let prompts = |label, content: &[u8], expect: &[&str]| {
        data(label, "load_prompts", "q.jsonl", content, expect)
    };
    c.push(prompts(
        "prompts_no_prompt",
        b"{\"text\": \"a\"}\n",
        &["q.jsonl:1", "`prompt`"],
    ));
    c.push(prompts(
        "prompts_empty",
        b"{\"prompt\": \"\"}\n",
        &["q.jsonl:1", "empty"],
    ));
    c.push(prompts(
        "prompts_bad_json",
        b"{\"prompt\": \"a\"}\n{\n",
        &["q.jsonl:2", "invalid JSON"],
    ));
    c.push(prompts(
        "prompts_not_utf8",
        b"{\"prompt\": \"\xff\"}\n",
        &["q.jsonl:1:13", "UTF-8"],
    ));
    // World files: the file and the field.
    let base = "\"policy\": \"policy\", \"reward\": \"reward\", \"pairs\": \"pairs.jsonl\", \"eval\": \"eval.jsonl\"";
    c.push(world(
        "world_unknown_key",
        &format!("{{{base}, \"temperature\": 1}}"),
        &["world.json", "temperature"],
    ));
    c.push(world(
        "world_no_policy",
        "{\"reward\": \"reward\", \"pairs\": \"pairs.jsonl\", \"eval\": \"eval.jsonl\"}",
        &["world.json", "policy"],
    ));
    c.push(world(
        "world_lr_string",
        &format!("{{{base}, \"lr\": \"fast\"}}"),
        &["world.json", "field `lr`"],
    ));
    c.push(world(
        "world_lr_negative",
        &format!("{{{base}, \"lr\": -1}}"),
        &["world.json", "`lr`"],
    ));
    c.push(world(
        "world_temperature",
        &format!("{{{base}, \"eval_temperature\": -1}}"),
        &["world.json", "`eval_temperature`"],
    ));
    c.push(world(
        "world_zero_tokens",
        &format!("{{{base}, \"max_new_tokens\": 0}}"),
        &["world.json", "`max_new_tokens`"],
    ));
    c.push(world(
        "world_tokens_string",
        &format!("{{{base}, \"max_new_tokens\": \"x\"}}"),
        &["world.json", "max_new_tokens"],
    ));
    let spec = |from: &str, to: &str| format!("{{{}}}", base.replace(from, to));
    c.push(world(
        "world_missing_pairs",
        &spec("pairs.jsonl", "gone.jsonl"),
        &["gone.jsonl"],
    ));
    c.push(world(
        "world_empty_eval",
        &spec("eval.jsonl", "empty.jsonl"),
        &["empty.jsonl", "`eval`", "no records"],
    ));
    c.push(world(
        "world_missing_policy_dir",
        &spec("\"policy\": \"policy\"", "\"policy\": \"nope\""),
        &["nope"],
    ));
    c.push(world(
        "world_missing_reward",
        &spec("\"reward\": \"reward\"", "\"reward\": \"nope\""),
        &["nope", "reward"],
    ));
    c.push(world(
        "world_not_json",
        "{policy: 1}",
        &["world.json", "not valid JSON"],
    ));
    c.push(world("world_array", "[1]", &["world.json"]));
    let mut w = world("world_not_utf8", "", &["world.json:1:2", "UTF-8"]);
    w.files.last_mut().unwrap().1 = b"{\xff}".to_vec();
    c.push(w);
    // Scripts: the script position.
    c.push(script(
        "script_syntax",
        "let x = ;\n",
        &["script_syntax.rhai:1:"],
    ));
    c.push(script(
        "script_unknown_variable",
        "let x = 1;\nprint(y);\n",
        &["script_unknown_variable.rhai:2:"],
    ));
    c.push(script(
        "script_unknown_function",
        "let x = 1;\nfrobnicate(x);\n",
        &["script_unknown_function.rhai:2:", "frobnicate"],
    ));
    c.push(script(
        "script_wrong_argument",
        "let x = 1;\nlet p = load_pairs(1);\n",
        &["script_wrong_argument.rhai:2:", "load_pairs"],
    ));
    c.push(script(
        "script_self_import",
        "import \"script_self_import\" as me;\n",
        &["import cycle"],
    ));
    c.push(script(
        "script_missing_import",
        "\nimport \"nowhere\" as n;\n",
        &["script_missing_import.rhai:2:8", "nowhere"],
    ));
    let mut bad_module = script(
        "script_module_not_utf8",
        "import \"mod_bad\" as m;\n",
        &[
            "mod_bad.rhai:1:",
            "UTF-8",
            "script_module_not_utf8.rhai:1:8",
        ],
    );
    bad_module
        .files
        .push((s("mod_bad.rhai"), b"let x = \"\xfe\";\n".to_vec()));
    c.push(bad_module);
    c.push(script(
        "script_array_limit",
        "let a = [];\na.pad(3000000000, 0);\n",
        &["script_array_limit.rhai:2:", "--max-array"],
    ));
    c.push(script(
        "script_string_limit",
        "let s = \"ab\";\nloop { s += s; }\n",
        &["script_string_limit.rhai:2:", "--max-string"],
    ));
    c.push(script(
        "script_recursion",
        "fn f(x) { f(x) }\nf(1);\n",
        &["script_recursion.rhai:2:", "--max-call-depth"],
    ));
    c.push(script(
        "script_expression_depth",
        &format!("let x = {}1{};\n", "[".repeat(3000), "]".repeat(3000)),
        &["script_expression_depth.rhai:1:", "--max-expr-depth"],
    ));
    c.push(script(
        "script_sub_runs",
        "run_script(\"script_sub_runs.rhai\", #{});\n",
        &["run_script", "--max-sub-runs"],
    ));
    c.push(script(
        "script_huge_n",
        "let w = world(\"tiny\");\ngenerate(w.policy(), [\"1+1=\"], #{ n: 100000000000000 });\n",
        &["script_huge_n.rhai:2:", "generate", "would need about"],
    ));
    c.push(script("script_huge_tokens", "let w = world(\"tiny\");\ngenerate(w.policy(), [\"1+1=\"], #{ n: 100000, max_new_tokens: 1000000000 });\n", &["script_huge_tokens.rhai:2:", "would need about"]));
    c.push(script(
        "script_huge_hidden",
        "meta_learner(#{ hidden: 1000000000000 });\n",
        &[
            "script_huge_hidden.rhai:1:",
            "meta_learner",
            "would need about",
        ],
    ));
    c.push(script(
        "script_negative_n",
        "let w = world(\"tiny\");\ngenerate(w.policy(), [\"1+1=\"], #{ n: -1 });\n",
        &["script_negative_n.rhai:2:", "`n`"],
    ));
    c.push(script(
        "script_temperature",
        "let w = world(\"tiny\");\ngenerate(w.policy(), [\"1+1=\"], #{ temperature: -2.0 });\n",
        &["script_temperature.rhai:2:", "temperature"],
    ));
    c.push(script(
        "script_unknown_option",
        "let w = world(\"tiny\");\ngenerate(w.policy(), [\"1+1=\"], #{ nn: 2 });\n",
        &["script_unknown_option.rhai:2:", "`nn`"],
    ));
    c.push(script(
        "script_betas",
        "let p = world(\"tiny\").policy();\noptimizer(p, #{ betas: [1.5, 0.9] });\n",
        &["script_betas.rhai:2:", "betas[0]"],
    ));
    c.push(script(
        "script_eps",
        "let p = world(\"tiny\").policy();\noptimizer(p, #{ eps: 0.0 });\n",
        &["script_eps.rhai:2:", "eps"],
    ));
    c.push(script(
        "script_warmup",
        "let p = world(\"tiny\").policy();\noptimizer(p, #{ warmup: 2.0 });\n",
        &["script_warmup.rhai:2:", "warmup"],
    ));
    c.push(script("script_checkpoint_name", "let p = world(\"tiny\").policy();\nlet o = optimizer(p, #{});\no.checkpoint(\"a/../../b\");\n", &["script_checkpoint_name.rhai:3:", "plain folder name"]));
    c.push(script(
        "script_batches_zero",
        "let w = world(\"tiny\");\nw.pairs.batches(0);\n",
        &["script_batches_zero.rhai:2:", "batches"],
    ));
    c.push(script(
        "script_table_escape",
        "save_table([#{ a: 1 }], [\"a\"], \"../x\");\n",
        &["script_table_escape.rhai:1:", "leave the run directory"],
    ));
    c.push(script(
        "script_save_escape",
        "let p = world(\"tiny\").policy();\np.save(\"../../m\");\n",
        &["script_save_escape.rhai:2:", "leave the run directory"],
    ));
    c.push(script(
        "script_message_role",
        "let p = world(\"tiny\").policy();\nlogps(p, [[#{ role: \"oracle\", content: \"x\" }]], [\"y\"]);\n",
        &["script_message_role.rhai:2:", "oracle", "not a chat role"],
    ));
    c.push(script(
        "script_world_name",
        "world(\"nonesuch\");\n",
        &["script_world_name.rhai:1:", "nonesuch"],
    ));
    c.push(script(
        "script_resume_nothing",
        "let p = world(\"tiny\").policy();\nresume(\"nowhere\", optimizer(p, #{}));\n",
        &["script_resume_nothing.rhai:2:", "nowhere"],
    ));
    let mut incomplete = script(
        "script_resume_incomplete",
        "let p = world(\"tiny\").policy();\nresume(\"ck\", optimizer(p, #{}));\n",
        &["ck", "incomplete"],
    );
    incomplete
        .files
        .push((s("ck/trainer_state.json"), b"{}".to_vec()));
    c.push(incomplete);
    let mut not_utf8 = script(
        "script_not_utf8",
        "",
        &["script_not_utf8.rhai:2:3", "UTF-8"],
    );
    not_utf8.files[0].1 = b"let a = 1;\n//\xff\n".to_vec();
    c.push(not_utf8);
    let mut set = script(
        "script_unknown_set",
        "let p = params(#{ beta: 0.1 });\n",
        &["script_unknown_set.rhai:1:", "alpha", "beta"],
    );
    set.args.extend([s("--set"), s("alpha=1")]);
    c.push(set);
    let mut unread = script("script_set_unread", "print(1);\n", &["--set", "params()"]);
    unread.args.extend([s("--set"), s("beta=1")]);
    c.push(unread);
    let mut set_syntax = script(
        "script_set_syntax",
        "let x = ;\n",
        &["script_set_syntax.rhai:1:9", "Syntax error"],
    );
    set_syntax.args.extend([s("--set"), s("beta=1")]);
    c.push(set_syntax);
    let mut bad_set = script(
        "script_set_type",
        "let p = params(#{ beta: 0.1 });\n",
        &["beta"],
    );
    bad_set.args.extend([s("--set"), s("beta=high")]);
    c.push(bad_set);
    c.push(script(
        "world_validation_too_large",
        "let w = world(#{ name: \"tiny\", validation_size: 400 });\n",
        &[
            "world_validation_too_large.rhai:1:",
            "validation",
            "none of its 400 problems",
        ],
    ));
    // The iterative loops' choices and starting point: the value and what is offered.
    for (label, name, set, expect) in [
        (
            "choice_reference",
            "metaapo_dpo",
            "reference=iteration",
            &["reference must be one of", "lagged", "iteration"][..],
        ),
        (
            "choice_ties",
            "metaapo_dpo",
            "ties=maybe",
            &["ties", "keep", "maybe"],
        ),
        (
            "choice_optim",
            "online_dpo",
            "optim=sgd",
            &["optim", "published", "sgd"],
        ),
        (
            "choice_selm_reference",
            "selm",
            "reference=sft",
            &["reference", "iteration", "sft"],
        ),
        (
            "init_from_missing",
            "online_dpo",
            "init_from=no-such-dir",
            &["load_policy", "no-such-dir"],
        ),
    ] {
        c.push(Case {
            label,
            files: vec![],
            args: ["script", name, "--set", "world=tiny", "--set", set]
                .map(s)
                .to_vec(),
            expect: expect.iter().map(|e| s(e)).collect(),
        });
    }
    // GGUF files: the file named.
    c.push(gguf("gguf_empty", vec![]));
    c.push(gguf("gguf_magic", b"GGML\x03\x00\x00\x00".to_vec()));
    c.push(gguf("gguf_truncated", gguf_header(3, 0, 1)[..14].to_vec()));
    c.push(gguf("gguf_tensor_count", gguf_header(3, 1 << 40, 1 << 40)));
    c.push(gguf(
        "gguf_string_length",
        [
            gguf_header(3, 0, 1),
            (1u64 << 40).to_le_bytes().to_vec(),
            b"abc".to_vec(),
        ]
        .concat(),
    ));
    c.push(gguf("gguf_version", gguf_header(99, 0, 0)));
    c.push(gguf("gguf_no_metadata", gguf_header(3, 0, 0)));
    // Output paths: nothing of the user's is touched, and the path is named.
    c.push(Case {
        label: "convert_onto_file",
        files: vec![(s("taken"), b"mine".to_vec())],
        args: vec![s("convert"), s("m-good"), s("taken")],
        expect: vec![s("taken"), s("not a folder")],
    });
    c.push(Case {
        label: "convert_into_foreign_folder",
        files: vec![(s("theirs/notes.txt"), b"mine".to_vec())],
        args: vec![s("convert"), s("m-good"), s("theirs")],
        expect: vec![s("theirs"), s("did not write")],
    });
    c.push(Case {
        label: "convert_missing_input",
        files: vec![],
        args: vec![s("convert"), s("absent-model"), s("o")],
        expect: vec![s("absent-model")],
    });

    // Model directories: the file, the field or the tensor.
    let models: Vec<ModelCase> = vec![
        model(
            "model_no_config",
            |d| std::fs::remove_file(d.join("config.json")).unwrap(),
            &["config.json"],
        ),
        model(
            "model_config_not_json",
            |d| std::fs::write(d.join("config.json"), "{").unwrap(),
            &["config.json", "not valid JSON"],
        ),
        model(
            "model_config_type",
            |d| edit_json(&d.join("config.json"), |v| v["hidden_size"] = "16".into()),
            &["config.json", "field `hidden_size`"],
        ),
        model(
            "model_config_zero",
            |d| {
                edit_json(&d.join("config.json"), |v| {
                    v["num_hidden_layers"] = 0.into()
                })
            },
            &["config.json", "`num_hidden_layers`"],
        ),
        model(
            "model_config_missing_field",
            |d| {
                edit_json(&d.join("config.json"), |v| {
                    v.as_object_mut().unwrap().remove("vocab_size");
                })
            },
            &["config.json", "vocab_size"],
        ),
        model(
            "model_architecture",
            |d| {
                edit_json(&d.join("config.json"), |v| {
                    v["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
                })
            },
            &["config.json", "architectures"],
        ),
        model(
            "model_heads",
            |d| {
                edit_json(&d.join("config.json"), |v| {
                    v["num_attention_heads"] = 5.into()
                })
            },
            &["config.json", "num_attention_heads"],
        ),
        model(
            "model_activation",
            |d| edit_json(&d.join("config.json"), |v| v["hidden_act"] = "gelu".into()),
            &["config.json", "hidden_act"],
        ),
        model(
            "model_rope",
            |d| {
                edit_json(&d.join("config.json"), |v| {
                    v["rope_scaling"] = serde_json::json!({"rope_type": "yarn"})
                })
            },
            &["config.json", "rope_scaling"],
        ),
        model(
            "model_no_weights",
            |d| std::fs::remove_file(d.join(hf::WEIGHTS)).unwrap(),
            &["model.safetensors.index.json"],
        ),
        model(
            "model_truncated_weights",
            |d| {
                let b = std::fs::read(d.join(hf::WEIGHTS)).unwrap();
                std::fs::write(d.join(hf::WEIGHTS), &b[..b.len() / 2]).unwrap();
            },
            &["model.safetensors"],
        ),
        model(
            "model_weights_garbage",
            |d| {
                std::fs::write(
                    d.join(hf::WEIGHTS),
                    b"\xff\xff\xff\xff\xff\xff\xff\xffgarbage",
                )
                .unwrap()
            },
            &["model.safetensors"],
        ),
        model(
            "model_header_shape",
            |d| {
                let mut b = std::fs::read(d.join(hf::WEIGHTS)).unwrap();
                let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
                let h = String::from_utf8(b[8..8 + n].to_vec()).unwrap();
                let key = format!("\"{NORM}\":{{\"dtype\":\"F32\",\"shape\":[16]");
                let h = h.replace(&key, &key.replace("[16]", "[18]"));
                b.splice(8..8 + n, h.into_bytes());
                std::fs::write(d.join(hf::WEIGHTS), b).unwrap();
            },
            &["model.safetensors", NORM],
        ),
        model(
            "model_int_tensor",
            |d| {
                edit_tensor(d, |t| {
                    let x = t[NORM].to_dtype(DType::U32).unwrap();
                    t.insert(NORM.into(), x);
                })
            },
            &[NORM, "not floating point"],
        ),
        model(
            "model_nan",
            |d| {
                edit_tensor(d, |t| {
                    let x = (&t[NORM] / 0.0).unwrap();
                    t.insert(NORM.into(), x);
                })
            },
            &[NORM, "NaN or infinite"],
        ),
        model(
            "model_missing_tensor",
            |d| {
                edit_tensor(d, |t| {
                    t.remove(NORM);
                })
            },
            &[NORM, "missing"],
        ),
        model(
            "model_wrong_shape",
            |d| {
                edit_tensor(d, |t| {
                    let x = t[NORM].narrow(0, 0, 8).unwrap();
                    t.insert(NORM.into(), x);
                })
            },
            &[NORM, "shape"],
        ),
        model(
            "model_bad_tokenizer",
            |d| std::fs::write(d.join("tokenizer.json"), "{\"version\": 1}").unwrap(),
            &["tokenizer.json"],
        ),
        model(
            "model_tokenizer_config",
            |d| {
                std::fs::write(d.join("tokenizer.json"), "{}").unwrap();
                std::fs::write(d.join("tokenizer_config.json"), "{").unwrap();
            },
            &["tokenizer"],
        ),
        model(
            "model_index",
            |d| {
                std::fs::remove_file(d.join(hf::WEIGHTS)).unwrap();
                std::fs::write(d.join(hf::INDEX), "{\"metadata\": {}}").unwrap();
            },
            &[hf::INDEX, "weight_map"],
        ),
        model(
            "model_index_shard",
            |d| {
                std::fs::remove_file(d.join(hf::WEIGHTS)).unwrap();
                std::fs::write(
                    d.join(hf::INDEX),
                    "{\"weight_map\": {\"a\": \"shard-1.safetensors\"}}",
                )
                .unwrap();
            },
            &["shard-1.safetensors"],
        ),
    ];
    (c, models)
}

fn write_world_files(dir: &Path, world: &metaapo::world::BuiltinWorld) {
    let w = dir.join("w");
    common::policy_and_reward(&w, world);
    std::fs::write(w.join("pairs.jsonl"), format!("{PAIR}\n")).unwrap();
    std::fs::write(w.join("eval.jsonl"), "{\"prompt\": \"2+2=\"}\n").unwrap();
    std::fs::write(w.join("empty.jsonl"), "").unwrap();
}

/// The tiny test model with the tiny world's tokenizer, as a HF directory.
fn model_dir(dir: &Path, name: &str, world: &metaapo::world::BuiltinWorld) -> PathBuf {
    let d = dir.join(name);
    let config = common::tiny_config("LlamaForCausalLM", false);
    let model = metaapo::model::CausalLm::from_tensors(
        config.clone(),
        common::random_tensors(&config, 1),
        "test",
        DType::F32,
        false,
    )
    .unwrap();
    hf::save(&d, &model, Some(&world.tokenizer)).unwrap();
    d
}

#[test]
fn every_bad_input_ends_in_one_located_error() {
    let dir = std::env::temp_dir().join(format!("metaapo-corpus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let world = common::tiny_world();
    write_world_files(&dir, &world);
    model_dir(&dir, "m-good", &world);
    let (scripts, models) = cases();
    let mut all = vec![];
    for (case, edit) in models {
        let d = model_dir(&dir, &format!("m-{}", case.label), &world);
        edit(&d);
        all.push(case);
    }
    all.extend(scripts);
    let mut failures = vec![];
    for case in &all {
        for (path, bytes) in &case.files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_metaapo"));
        cmd.env("METAAPO_CACHE", common::shared_cache())
            .env_remove("RUST_BACKTRACE")
            .current_dir(&dir)
            .args(&case.args);
        if case.args[0] == "script" {
            cmd.arg("--out")
                .arg(dir.join(format!("run-{}", case.label)));
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        let clean = o.status.code() == Some(1)
            && err.starts_with("error: ")
            && !err.contains("panicked")
            && !err.contains("internal error");
        let missing: Vec<&String> = case
            .expect
            .iter()
            .filter(|e| !err.contains(e.as_str()))
            .collect();
        if !clean || !missing.is_empty() {
            failures.push(format!(
                "{} ({:?}): missing {missing:?}\n{err}{}",
                case.label,
                o.status,
                String::from_utf8_lossy(&o.stdout)
            ));
        }
    }
    println!(
        "corpus: {} bad inputs, {} clean located errors",
        all.len(),
        all.len() - failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n----\n"));
    // The user's file and folder beside the refused conversions are untouched.
    assert_eq!(std::fs::read(dir.join("taken")).unwrap(), b"mine");
    assert_eq!(
        std::fs::read(dir.join("theirs/notes.txt")).unwrap(),
        b"mine"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

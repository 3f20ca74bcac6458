//! Saving and loading: HF directories round-trip exactly, checkpoints restore model, optimizer
//! and RNG, writes are atomic, and bad files give errors that name the file and the tensor.

mod common;

use candle_core::{DType, Device};
use metaapo::data::encode::EncodedSeq;
use metaapo::model::{hf, CausalLm};
use metaapo::score::sequence_logps;
use metaapo::train::checkpoint::{self, RngState, TrainerState};
use metaapo::train::grads::Gradients;
use metaapo::train::optimizer::{AdamW, AdamWConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("metaapo-io-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn seqs() -> Vec<EncodedSeq> {
    vec![
        EncodedSeq {
            ids: vec![3, 4, 5, 6, 2],
            prompt_len: 2,
        },
        EncodedSeq {
            ids: vec![7, 8, 9, 2],
            prompt_len: 1,
        },
    ]
}

fn logps(m: &CausalLm) -> Vec<f32> {
    sequence_logps(m, &seqs(), 0)
        .unwrap()
        .sum
        .to_vec1()
        .unwrap()
}

fn load_err(dir: &std::path::Path) -> String {
    format!(
        "{:#}",
        hf::load(dir, &Device::Cpu, DType::F32, false).unwrap_err()
    )
}

#[test]
fn hf_directory_round_trips_exactly() {
    for (arch, tied) in [("LlamaForCausalLM", false), ("Qwen2ForCausalLM", true)] {
        let model = common::tiny_model(arch, tied, DType::F32, true);
        let dir = tmp(&format!("hf-{arch}"));
        hf::save(&dir, &model, None).unwrap();
        let (back, tok) = hf::load(&dir, &Device::Cpu, DType::F32, false).unwrap();
        assert!(tok.is_none());
        assert_eq!(logps(&model), logps(&back));
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["architectures"][0], arch);
        assert_eq!(cfg["tie_word_embeddings"], tied);
        // HF names only; a tied model stores no lm_head.
        let names: Vec<String> =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
                .unwrap()
                .into_keys()
                .collect();
        assert_eq!(names.contains(&"lm_head.weight".to_string()), !tied);
        assert!(names
            .iter()
            .all(|n| n.starts_with("model.") || n == "lm_head.weight"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn frozen_copy_shares_nothing_with_the_policy() {
    let policy = common::tiny_model("LlamaForCausalLM", false, DType::F32, true);
    let reference = policy.frozen().unwrap();
    assert!(!reference.is_trainable() && reference.vars().is_empty());
    let before = logps(&reference);
    let mut opt = AdamW::new(
        policy.vars(),
        AdamWConfig {
            lr: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    let mut g = Gradients::new();
    g.accumulate(
        sequence_logps(&policy, &seqs(), 0)
            .unwrap()
            .sum
            .mean_all()
            .unwrap()
            .neg()
            .unwrap(),
        policy.vars(),
    )
    .unwrap();
    opt.step(&g, 0.1).unwrap();
    assert_ne!(logps(&policy), before, "the policy should have moved");
    assert_eq!(
        logps(&reference),
        before,
        "the reference moved with the policy"
    );
}

#[test]
fn checkpoint_restores_model_optimizer_and_rng() {
    let model = common::tiny_model("Qwen2ForCausalLM", true, DType::F32, true);
    let mut opt = AdamW::new(model.vars(), AdamWConfig::default()).unwrap();
    let mut g = Gradients::new();
    g.accumulate(
        sequence_logps(&model, &seqs(), 0)
            .unwrap()
            .sum
            .mean_all()
            .unwrap(),
        model.vars(),
    )
    .unwrap();
    opt.step(&g, 1e-3).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let _: Vec<u32> = (0..17).map(|_| rng.random()).collect();
    let mut counters = serde_json::Map::new();
    counters.insert("online/annotations".into(), 24.into());
    let state = TrainerState {
        global_step: 1,
        rng: RngState::capture(&rng),
        counters,
        meta_learners: vec![],
    };
    let dir = tmp("ckpt");
    checkpoint::save(&dir, &model, None, &opt, &state, &|_| Ok(())).unwrap();
    // Overwriting a checkpoint leaves a complete one and no temporary folders.
    checkpoint::save(&dir, &model, None, &opt, &state, &|_| Ok(())).unwrap();
    let parent = dir.parent().unwrap();
    let stem = dir.file_name().unwrap().to_string_lossy().to_string();
    let leftovers = std::fs::read_dir(parent).unwrap().filter(|e| {
        let n = e
            .as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .to_string();
        n.starts_with(&stem) && n != stem
    });
    assert_eq!(leftovers.count(), 0);

    let (back, _) = hf::load(&dir, &Device::Cpu, DType::F32, true).unwrap();
    assert_eq!(logps(&back), logps(&model));
    let mut opt2 = AdamW::new(back.vars(), AdamWConfig::default()).unwrap();
    opt2.load(&dir.join(checkpoint::OPTIMIZER)).unwrap();
    assert_eq!(opt2.steps(), 1);
    let loaded = checkpoint::load_state(&dir).unwrap();
    assert_eq!(loaded, state);
    let mut resumed = loaded.rng.restore().unwrap();
    let a: Vec<u64> = (0..5).map(|_| rng.random()).collect();
    let b: Vec<u64> = (0..5).map(|_| resumed.random()).collect();
    assert_eq!(a, b);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_atomic_write_leaves_the_old_folder() {
    use metaapo::atomic::{write_dir, Replace};
    let dir = tmp("atomic");
    write_dir(&dir, "test", Replace::Never, "", |d| {
        Ok(std::fs::write(d.join("a"), "old")?)
    })
    .unwrap();
    let err = write_dir(&dir, "test", Replace::SameKind, "", |d| {
        std::fs::write(d.join("a"), "half")?;
        anyhow::bail!("disk full")
    });
    assert!(err.is_err());
    assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "old");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_model_directories_name_the_file_and_tensor() {
    let good = tmp("good");
    hf::save(
        &good,
        &common::tiny_model("LlamaForCausalLM", false, DType::F32, false),
        None,
    )
    .unwrap();
    let copy = |name: &str| {
        let d = tmp(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    let edit_config = |d: &PathBuf, f: &dyn Fn(&mut serde_json::Value)| {
        let p = d.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(p, v.to_string()).unwrap();
    };

    let d = copy("no-config");
    std::fs::remove_file(d.join("config.json")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("config.json"), "{e}");

    let d = copy("bad-json");
    std::fs::write(d.join("config.json"), "{\"vocab_size\": 4,").unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );

    let d = copy("arch");
    edit_config(&d, &|v| {
        v["architectures"] = serde_json::json!(["GPT2LMHeadModel"])
    });
    let e = load_err(&d);
    assert!(
        e.contains("unsupported architecture") && e.contains("GPT2LMHeadModel"),
        "{e}"
    );

    let d = copy("missing-field");
    edit_config(&d, &|v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    let e = load_err(&d);
    assert!(
        e.contains("hidden_size") && e.contains("config.json"),
        "{e}"
    );

    // A config that disagrees with the weights: the error gives both shapes.
    let d = copy("shape");
    edit_config(&d, &|v| v["intermediate_size"] = 25.into());
    let e = load_err(&d);
    assert!(
        e.contains("gate_proj.weight") && e.contains("[25, 16]") && e.contains("model.safetensors"),
        "{e}"
    );

    let d = copy("missing-tensor");
    let mut tensors =
        candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&tensors, d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight")
            && e.contains("missing")
            && e.contains("model.safetensors"),
        "{e}"
    );

    let d = copy("corrupt");
    std::fs::write(d.join("model.safetensors"), b"not a safetensors file").unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors"), "{e}");

    let d = copy("no-weights");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors.index.json"), "{e}");

    let gguf = tmp("garbage.gguf");
    std::fs::write(&gguf, b"GGUF but not really").unwrap();
    let e = format!(
        "{:#}",
        metaapo::model::load_pretrained(&gguf, &Device::Cpu, DType::F32, false).unwrap_err()
    );
    assert!(e.contains("garbage.gguf"), "{e}");
    let _ = std::fs::remove_file(&gguf);
    for name in [
        "good",
        "no-config",
        "bad-json",
        "arch",
        "missing-field",
        "shape",
        "missing-tensor",
        "corrupt",
        "no-weights",
    ] {
        let _ = std::fs::remove_dir_all(tmp(name));
    }
}

#[test]
fn sharded_checkpoints_load() {
    let model = common::tiny_model("LlamaForCausalLM", false, DType::F32, false);
    let dir = tmp("sharded");
    hf::save(&dir, &model, None).unwrap();
    let all = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (mut a, mut b) = (
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    );
    let mut map = serde_json::Map::new();
    for (i, (name, t)) in all.into_iter().enumerate() {
        let file = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(name.clone(), file.into());
        if i % 2 == 0 {
            a.insert(name, t)
        } else {
            b.insert(name, t)
        };
    }
    candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
    std::fs::write(
        dir.join(hf::INDEX),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let (back, _) = hf::load(&dir, &Device::Cpu, DType::F32, false).unwrap();
    assert_eq!(logps(&back), logps(&model));
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_malformed_preference_line_names_the_file_line_and_field() {
    let dir = tmp("jsonl");
    std::fs::create_dir_all(&dir).unwrap();
    let good = r#"{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}], "rejected": "go away"}"#;
    let cases = [
        ("bad-json", r#"{"prompt": "x", "chosen": "#, "invalid JSON"),
        (
            "no-chosen",
            r#"{"prompt": "x", "rejected": "y"}"#,
            "missing field `chosen`",
        ),
        (
            "empty-prompt",
            r#"{"prompt": "  ", "chosen": "a", "rejected": "b"}"#,
            "field `prompt` is empty",
        ),
        (
            "no-messages",
            r#"{"prompt": [], "chosen": "a", "rejected": "b"}"#,
            "field `prompt` is empty",
        ),
        (
            "bad-message",
            r#"{"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}"#,
            "`prompt[0]` needs string fields",
        ),
    ];
    for (name, line, want) in cases {
        let path = dir.join(format!("{name}.jsonl"));
        // Line 1 is good, line 2 blank (skipped), line 3 bad.
        std::fs::write(&path, format!("{good}\n\n{line}\n")).unwrap();
        let err = format!("{:#}", metaapo::data::pairs::load_pairs(&path).unwrap_err());
        assert!(
            err.contains(&format!("{}:3", path.display())) && err.contains(want),
            "{name}: {err}"
        );
    }
    let path = dir.join("good.jsonl");
    std::fs::write(&path, format!("{good}\n")).unwrap();
    assert_eq!(metaapo::data::pairs::load_pairs(&path).unwrap().len(), 1);
}

//! LoRA: parity with PEFT on an adapter PEFT saved (tests/fixtures/make_lora_fixture.py), the
//! PEFT directory round trip, merging, the reference with the adapter off, and gradients
//! (only the adapters get them; finite differences in f64).

mod common;

use candle_core::{DType, Device};
use metaapo::data::encode::EncodedSeq;
use metaapo::model::lora::LoraConfig;
use metaapo::model::{hf, CausalLm};
use metaapo::score::sequence_logps;
use metaapo::train::grads::Gradients;
use metaapo::train::optimizer::{AdamW, AdamWConfig};

fn fixture() -> (Vec<EncodedSeq>, serde_json::Value) {
    let text =
        std::fs::read_to_string(common::fixture_dir("tiny_llama_lora").join("expected.json"))
            .unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let seqs = expected["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| EncodedSeq {
            ids: common::json_ids(&s["ids"]),
            prompt_len: s["prompt_len"].as_u64().unwrap() as usize,
        })
        .collect();
    (seqs, expected)
}

/// PEFT's summed response log-prob of each fixture sequence, from per-token values under `key`.
fn peft_sums(expected: &serde_json::Value, key: &str) -> Vec<f64> {
    expected["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let p = s["prompt_len"].as_u64().unwrap() as usize;
            s[key].as_array().unwrap()[p - 1..]
                .iter()
                .map(|v| v.as_f64().unwrap())
                .sum()
        })
        .collect()
}

fn sums(model: &CausalLm, seqs: &[EncodedSeq]) -> Vec<f64> {
    sequence_logps(model, seqs, 0)
        .unwrap()
        .sum
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs().max(1.0),
            "{what}: {a:?} vs {b:?}"
        );
    }
}

fn base(trainable: bool) -> CausalLm {
    hf::load(
        &common::fixture_dir("tiny_llama"),
        &Device::Cpu,
        DType::F32,
        trainable,
    )
    .unwrap()
    .0
}

#[test]
fn an_adapter_peft_saved_gives_peft_log_probs() {
    let (seqs, expected) = fixture();
    let dir = common::fixture_dir("tiny_llama_lora");
    let model = base(true).with_adapter_dir(&dir).unwrap();
    assert_close(
        &sums(&model, &seqs),
        &peft_sums(&expected, "token_logps"),
        "adapter",
    );
    // Only the adapters train: q, v and down projections of 2 layers, A and B each.
    assert_eq!(model.vars().len(), 12);
    assert!(model.vars().iter().all(|(n, _)| n.contains(".lora_")));
    assert_close(
        &sums(&model.merged().unwrap(), &seqs),
        &peft_sums(&expected, "merged_token_logps"),
        "merged",
    );
    // The adapter has moved away from B = 0, so the reference copy keeps it.
    assert_close(
        &sums(&model.frozen().unwrap(), &seqs),
        &peft_sums(&expected, "token_logps"),
        "frozen",
    );
}

#[test]
fn a_fresh_adapter_starts_as_the_base_and_its_reference_is_the_base() {
    let (seqs, expected) = fixture();
    let model = base(false)
        .with_lora(&LoraConfig {
            targets: vec!["all-linear".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(model.vars().len(), 2 * 7 * 2);
    let base_sums = peft_sums(&expected, "base_token_logps");
    assert_close(&sums(&model, &seqs), &base_sums, "fresh adapter");
    let reference = model.frozen().unwrap();
    assert!(
        reference.lora().is_none(),
        "an untouched adapter is off in the reference"
    );
    assert_close(&sums(&reference, &seqs), &base_sums, "reference");
    // Shared, not copied: the reference's weights are the same storage as the policy's base.
    let same = model.named_tensors()[1].1.id() == reference.named_tensors()[1].1.id();
    assert!(same);
}

#[test]
fn saving_writes_a_peft_directory_that_reads_back_the_same() {
    let (seqs, expected) = fixture();
    let model = base(true)
        .with_adapter_dir(&common::fixture_dir("tiny_llama_lora"))
        .unwrap();
    let dir = std::env::temp_dir().join(format!("metaapo-test-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    hf::save(&dir, &model, None).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    // Every tensor name PEFT wrote, and no other.
    let names = |path: std::path::PathBuf| {
        let (t, _) = metaapo::model::weights::read(&path, &Device::Cpu).unwrap();
        let mut k: Vec<String> = t.into_keys().collect();
        k.sort();
        k
    };
    assert_eq!(
        names(dir.join("adapter_model.safetensors")),
        names(common::fixture_dir("tiny_llama_lora").join("adapter_model.safetensors"))
    );
    let again = base(true).with_adapter_dir(&dir).unwrap();
    assert_close(
        &sums(&again, &seqs),
        &peft_sums(&expected, "token_logps"),
        "round trip",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_peft_options_are_refused_by_name() {
    let src = common::fixture_dir("tiny_llama_lora");
    for (key, value, says) in [
        ("use_dora", serde_json::json!(true), "`use_dora`"),
        (
            "modules_to_save",
            serde_json::json!(["lm_head"]),
            "`modules_to_save`",
        ),
        ("peft_type", serde_json::json!("IA3"), "only LORA"),
        ("r", serde_json::json!(0), "`r`"),
    ] {
        let dir = std::env::temp_dir().join(format!(
            "metaapo-test-lora-bad-{key}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            src.join("adapter_model.safetensors"),
            dir.join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(src.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        cfg[key] = value;
        std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
        let err = base(true).with_adapter_dir(&dir).err().expect("refused");
        assert!(format!("{err:#}").contains(says), "{key}: {err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn only_adapters_get_gradients_and_they_match_finite_differences() {
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec!["all-linear".into()],
        ..Default::default()
    };
    let policy = common::tiny_model("LlamaForCausalLM", false, DType::F64, false)
        .with_lora(&lora)
        .unwrap();
    let reference = policy.frozen().unwrap();
    let nonzero = |g: &Gradients| {
        policy
            .vars()
            .iter()
            .filter(|(_, v)| {
                g.get(v).is_some_and(|t| {
                    t.abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                        > 0.0
                })
            })
            .count()
    };
    let mut g = Gradients::new();
    g.accumulate(common::dpo_loss(&policy, &reference), policy.vars())
        .unwrap();
    // B = 0 at the start: B's gradient is A·x-shaped and non-zero, A's is B-shaped and zero.
    assert_eq!(nonzero(&g), policy.vars().len() / 2);
    let mut opt = AdamW::new(
        policy.vars(),
        AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    opt.step(&g, 1e-2).unwrap();
    let mut g = Gradients::new();
    g.accumulate(common::dpo_loss(&policy, &reference), policy.vars())
        .unwrap();
    assert_eq!(
        nonzero(&g),
        policy.vars().len(),
        "after one step every adapter matrix learns"
    );

    let h = 1e-6;
    for (name, var) in policy.vars() {
        let (i, a, numeric, rel) = common::finite_difference(var, g.get(var).unwrap(), h, || {
            common::dpo_loss(&policy, &reference)
                .to_scalar::<f64>()
                .unwrap()
        });
        assert!(
            rel < 1e-5,
            "{name}[{i}]: analytic {a:e} vs numeric {numeric:e}"
        );
    }
}

#[test]
fn dropout_applies_in_training_forwards_only_and_repeats_under_its_seed() {
    let (seqs, _) = fixture();
    let cfg = LoraConfig {
        dropout: 0.5,
        ..Default::default()
    };
    let trained = || {
        let model = base(false).with_lora(&cfg).unwrap();
        let reference = model.frozen().unwrap();
        let mut g = Gradients::new();
        g.accumulate(common::dpo_loss(&model, &reference), model.vars())
            .unwrap();
        AdamW::new(model.vars(), AdamWConfig::default())
            .unwrap()
            .step(&g, 1e-2)
            .unwrap();
        model
    };
    let (a, b) = (trained(), trained());
    let first = sums(&a, &seqs);
    assert_eq!(first, sums(&b, &seqs), "the same seed, the same masks");
    assert_ne!(first, sums(&a, &seqs), "a new mask every training forward");
    let frozen = a.frozen().unwrap();
    assert!(frozen.lora().is_some());
    assert_eq!(
        sums(&frozen, &seqs),
        sums(&frozen, &seqs),
        "no dropout once frozen"
    );
    assert!(
        base(false)
            .with_lora(&cfg)
            .unwrap()
            .with_lora(&cfg)
            .is_err(),
        "one set of adapters"
    );
}

//! Gradient checkpointing per decoder layer: the same gradients as without it (f64, every
//! variable, full fine-tuning and LoRA), also when another model's backward runs between a
//! forward and its loss.

mod common;

use candle_core::DType;
use metaapo::meta::{MetaConfig, MetaLearner};
use metaapo::model::lora::LoraConfig;
use metaapo::model::CausalLm;
use metaapo::train::grads::Gradients;

fn grads(policy: &CausalLm, reference: &CausalLm, meta_between: bool) -> Vec<Vec<f64>> {
    let l = common::dpo_loss(policy, reference);
    if meta_between {
        // Another model's backward between the policy's forward and its own backward.
        let mut m = MetaLearner::new(MetaConfig::default(), policy.device(), DType::F32).unwrap();
        m.step(&[0.5, -1.0], &[1.0, 0.2], &[0.3, 0.9]).unwrap();
    }
    let mut g = Gradients::new();
    g.accumulate(l, policy.vars()).unwrap();
    policy
        .vars()
        .iter()
        .map(|(n, v)| {
            let t = g.get(v).unwrap_or_else(|| panic!("{n} got no gradient"));
            t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
        })
        .collect()
}

fn assert_same(a: &[Vec<f64>], b: &[Vec<f64>]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let scale = y.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() <= 1e-10 * scale, "{p} vs {q}");
        }
    }
}

#[test]
fn checkpointed_gradients_equal_plain_ones() {
    for (arch, tied) in [("LlamaForCausalLM", false), ("Qwen2ForCausalLM", true)] {
        let policy = common::tiny_model(arch, tied, DType::F64, true);
        let reference = policy.frozen().unwrap();
        let plain = grads(&policy, &reference, false);
        let checkpointed = policy.with_checkpointing(true).unwrap();
        assert!(checkpointed.checkpointing());
        assert_eq!(plain.len(), policy.vars().len());
        assert_same(&grads(&checkpointed, &reference, false), &plain);
        assert_same(&grads(&checkpointed, &reference, true), &plain);
    }
}

#[test]
fn checkpointing_works_with_lora_and_refuses_lora_dropout() {
    let base = common::tiny_model("LlamaForCausalLM", false, DType::F64, false);
    let cfg = LoraConfig {
        targets: vec!["all-linear".into()],
        ..Default::default()
    };
    let policy = base.with_lora(&cfg).unwrap();
    // Move B off zero so every adapter matrix has a gradient.
    for (n, v) in policy.vars() {
        if n.ends_with("lora_B.weight") {
            v.set(&(v.as_tensor().ones_like().unwrap() * 0.05).unwrap())
                .unwrap();
        }
    }
    let reference = base.frozen().unwrap();
    let plain = grads(&policy, &reference, false);
    assert_same(
        &grads(&policy.with_checkpointing(true).unwrap(), &reference, false),
        &plain,
    );
    let dropout = LoraConfig {
        dropout: 0.1,
        ..cfg
    };
    let err = base
        .with_lora(&dropout)
        .unwrap()
        .with_checkpointing(true)
        .err()
        .unwrap();
    assert!(err.to_string().contains("LoRA dropout"));
}

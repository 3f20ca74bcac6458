//! Reward models against transformers fixtures (tests/fixtures/make_fixtures.py), and the
//! Bradley-Terry head on features with a known answer.

mod common;

use candle_core::{DType, Device, Tensor};
use metaapo::reward::bert::TextEncoder;
use metaapo::reward::bradley_terry::{FitConfig, LinearHead};
use metaapo::reward::classifier::SequenceClassifier;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn expected(name: &str) -> Value {
    let path = common::fixture_dir(name).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn llama_reward_head_matches_transformers_alone_and_batched() {
    let dir = common::fixture_dir("tiny_llama_rm");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let (tensors, source) = metaapo::model::hf::read_weights(&dir, &Device::Cpu).unwrap();
    let rm = SequenceClassifier::from_tensors(&config, tensors, &source, DType::F32).unwrap();
    let exp = expected("tiny_llama_rm");
    let seqs: Vec<Vec<u32>> = exp["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| common::json_ids(&s["ids"]))
        .collect();
    // Padding with a real token id (5) shows that padding never reaches the reward.
    let batched = rm.rewards(&seqs, 5).unwrap();
    for (i, s) in exp["sequences"].as_array().unwrap().iter().enumerate() {
        let alone = rm.rewards(&seqs[i..=i], 0).unwrap()[0];
        let want = s["reward"].as_f64().unwrap();
        assert!((alone - want).abs() < 1e-5, "seq {i}: {alone} vs {want}");
        assert!(
            (batched[i] - want).abs() < 1e-5,
            "seq {i} batched: {}",
            batched[i]
        );
    }
}

#[test]
fn a_causal_lm_directory_is_refused_as_a_reward_model() {
    let err = SequenceClassifier::load(&common::fixture_dir("tiny_llama"), &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("ForSequenceClassification"),
        "{err:#}"
    );
}

#[test]
fn bert_embeddings_match_transformers_mean_pooling() {
    let enc = TextEncoder::load(&common::fixture_dir("tiny_bert"), &Device::Cpu).unwrap();
    let exp = expected("tiny_bert");
    let pairs = exp["pairs"].as_array().unwrap();
    let field = |k: &str| -> Vec<String> {
        pairs
            .iter()
            .map(|p| p[k].as_str().unwrap().to_string())
            .collect()
    };
    // All pairs in one padded batch, through the tokenizer.
    let batched = enc
        .embed_pairs(&field("prompt"), &field("response"))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (i, p) in pairs.iter().enumerate() {
        let alone = enc
            .bert
            .embed(
                &[common::json_ids(&p["ids"])],
                &[common::json_ids(&p["type_ids"])],
            )
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let want: Vec<f64> = p["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (j, w) in want.iter().enumerate() {
            assert!((alone[0][j] as f64 - w).abs() < 1e-5, "pair {i} dim {j}");
            assert!(
                (batched[i][j] as f64 - w).abs() < 1e-5,
                "pair {i} dim {j} batched"
            );
        }
    }
}

#[test]
fn bradley_terry_head_learns_a_separating_direction() {
    // Chosen features lean along a hidden direction; rejected ones do not.
    let (n, h) = (200, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut feature = |shift: f32| -> Vec<f32> {
        (0..n * h)
            .map(|i| rng.random_range(-1.0f32..1.0) + if i % h == 3 { shift } else { 0.0 })
            .collect()
    };
    let chosen = Tensor::from_vec(feature(1.5), (n, h), &Device::Cpu).unwrap();
    let rejected = Tensor::from_vec(feature(0.0), (n, h), &Device::Cpu).unwrap();
    let (head, report) = LinearHead::fit(&chosen, &rejected, &FitConfig::default()).unwrap();
    // The initial head is ~0, so the loss starts at ~log 2.
    assert!((report.loss_before - 2f64.ln()).abs() < 0.02, "{report:?}");
    assert!(report.loss_after < 0.3, "{report:?}");
    assert!(report.accuracy_after > 0.95, "{report:?}");
    let w = head.weight.to_vec1::<f32>().unwrap();
    let top = (0..h).max_by(|&a, &b| w[a].total_cmp(&w[b])).unwrap();
    assert_eq!(top, 3, "weights {w:?}");
    let r = head.rewards(&chosen).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(r.len(), n);
}

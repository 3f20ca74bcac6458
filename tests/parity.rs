//! Parity with PyTorch + HF transformers on tiny random models (fixtures made by
//! tests/fixtures/make_fixtures.py): full logits and response log-probs within 1e-4.

mod common;

use candle_core::{DType, Device, IndexOp};
use metaapo::data::batch::{collate, Padding};
use metaapo::data::encode::EncodedSeq;
use metaapo::model::hf;
use metaapo::score::sequence_logps;
use serde::Deserialize;

#[derive(Deserialize)]
struct Sequence {
    ids: Vec<u32>,
    prompt_len: usize,
    logits: Vec<Vec<f64>>,
    response_logp_sum: f64,
    response_logp_mean: f64,
}

#[derive(Deserialize)]
struct Expected {
    sequences: Vec<Sequence>,
}

fn check(name: &str) {
    let dir = common::fixture_dir(name);
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let (model, _) = hf::load(&dir, &Device::Cpu, DType::F32, false).unwrap();
    let mut worst = 0f64;
    for (i, s) in expected.sequences.iter().enumerate() {
        let input = collate(&[&s.ids], 0, Padding::Right, &Device::Cpu).unwrap();
        let logits = model
            .forward(&input, None)
            .unwrap()
            .i(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for (t, (ours, theirs)) in logits.iter().zip(&s.logits).enumerate() {
            for (a, b) in ours.iter().zip(theirs) {
                worst = worst.max((a - b).abs());
                assert!(
                    (a - b).abs() < 1e-4,
                    "{name} seq {i} position {t}: {a} vs transformers {b}"
                );
            }
        }
    }
    // All sequences batched together (right-padded) give transformers' per-sequence numbers.
    let seqs: Vec<EncodedSeq> = expected
        .sequences
        .iter()
        .map(|s| EncodedSeq {
            ids: s.ids.clone(),
            prompt_len: s.prompt_len,
        })
        .collect();
    let lp = sequence_logps(&model, &seqs, 0).unwrap();
    let (sum, mean) = (
        lp.sum.to_vec1::<f32>().unwrap(),
        lp.mean.to_vec1::<f32>().unwrap(),
    );
    for (i, s) in expected.sequences.iter().enumerate() {
        assert!(
            (sum[i] as f64 - s.response_logp_sum).abs() < 1e-4,
            "{name} seq {i}: sum {} vs {}",
            sum[i],
            s.response_logp_sum
        );
        assert!(
            (mean[i] as f64 - s.response_logp_mean).abs() < 1e-4,
            "{name} seq {i}: mean {} vs {}",
            mean[i],
            s.response_logp_mean
        );
    }
    eprintln!("{name}: max |logit difference| {worst:e}");
}

#[test]
fn tiny_llama_with_llama3_rope_scaling_matches_transformers() {
    check("tiny_llama");
}

#[test]
fn tiny_qwen2_with_biases_and_tied_head_matches_transformers() {
    check("tiny_qwen2");
}

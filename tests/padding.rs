//! A sequence's numbers do not depend on what it is batched with, how it is padded, or which
//! thread scores its batch, and decoding with the KV cache equals recomputing from scratch.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use metaapo::data::batch::{collate, Padding};
use metaapo::data::encode::EncodedSeq;
use metaapo::model::decoder::KvCache;
use metaapo::model::CausalLm;
use metaapo::policy::Policy;
use metaapo::score::sequence_logps;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn seqs() -> Vec<EncodedSeq> {
    vec![
        EncodedSeq {
            ids: vec![3, 4, 5, 6, 7, 8, 9, 2],
            prompt_len: 3,
        },
        EncodedSeq {
            ids: vec![10, 11, 12, 2],
            prompt_len: 1,
        },
        EncodedSeq {
            ids: vec![13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 2],
            prompt_len: 6,
        },
    ]
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn logprob_is_the_same_alone_and_batched() {
    for arch in ["LlamaForCausalLM", "Qwen2ForCausalLM"] {
        let model = common::tiny_model(arch, false, DType::F32, false);
        let batched = sequence_logps(&model, &seqs(), 0).unwrap();
        let batched_sum = batched.sum.to_vec1::<f32>().unwrap();
        for (i, s) in seqs().into_iter().enumerate() {
            let alone = sequence_logps(&model, std::slice::from_ref(&s), 0).unwrap();
            let a = alone.sum.to_vec1::<f32>().unwrap()[0];
            assert!(
                (a - batched_sum[i]).abs() < 1e-5,
                "{arch} seq {i}: alone {a} vs batched {}",
                batched_sum[i]
            );
            assert_eq!(batched.lengths[i], s.response_len());
            let mean = batched.mean.to_vec1::<f32>().unwrap()[i];
            assert!((mean - batched_sum[i] / s.response_len() as f32).abs() < 1e-6);
        }
        // Padding content is irrelevant: another pad id gives the same numbers.
        let other = sequence_logps(&model, &seqs(), 37).unwrap();
        assert!(max_diff(&other.sum, &batched.sum) < 1e-5);
    }
}

/// Logits of each real token, whatever the padding side.
#[test]
fn logits_are_the_same_left_padded_right_padded_and_alone() {
    let model = common::tiny_model("LlamaForCausalLM", true, DType::F32, false);
    let rows: Vec<Vec<u32>> = seqs().into_iter().map(|s| s.ids).collect();
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let width = rows.iter().map(Vec::len).max().unwrap();
    let left = model
        .forward(
            &collate(&refs, 0, Padding::Left, &Device::Cpu).unwrap(),
            None,
        )
        .unwrap();
    let right = model
        .forward(
            &collate(&refs, 0, Padding::Right, &Device::Cpu).unwrap(),
            None,
        )
        .unwrap();
    for (i, r) in refs.iter().enumerate() {
        let alone = model
            .forward(
                &collate(&[*r], 0, Padding::Right, &Device::Cpu).unwrap(),
                None,
            )
            .unwrap()
            .i(0)
            .unwrap();
        let n = r.len();
        let l = left.i(i).unwrap().narrow(0, width - n, n).unwrap();
        let rr = right.i(i).unwrap().narrow(0, 0, n).unwrap();
        assert!(max_diff(&alone, &l) < 1e-5, "row {i} left-padded differs");
        assert!(max_diff(&alone, &rr) < 1e-5, "row {i} right-padded differs");
    }
}

#[test]
fn kv_cache_incremental_forward_equals_full_forward() {
    let model = common::tiny_model("Qwen2ForCausalLM", true, DType::F32, false);
    let rows: Vec<Vec<u32>> = seqs().into_iter().map(|s| s.ids).collect();
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let full_input = collate(&refs, 0, Padding::Left, &Device::Cpu).unwrap();
    let full = model.forward(&full_input, None).unwrap();
    let width = full_input.ids.dim(1).unwrap();
    // Feed the first 5 columns at once, then one column at a time.
    let mut cache = KvCache::default();
    let mut start = 0;
    for len in [5].into_iter().chain(std::iter::repeat_n(1, width - 5)) {
        let step = metaapo::model::decoder::DecoderInput {
            ids: full_input.ids.narrow(1, start, len).unwrap(),
            positions: full_input.positions.narrow(1, start, len).unwrap(),
            key_valid: full_input
                .key_valid
                .iter()
                .map(|v| v[..start + len].to_vec())
                .collect(),
        };
        let logits = model.forward(&step, Some(&mut cache)).unwrap();
        // Only real (non-padding) positions have meaningful logits.
        for (row, valid) in full_input.key_valid.iter().enumerate() {
            for j in (start..start + len).filter(|&j| valid[j]) {
                let a = logits.i((row, j - start)).unwrap();
                let b = full.i((row, j)).unwrap();
                assert!(max_diff(&a, &b) < 1e-5, "row {row} column {j}");
            }
        }
        start += len;
        assert_eq!(cache.len(), start);
    }
}

fn argmax(logits: &Tensor) -> u32 {
    logits.argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

/// Greedy continuation of one prompt, recomputing the whole sequence every step.
fn greedy_uncached(model: &CausalLm, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    for _ in 0..steps {
        let logits = model
            .forward(
                &collate(&[&ids], 0, Padding::Right, &Device::Cpu).unwrap(),
                None,
            )
            .unwrap();
        ids.push(argmax(&logits.i((0, ids.len() - 1)).unwrap()));
    }
    ids[prompt.len()..].to_vec()
}

#[test]
fn batched_left_padded_cached_greedy_equals_uncached_greedy() {
    let model = common::tiny_model("LlamaForCausalLM", false, DType::F32, false);
    let prompts: Vec<Vec<u32>> = vec![vec![3, 4, 5], vec![10], vec![13, 14, 15, 16, 17, 18]];
    let steps = 8;
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let input = collate(&refs, 0, Padding::Left, &Device::Cpu).unwrap();
    let mut cache = KvCache::default();
    let mut key_valid = input.key_valid.clone();
    let mut next_pos: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let logits = model.forward(&input, Some(&mut cache)).unwrap();
    let last = input.ids.dim(1).unwrap() - 1;
    let mut tokens: Vec<u32> = (0..prompts.len())
        .map(|b| argmax(&logits.i((b, last)).unwrap()))
        .collect();
    let mut out: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
    for _ in 1..steps {
        key_valid.iter_mut().for_each(|v| v.push(true));
        let step = metaapo::model::decoder::DecoderInput {
            ids: Tensor::from_vec(tokens.clone(), (prompts.len(), 1), &Device::Cpu).unwrap(),
            positions: Tensor::from_vec(next_pos.clone(), (prompts.len(), 1), &Device::Cpu)
                .unwrap(),
            key_valid: key_valid.clone(),
        };
        let logits = model.forward(&step, Some(&mut cache)).unwrap();
        tokens = (0..prompts.len())
            .map(|b| argmax(&logits.i((b, 0)).unwrap()))
            .collect();
        for (o, &t) in out.iter_mut().zip(&tokens) {
            o.push(t);
        }
        next_pos.iter_mut().for_each(|p| *p += 1);
    }
    for (p, o) in prompts.iter().zip(&out) {
        assert_eq!(o, &greedy_uncached(&model, p, steps), "prompt {p:?}");
    }
}

#[test]
fn frozen_scores_are_the_same_side_by_side_as_one_chunk_per_call() {
    let frozen = || {
        let model = common::tiny_model("LlamaForCausalLM", false, DType::F32, false);
        assert!(
            model.batches_side_by_side(),
            "this test covers the side-by-side path"
        );
        let tokenizer = metaapo::world::vocab::tokenizer().unwrap();
        Policy::new(model, tokenizer, "reference")
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // Enough distinct sequences for several cache chunks (64 each) to be scored at once.
    // Distinct by their first two ids, so both ways cut the same chunks.
    let seqs: Vec<EncodedSeq> = (0..300u32)
        .map(|i| {
            let len = rng.random_range(2..14);
            let mut ids = vec![3 + i % 37, 3 + i / 37];
            ids.extend((2..len).map(|_| rng.random_range(3..40)));
            EncodedSeq {
                ids,
                prompt_len: rng.random_range(1..len),
            }
        })
        .collect();
    let at_once = frozen().seq_logps(&seqs).unwrap();
    let one_by_one = frozen();
    let (mut sums, mut means) = (Vec::new(), Vec::new());
    for chunk in seqs.chunks(64) {
        let lp = one_by_one.seq_logps(chunk).unwrap();
        sums.extend(lp.sum.to_vec1::<f32>().unwrap());
        means.extend(lp.mean.to_vec1::<f32>().unwrap());
    }
    assert_eq!(at_once.sum.to_vec1::<f32>().unwrap(), sums);
    assert_eq!(at_once.mean.to_vec1::<f32>().unwrap(), means);
}

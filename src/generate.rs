//! Sampling from a policy: batched, left-padded prompts decoded with a KV cache. Greedy when the
//! temperature is 0; otherwise temperature, top-k and top-p (nucleus) sampling from a seeded RNG,
//! so the same seed gives the same samples.

use crate::data::batch::{collate, Padding};
use crate::model::decoder::{DecoderInput, KvCache};
use crate::model::CausalLm;
use anyhow::{bail, Result};
use candle_core::{DType, IndexOp, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub struct SampleConfig {
    /// Samples per prompt.
    pub n: usize,
    pub max_new_tokens: usize,
    /// 0 decodes greedily.
    pub temperature: f64,
    pub top_p: f64,
    /// 0 keeps every token.
    pub top_k: usize,
    pub seed: u64,
    /// Rows decoded together (prompts x samples).
    pub batch_size: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            n: 1,
            max_new_tokens: 64,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            batch_size: 64,
        }
    }
}

/// One sampled continuation; the stop token itself is not included.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub prompt: usize,
    pub tokens: Vec<u32>,
    /// Whether a stop token ended it (rather than `max_new_tokens`).
    pub finished: bool,
}

/// Samples `cfg.n` continuations of every prompt, in order: prompt 0's samples first.
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    stop: &[u32],
    pad_id: u32,
    cfg: &SampleConfig,
) -> Result<Vec<Sample>> {
    if cfg.n == 0 || cfg.batch_size == 0 {
        bail!("generate: n and batch_size must be at least 1");
    }
    let valid = cfg.temperature >= 0.0 && cfg.top_p > 0.0 && cfg.top_p <= 1.0;
    if !valid {
        bail!(
            "generate: temperature must be >= 0 and top_p in (0, 1] (got {} and {})",
            cfg.temperature,
            cfg.top_p
        );
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        bail!("generate: prompt {i} has no tokens");
    }
    let rows: Vec<usize> = (0..prompts.len())
        .flat_map(|p| std::iter::repeat_n(p, cfg.n))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(cfg.batch_size) {
        let seqs: Vec<&[u32]> = chunk.iter().map(|&p| prompts[p].as_slice()).collect();
        let tokens = decode(model, &seqs, stop, pad_id, cfg, &mut rng)?;
        out.extend(
            chunk
                .iter()
                .zip(tokens)
                .map(|(&prompt, (tokens, finished))| Sample {
                    prompt,
                    tokens,
                    finished,
                }),
        );
    }
    Ok(out)
}

fn decode(
    model: &CausalLm,
    seqs: &[&[u32]],
    stop: &[u32],
    pad_id: u32,
    cfg: &SampleConfig,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<(Vec<u32>, bool)>> {
    let device = model.device();
    let b = seqs.len();
    let input = collate(seqs, pad_id, Padding::Left, device)?;
    let mut key_valid = input.key_valid.clone();
    let mut next_pos: Vec<u32> = seqs.iter().map(|s| s.len() as u32).collect();
    let mut cache = KvCache::default();
    let width = input.ids.dim(1)?;
    let mut logits = model
        .forward(&input, Some(&mut cache))?
        .i((.., width - 1))?;
    let mut out: Vec<(Vec<u32>, bool)> = vec![(vec![], false); b];
    for step in 0..cfg.max_new_tokens {
        let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut feed = Vec::with_capacity(b);
        for (row, l) in rows.iter().enumerate() {
            let (tokens, finished) = &mut out[row];
            if *finished {
                feed.push(pad_id);
                continue;
            }
            let t = pick(l, cfg, rng);
            if stop.contains(&t) {
                *finished = true;
            } else {
                tokens.push(t);
            }
            feed.push(t);
        }
        if out.iter().all(|(_, f)| *f) || step + 1 == cfg.max_new_tokens {
            break;
        }
        key_valid.iter_mut().for_each(|v| v.push(true));
        let step_input = DecoderInput {
            ids: Tensor::from_vec(feed, (b, 1), device)?,
            positions: Tensor::from_vec(next_pos.clone(), (b, 1), device)?,
            key_valid: key_valid.clone(),
        };
        next_pos.iter_mut().for_each(|p| *p += 1);
        logits = model.forward(&step_input, Some(&mut cache))?.i((.., 0))?;
    }
    Ok(out)
}

/// Picks the next token from one row of logits.
fn pick(logits: &[f32], cfg: &SampleConfig, rng: &mut impl Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if cfg.temperature == 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k);
    }
    let top = logits[order[0]] as f64;
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - top) / cfg.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // Nucleus: the smallest prefix (by probability) whose mass reaches top_p.
    let mut keep = 0;
    let mut mass = 0.0;
    while keep < weights.len() {
        mass += weights[keep] / total;
        keep += 1;
        if mass >= cfg.top_p {
            break;
        }
    }
    let kept: f64 = weights[..keep].iter().sum();
    let mut u = rng.random::<f64>() * kept;
    for (j, w) in weights[..keep].iter().enumerate() {
        u -= w;
        if u <= 0.0 {
            return order[j] as u32;
        }
    }
    order[keep - 1] as u32
}

//! Sampling from a policy: batched, left-padded prompts decoded with a KV cache. Greedy when the
//! temperature is 0; otherwise temperature, top-k and top-p (nucleus) sampling. Every row (prompt
//! x sample) draws from its own seeded stream, so the same seed gives the same samples whatever
//! the batch size.

use crate::data::batch::{collate, Padding};
use crate::model::decoder::{DecoderInput, KvCache};
use crate::model::tokenizer::TextTokenizer;
use crate::model::CausalLm;
use anyhow::{bail, Result};
use candle_core::{DType, IndexOp, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
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

/// When a row stops: on any of `tokens` (not kept in the output), or once its decoded text
/// contains any of `strings` (the token that completes the string is kept; [`cut_at_stop`] trims
/// the text). Stop strings need the tokenizer.
#[derive(Clone, Copy, Default)]
pub struct Stop<'a> {
    pub tokens: &'a [u32],
    pub strings: &'a [String],
    pub tokenizer: Option<&'a TextTokenizer>,
}

impl<'a> Stop<'a> {
    pub fn tokens(tokens: &'a [u32]) -> Self {
        Self {
            tokens,
            ..Self::default()
        }
    }

    /// Whether the end of `tokens` completes a stop string. Only the last few tokens are decoded:
    /// every token adds at least one byte, so a string of L bytes spans at most L tokens.
    fn hit_string(&self, tokens: &[u32]) -> Result<bool> {
        let (Some(tok), false) = (self.tokenizer, self.strings.is_empty()) else {
            return Ok(false);
        };
        let window = self.strings.iter().map(String::len).max().unwrap_or(0) + 1;
        let tail = tok.decode(&tokens[tokens.len().saturating_sub(window)..], false)?;
        Ok(self.strings.iter().any(|s| tail.contains(s.as_str())))
    }
}

/// `text` up to the first occurrence of any stop string, and whether one occurred.
pub fn cut_at_stop(text: &str, strings: &[String]) -> (String, bool) {
    match strings.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(i) => (text[..i].to_string(), true),
        None => (text.to_string(), false),
    }
}

/// One sampled continuation; a stop token is not included.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub prompt: usize,
    pub tokens: Vec<u32>,
    /// Whether a stop token or string ended it (rather than `max_new_tokens`).
    pub finished: bool,
}

/// Samples `cfg.n` continuations of every prompt, in order: prompt 0's samples first.
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    stop: &Stop,
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
    if !stop.strings.is_empty() && stop.tokenizer.is_none() {
        bail!("generate: stop strings need a tokenizer");
    }
    ensure_fits(model, prompts, cfg, 1)?;
    let rows: Vec<usize> = (0..prompts.len())
        .flat_map(|p| std::iter::repeat_n(p, cfg.n))
        .collect();
    let batch = |c: usize, chunk: &&[usize]| -> Result<Vec<Sample>> {
        let seqs: Vec<&[u32]> = chunk.iter().map(|&p| prompts[p].as_slice()).collect();
        let mut rngs: Vec<ChaCha8Rng> = (0..chunk.len())
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
                rng.set_stream((c * cfg.batch_size + i) as u64);
                rng
            })
            .collect();
        let tokens = decode(model, &seqs, stop, pad_id, cfg, &mut rngs)?;
        Ok(chunk
            .iter()
            .zip(tokens)
            .map(|(&prompt, (tokens, finished))| Sample {
                prompt,
                tokens,
                finished,
            })
            .collect())
    };
    let chunks: Vec<&[usize]> = rows.chunks(cfg.batch_size).collect();
    let at_once = chunks.len().min(rayon::current_num_threads());
    let side_by_side = model.batches_side_by_side()
        && at_once > 1
        && ensure_fits(model, prompts, cfg, at_once).is_ok();
    let batches = crate::threads::map_batches(&chunks, side_by_side, batch)?;
    Ok(batches.concat())
}

/// Refuses a request whose samples, or the KV caches and logits of `at_once` batches decoded side
/// by side, would not fit in memory.
fn ensure_fits(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    cfg: &SampleConfig,
    at_once: usize,
) -> Result<()> {
    let c = &model.config;
    let rows = prompts.len() as f64 * cfg.n as f64;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) as f64;
    let new = cfg.max_new_tokens as f64;
    let samples = rows * (new * 4.0 + 64.0);
    let batch = rows.min(cfg.batch_size as f64);
    let per_token = (c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim) as f64 * 4.0;
    // The prefill's attention scores are (batch, heads, prompt, prompt).
    let prefill = batch * c.num_attention_heads as f64 * longest * longest * 4.0 * 2.0;
    let cache = (batch * (longest + new) * per_token + batch * c.vocab_size as f64 * 8.0 + prefill)
        * at_once as f64;
    crate::memory::ensure_fits(
        &format!(
            "generate: n = {} samples of each of {} prompts ({rows:e} rows) with max_new_tokens = \
             {} and batch_size = {}",
            cfg.n,
            prompts.len(),
            cfg.max_new_tokens,
            cfg.batch_size
        ),
        samples + cache,
    )
}

fn decode(
    model: &CausalLm,
    seqs: &[&[u32]],
    stop: &Stop,
    pad_id: u32,
    cfg: &SampleConfig,
    rngs: &mut [ChaCha8Rng],
) -> Result<Vec<(Vec<u32>, bool)>> {
    let device = model.device();
    let b = seqs.len();
    let input = collate(seqs, pad_id, Padding::Left, device)?;
    let mut key_valid = input.key_valid.clone();
    let mut next_pos: Vec<u32> = seqs.iter().map(|s| s.len() as u32).collect();
    let mut cache = KvCache::default();
    let width = input.ids.dim(1)?;
    // Only the last position's logits are needed: the vocabulary projection of the whole
    // prompt would cost as much as many decoding steps.
    let last = model
        .hidden_states(&input, Some(&mut cache))?
        .narrow(1, width - 1, 1)?;
    let mut logits = model.logits(&last)?.i((.., 0))?.detach();
    cache.detach();
    let mut out: Vec<(Vec<u32>, bool)> = vec![(vec![], false); b];
    for step in 0..cfg.max_new_tokens {
        crate::interrupt::check()?;
        let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut feed = Vec::with_capacity(b);
        for (row, l) in rows.iter().enumerate() {
            let (tokens, finished) = &mut out[row];
            if *finished {
                feed.push(pad_id);
                continue;
            }
            let t = pick(l, cfg, &mut rngs[row]);
            if stop.tokens.contains(&t) {
                *finished = true;
            } else {
                tokens.push(t);
                *finished = stop.hit_string(tokens)?;
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
        logits = model
            .forward(&step_input, Some(&mut cache))?
            .i((.., 0))?
            .detach();
        cache.detach();
    }
    Ok(out)
}

fn argmax(logits: &[f32]) -> u32 {
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
}

/// The tokens sampling chooses among, most likely first, with their probabilities (summing to
/// 1): after temperature, the `top_k` most likely, then the smallest prefix whose mass reaches
/// `top_p` (nucleus). Greedy keeps the argmax alone.
pub fn candidates(logits: &[f32], cfg: &SampleConfig) -> Vec<(u32, f64)> {
    if cfg.temperature == 0.0 {
        return vec![(argmax(logits), 1.0)];
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k);
    }
    let weights = softmax(logits, &order, cfg.temperature);
    let mut keep = 0;
    let mut mass = 0.0;
    while keep < weights.len() {
        mass += weights[keep];
        keep += 1;
        if mass >= cfg.top_p {
            break;
        }
    }
    order[..keep]
        .iter()
        .zip(&weights)
        .map(|(&i, &w)| (i as u32, w / mass))
        .collect()
}

/// Probabilities of `order`'s logits at `temperature`, normalised over `order`.
fn softmax(logits: &[f32], order: &[usize], temperature: f64) -> Vec<f64> {
    let top = order
        .iter()
        .map(|&i| logits[i] as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - top) / temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    w.into_iter().map(|x| x / total).collect()
}

/// Draws the next token from one row of logits.
fn pick(logits: &[f32], cfg: &SampleConfig, rng: &mut impl Rng) -> u32 {
    if cfg.temperature == 0.0 {
        return argmax(logits);
    }
    // Plain sampling needs no sort over the vocabulary.
    let kept = if cfg.top_k == 0 && cfg.top_p >= 1.0 {
        let all: Vec<usize> = (0..logits.len()).collect();
        all.iter()
            .zip(softmax(logits, &all, cfg.temperature))
            .map(|(&i, p)| (i as u32, p))
            .collect()
    } else {
        candidates(logits, cfg)
    };
    let mut u = rng.random::<f64>();
    for &(t, p) in &kept {
        u -= p;
        if u <= 0.0 {
            return t;
        }
    }
    kept[kept.len() - 1].0
}

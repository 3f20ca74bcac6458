//! Response log-probabilities: the sum (and per-token mean) of `log p(response token | prefix)`
//! over the response tokens only. Prompt and padding positions are never scored, and the LM head
//! is applied only at the positions that predict a response token.

use crate::data::batch::{collate, Padding};
use crate::data::encode::EncodedSeq;
use crate::kernels::token_logprobs;
use crate::model::CausalLm;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// Per-sequence response log-probs, shape `(N,)`; differentiable unless detached.
#[derive(Debug, Clone)]
pub struct SeqLogps {
    pub sum: Tensor,
    pub mean: Tensor,
    pub lengths: Vec<usize>,
}

impl SeqLogps {
    pub fn detach(&self) -> Self {
        Self {
            sum: self.sum.detach(),
            mean: self.mean.detach(),
            lengths: self.lengths.clone(),
        }
    }

    fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            sum: self.sum.narrow(0, start, len)?,
            mean: self.mean.narrow(0, start, len)?,
            lengths: self.lengths[start..start + len].to_vec(),
        })
    }
}

/// Log-probs of the chosen and rejected responses of the same pairs.
#[derive(Debug, Clone)]
pub struct PairLogps {
    pub chosen: SeqLogps,
    pub rejected: SeqLogps,
}

impl PairLogps {
    pub fn detach(&self) -> Self {
        Self {
            chosen: self.chosen.detach(),
            rejected: self.rejected.detach(),
        }
    }

    /// The first `n` sequences as chosen, the next `n` as rejected.
    pub fn split(all: SeqLogps, n: usize) -> Result<Self> {
        Ok(Self {
            chosen: all.narrow(0, n)?,
            rejected: all.narrow(n, n)?,
        })
    }

    /// Chosen then rejected, as one `(2N,)` summed log-prob tensor in `dtype`.
    pub fn both_sums(&self, dtype: DType) -> Result<Tensor> {
        let c = self.chosen.sum.to_dtype(dtype)?;
        let r = self.rejected.sum.to_dtype(dtype)?;
        Ok(Tensor::cat(&[&c, &r], 0)?)
    }
}

/// What every pairwise objective reads: the pairs' log-probs under the policy and the reference,
/// and the implicit-reward margin Δ = [π(y_w) - ref(y_w)] - [π(y_l) - ref(y_l)].
#[derive(Debug, Clone)]
pub struct Scores {
    pub policy: PairLogps,
    pub reference: PairLogps,
    pub delta: Tensor,
    pub n: usize,
}

impl Scores {
    /// The reference's log-probs are cast to the policy's dtype.
    pub fn new(policy: PairLogps, reference: PairLogps) -> Result<Self> {
        let dtype = policy.chosen.sum.dtype();
        let ratio = |p: &SeqLogps, r: &SeqLogps| -> Result<Tensor> {
            Ok((&p.sum - r.sum.to_dtype(dtype)?)?)
        };
        let delta = (ratio(&policy.chosen, &reference.chosen)?
            - ratio(&policy.rejected, &reference.rejected)?)?;
        let n = delta.dim(0)?;
        Ok(Self {
            policy,
            reference,
            delta,
            n,
        })
    }
}

/// Bytes of a batch's activations (kept for the backward pass): `b` sequences padded to `t`.
fn activation_bytes(model: &CausalLm, b: usize, t: usize, seqs: &[EncodedSeq]) -> f64 {
    let c = &model.config;
    let tokens = (b * t) as f64;
    let per_layer = (c.hidden_size * 12 + c.intermediate_size * 4) as f64
        + (c.num_attention_heads * t * 2) as f64;
    let predicted: usize = seqs.iter().map(EncodedSeq::response_len).sum();
    4.0 * (tokens * c.num_hidden_layers as f64 * per_layer
        + predicted as f64 * c.vocab_size as f64 * 3.0)
}

/// Refuses a batch whose activations would not fit in memory.
fn ensure_fits(model: &CausalLm, b: usize, t: usize, seqs: &[EncodedSeq]) -> Result<()> {
    crate::memory::ensure_fits(
        &format!("scoring {b} sequences of up to {t} tokens in one batch"),
        activation_bytes(model, b, t, seqs),
    )
}

/// Whether `at_once` of `batches`, the largest, fit in memory together: each batch checks only
/// itself, so batches scored side by side could together take more than is free.
pub fn fit_side_by_side(model: &CausalLm, batches: &[&[EncodedSeq]], at_once: usize) -> bool {
    let mut bytes: Vec<f64> = batches
        .iter()
        .map(|seqs| {
            let t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
            activation_bytes(model, seqs.len(), t, seqs)
        })
        .collect();
    bytes.sort_by(|a, b| b.total_cmp(a));
    let together: f64 = bytes.iter().take(at_once).sum();
    crate::memory::ensure_fits("scoring side by side", together).is_ok()
}

/// Scores a batch of sequences in one forward pass (right-padded).
pub fn sequence_logps(model: &CausalLm, seqs: &[EncodedSeq], pad_id: u32) -> Result<SeqLogps> {
    crate::interrupt::check()?;
    let device = model.device();
    let rows: Vec<&[u32]> = seqs.iter().map(|s| s.ids.as_slice()).collect();
    let input = collate(&rows, pad_id, Padding::Right, device)?;
    let (b, t) = input.ids.dims2()?;
    ensure_fits(model, b, t, seqs)?;
    // Position p predicts token p + 1: the response tokens ids[prompt_len..] are predicted from
    // positions prompt_len - 1 .. len - 1.
    let (mut index, mut targets, mut lengths) = (vec![], vec![], vec![]);
    let total: usize = seqs.iter().map(|s| s.response_len()).sum();
    let mut member = vec![0f32; b * total];
    for (row, s) in seqs.iter().enumerate() {
        if s.prompt_len == 0 || s.response_len() == 0 {
            bail!("sequence {row} needs at least one prompt token and one response token");
        }
        for p in s.prompt_len - 1..s.ids.len() - 1 {
            member[row * total + index.len()] = 1.0;
            index.push((row * t + p) as u32);
            targets.push(s.ids[p + 1]);
        }
        lengths.push(s.response_len());
    }
    let hidden = model.hidden_states(&input, None)?;
    let hidden = hidden
        .reshape((b * t, ()))?
        .index_select(&Tensor::new(index, device)?, 0)?;
    let logits = model.logits(&hidden.unsqueeze(0)?)?.squeeze(0)?;
    let lp = token_logprobs(&logits, &Tensor::new(targets, device)?)?;
    // Sum per sequence with a (B, N) membership matrix: one differentiable matmul.
    let member = Tensor::from_vec(member, (b, total), device)?.to_dtype(lp.dtype())?;
    let sum = member.matmul(&lp.unsqueeze(1)?)?.squeeze(1)?;
    let len: Vec<f64> = lengths.iter().map(|&l| l as f64).collect();
    let len = Tensor::new(len, device)?.to_dtype(lp.dtype())?;
    let mean = (&sum / &len)?;
    let wide = if model.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    Ok(SeqLogps {
        sum: sum.to_dtype(wide)?,
        mean: mean.to_dtype(wide)?,
        lengths,
    })
}

/// Scores chosen and rejected responses together in one forward pass.
pub fn pair_logps(
    model: &CausalLm,
    chosen: &[EncodedSeq],
    rejected: &[EncodedSeq],
    pad_id: u32,
) -> Result<PairLogps> {
    if chosen.len() != rejected.len() {
        bail!(
            "{} chosen but {} rejected sequences",
            chosen.len(),
            rejected.len()
        );
    }
    let all: Vec<EncodedSeq> = chosen.iter().chain(rejected).cloned().collect();
    PairLogps::split(sequence_logps(model, &all, pad_id)?, chosen.len())
}

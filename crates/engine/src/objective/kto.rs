use super::{mean, reduce, scalar, sigmoid, values, LossOutput, Metrics};
use crate::score::Scores;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KtoConfig {
    pub beta: f64,
    /// λ_D
    pub desirable_weight: f64,
    /// λ_U
    pub undesirable_weight: f64,
}

impl Default for KtoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
        }
    }
}

/// KTO on unpaired examples. `policy`/`reference` are summed response log-probs `(N,)`;
/// `kl_policy`/`kl_reference` are those of mismatched prompt/response pairs (prompt i with the
/// response of example i+1), giving the detached reference point
/// `z0 = max(0, mean(kl_policy - kl_reference))`. Per example, with `r = π - ref`:
/// desirable `λ_D (1 - σ(β (r - z0)))`, undesirable `λ_U (1 - σ(β (z0 - r)))`.
pub fn kto(
    policy: &Tensor,
    reference: &Tensor,
    desirable: &[bool],
    kl_policy: &Tensor,
    kl_reference: &Tensor,
    cfg: &KtoConfig,
    weights: Option<&Tensor>,
) -> Result<LossOutput> {
    let n = policy.dim(0)?;
    if desirable.len() != n {
        bail!("{n} examples but {} desirable flags", desirable.len());
    }
    let z0 = (kl_policy - kl_reference)?
        .mean_all()?
        .detach()
        .maximum(0.0)?;
    let r = (policy - reference)?;
    let dev: &Device = policy.device();
    let sign: Vec<f64> = desirable
        .iter()
        .map(|&d| if d { 1.0 } else { -1.0 })
        .collect();
    let lambda: Vec<f64> = desirable
        .iter()
        .map(|&d| {
            if d {
                cfg.desirable_weight
            } else {
                cfg.undesirable_weight
            }
        })
        .collect();
    let dtype = policy.dtype();
    let sign = Tensor::new(sign, dev)?.to_dtype(dtype)?;
    let lambda = Tensor::new(lambda, dev)?.to_dtype(dtype)?;
    // desirable: σ(β(r - z0)); undesirable: σ(β(z0 - r)) = σ(-β(r - z0)).
    let z = ((r.broadcast_sub(&z0)? * cfg.beta)? * &sign)?;
    let per = ((sigmoid(&z)?.neg()? + 1.0)? * &lambda)?;
    let loss = reduce(&per, weights)?;
    let rewards = values(&(&r * cfg.beta)?)?;
    let logps = values(policy)?;
    let pick = |v: &[f64], want: bool| -> Vec<f64> {
        v.iter()
            .zip(desirable)
            .filter(|(_, &d)| d == want)
            .map(|(x, _)| *x)
            .collect()
    };
    let metrics = Metrics::from([
        ("loss".into(), scalar(&loss)?),
        ("kl".into(), scalar(&z0)?),
        ("rewards/chosen".into(), mean(&pick(&rewards, true))),
        ("rewards/rejected".into(), mean(&pick(&rewards, false))),
        (
            "rewards/margins".into(),
            mean(&pick(&rewards, true)) - mean(&pick(&rewards, false)),
        ),
        ("logps/chosen".into(), mean(&pick(&logps, true))),
        ("logps/rejected".into(), mean(&pick(&logps, false))),
    ]);
    Ok(LossOutput {
        loss,
        per_example: per,
        metrics,
    })
}

/// KTO over pairs: each pair gives a desirable (chosen) and an undesirable (rejected) example;
/// `kl` scores mismatched pairs for z0. A pair's loss and weight cover both its examples, so
/// `per_example` holds one value per pair: the mean of its two.
pub fn kto_pairs(
    scores: &Scores,
    kl: &Scores,
    cfg: &KtoConfig,
    weights: Option<&Tensor>,
) -> Result<LossOutput> {
    let n = scores.n;
    let dtype = scores.policy.chosen.sum.dtype();
    let policy = scores.policy.both_sums(dtype)?;
    let desirable: Vec<bool> = (0..2 * n).map(|i| i < n).collect();
    if let Some(w) = weights.filter(|w| w.dims() != [n]) {
        bail!(
            "weights have shape {:?}, expected [{n}] (one per pair)",
            w.dims()
        );
    }
    let weights = weights.map(|w| Tensor::cat(&[w, w], 0)).transpose()?;
    let mut out = kto(
        &policy,
        &scores.reference.both_sums(dtype)?,
        &desirable,
        &kl.policy.both_sums(dtype)?,
        &kl.reference.both_sums(dtype)?,
        cfg,
        weights.as_ref(),
    )?;
    let per = &out.per_example;
    out.per_example = ((per.narrow(0, 0, n)? + per.narrow(0, n, n)?)? * 0.5)?;
    Ok(out)
}

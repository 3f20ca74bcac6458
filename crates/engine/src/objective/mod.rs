//! Preference objectives (formulas: docs/ALGORITHMS.md). Each returns the batch loss, the per-example
//! losses and TRL-named metrics, and accepts optional per-example weights `w`: the batch loss is
//! `sum_i w_i * l_i / N`, so `dpo(off, w) + dpo(on, 1 - w)` is MetaAPO's mixed loss.

mod kto;
mod pairwise;

pub use kto::{kto, kto_pairs, KtoConfig};
pub use pairwise::{dpo, ipo, selm, simpo, DpoConfig, IpoConfig, SelmConfig, SimpoConfig};

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

/// Metric name (TRL's: `loss`, `rewards/chosen`, ...) to value.
pub type Metrics = BTreeMap<String, f64>;

#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Scalar batch loss, differentiable.
    pub loss: Tensor,
    /// Unweighted loss of each example, `(N,)`, differentiable.
    pub per_example: Tensor,
    pub metrics: Metrics,
}

/// `log σ(z)`, computed as `z/2 - |z|/2 - log(1 + exp(-|z|))` so it never underflows. The
/// value is `min(z, 0) - log(1 + exp(-|z|))`, but written with `min` the derivative at `z = 0`
/// depended on how `min` and `|z|` break the tie and came out 1, not 1/2: every DPO step taken
/// where the policy equals its reference (the first) had twice the gradient. Here the two terms
/// in `|z|` have derivatives -1/2 and +1/2 at 0, so no tie convention reaches the result.
pub fn log_sigmoid(z: &Tensor) -> Result<Tensor> {
    let a = z.abs()?;
    let tail = ((a.neg()?.exp()? + 1.0)?).log()?;
    Ok((((z - &a)? * 0.5)? - tail)?)
}

/// `σ(z)`, through `log_sigmoid` for stability.
pub fn sigmoid(z: &Tensor) -> Result<Tensor> {
    Ok(log_sigmoid(z)?.exp()?)
}

/// `sum_i w_i * l_i / N` (the plain mean without weights).
fn reduce(per_example: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
    let n = per_example.dim(0)?;
    match weights {
        None => Ok(per_example.mean_all()?),
        Some(w) => {
            if w.dims() != [n] {
                bail!("weights have shape {:?}, expected [{n}]", w.dims());
            }
            let w = w
                .to_device(per_example.device())?
                .to_dtype(per_example.dtype())?;
            Ok(((per_example * w)?.sum_all()? / n as f64)?)
        }
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

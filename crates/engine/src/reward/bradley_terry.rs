//! A linear reward head on frozen features, fitted to preference pairs by the Bradley-Terry loss
//! `-log σ(r(chosen) - r(rejected))` with full-batch AdamW. A bias would cancel in every
//! difference, so the head is `r(e) = w·e`.

use crate::model::weights;
use crate::objective::log_sigmoid;
use crate::train::optimizer::AdamWConfig;
use crate::train::schedule::Schedule;
use crate::train::Trainer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitConfig {
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            epochs: 200,
            lr: 0.05,
            weight_decay: 0.0,
            seed: 0,
        }
    }
}

/// What fitting did: the loss and training pairwise accuracy before and after.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub loss_before: f64,
    pub loss_after: f64,
    pub accuracy_before: f64,
    pub accuracy_after: f64,
}

#[derive(Debug, Clone)]
pub struct LinearHead {
    /// `(hidden,)`
    pub weight: Tensor,
}

/// The file a saved head lives in, with the encoder it reads in its metadata.
pub const HEAD_FILE: &str = "reward_head.safetensors";

impl LinearHead {
    /// Writes the head into `dir/reward_head.safetensors`, recording `encoder` (a directory, or
    /// a `metaapo fetch` name) so the reward model can be rebuilt from the file alone.
    pub fn save(&self, dir: &Path, encoder: &str) -> Result<()> {
        let meta = HashMap::from([("encoder".to_string(), encoder.to_string())]);
        safetensors::serialize_to_file([("weight", &self.weight)], Some(meta), &dir.join(HEAD_FILE))
            .with_context(|| format!("cannot write {}", dir.join(HEAD_FILE).display()))
    }

    /// Reads a head written by [`LinearHead::save`]; returns it with its encoder.
    pub fn load(dir: &Path, device: &Device) -> Result<(Self, String)> {
        let path = dir.join(HEAD_FILE);
        let (tensors, metadata) = weights::read(&path, device)?;
        let encoder = metadata
            .get("encoder")
            .with_context(|| format!("{}: metadata `encoder` is missing", path.display()))?
            .clone();
        let weight = tensors
            .get("weight")
            .with_context(|| format!("{}: tensor `weight` is missing", path.display()))?;
        if weight.rank() != 1 {
            bail!(
                "{}: `weight` has shape {:?}, expected (hidden,)",
                path.display(),
                weight.dims()
            );
        }
        Ok((
            Self {
                weight: weight.clone(),
            },
            encoder,
        ))
    }

    /// Rewards `(N,)` of features `(N, hidden)`.
    pub fn rewards(&self, features: &Tensor) -> Result<Tensor> {
        Ok(features
            .to_dtype(self.weight.dtype())?
            .broadcast_mul(&self.weight)?
            .sum(D::Minus1)?)
    }

    /// Fits a head to the features of chosen and rejected responses, row i against row i.
    pub fn fit(chosen: &Tensor, rejected: &Tensor, cfg: &FitConfig) -> Result<(Self, FitReport)> {
        let (n, hidden) = chosen.dims2()?;
        if n == 0 || rejected.dims() != chosen.dims() {
            bail!(
                "need matching, non-empty chosen and rejected features (got {:?} and {:?})",
                chosen.dims(),
                rejected.dims()
            );
        }
        let diff = (chosen - rejected)?.to_dtype(DType::F32)?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let init: Vec<f32> = (0..hidden).map(|_| rng.random_range(-0.01..0.01)).collect();
        let w = Var::from_tensor(&Tensor::from_vec(init, hidden, diff.device())?)?;
        let vars = vec![("head.weight".to_string(), w.clone())];
        let mut opt = Trainer::new(
            &vars,
            AdamWConfig {
                lr: cfg.lr,
                weight_decay: cfg.weight_decay,
                no_decay: vec![],
                max_grad_norm: None,
                ..AdamWConfig::default()
            },
            Schedule::constant(cfg.lr),
            1,
        )?;
        let measure = |w: &Tensor| -> Result<(f64, f64)> {
            let m = diff.broadcast_mul(w)?.sum(D::Minus1)?;
            let loss = log_sigmoid(&m)?.neg()?.mean_all()?.to_scalar::<f32>()? as f64;
            let right = m
                .gt(0.0)?
                .to_dtype(DType::F32)?
                .mean_all()?
                .to_scalar::<f32>()? as f64;
            Ok((loss, right))
        };
        let (loss_before, accuracy_before) = measure(w.as_tensor())?;
        for _ in 0..cfg.epochs {
            crate::interrupt::check()?;
            let margin = diff.broadcast_mul(w.as_tensor())?.sum(D::Minus1)?;
            let loss = log_sigmoid(&margin)?.neg()?.mean_all()?;
            opt.step(loss)?;
        }
        let (loss_after, accuracy_after) = measure(w.as_tensor())?;
        Ok((
            Self {
                weight: w.as_tensor().detach(),
            },
            FitReport {
                loss_before,
                loss_after,
                accuracy_before,
                accuracy_after,
            },
        ))
    }
}

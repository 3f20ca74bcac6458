use super::MetaBuffer;
use crate::model::weights;
use crate::train::optimizer::AdamWConfig;
use crate::train::schedule::Schedule;
use crate::train::Trainer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaInit {
    /// PyTorch's `nn.Linear` default, seeded: weights and biases U(-1/√fan_in, 1/√fan_in).
    Standard,
    /// The published code's: every weight 0.1, every bias 0. All hidden units then stay
    /// identical forever (they get identical gradients).
    Reference,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaConfig {
    pub hidden: usize,
    pub init: MetaInit,
    pub seed: u64,
    pub lr: f64,
    /// Weight decay on the two weight matrices (never on biases).
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub max_grad_norm: Option<f64>,
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self {
            hidden: 100,
            init: MetaInit::Standard,
            seed: 0,
            lr: 5e-3,
            weight_decay: 1e-4,
            betas: (0.9, 0.999),
            max_grad_norm: Some(1.0),
        }
    }
}

/// What one meta update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetaStats {
    /// Meta-loss before the step.
    pub loss: f64,
    pub grad_norm: f64,
    /// Mean weight over the buffer before the step.
    pub mean_weight: f64,
}

pub struct MetaLearner {
    pub config: MetaConfig,
    vars: Vec<(String, Var)>,
    opt: Trainer,
}

const NAMES: [&str; 4] = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"];

impl MetaLearner {
    /// A fresh learner in `dtype` (f32 normally; f64 for gradient checks).
    pub fn new(config: MetaConfig, device: &Device, dtype: DType) -> Result<Self> {
        if config.hidden == 0 {
            bail!("meta_learner: hidden must be at least 1");
        }
        let h = config.hidden;
        // Weights, gradients and two AdamW moments of 3h + 1 parameters, in f64 at most.
        crate::memory::ensure_fits(
            &format!("meta_learner: hidden = {h}"),
            (3.0 * h as f64 + 1.0) * 4.0 * 8.0,
        )?;
        let shapes: [&[usize]; 4] = [&[h, 1], &[h], &[1, h], &[1]];
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let vars = NAMES
            .iter()
            .zip(shapes)
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let bound = if name.starts_with("fc1") {
                    1.0
                } else {
                    1.0 / (h as f64).sqrt()
                };
                let values: Vec<f64> = match config.init {
                    MetaInit::Standard => (0..n).map(|_| rng.random_range(-bound..bound)).collect(),
                    MetaInit::Reference if name.ends_with("weight") => vec![0.1; n],
                    MetaInit::Reference => vec![0.0; n],
                };
                let t = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
                Ok((name.to_string(), Var::from_tensor(&t)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let opt = Self::optimizer(&vars, &config)?;
        Ok(Self { config, vars, opt })
    }

    fn optimizer(vars: &[(String, Var)], c: &MetaConfig) -> Result<Trainer> {
        Trainer::new(
            vars,
            AdamWConfig {
                lr: c.lr,
                beta1: c.betas.0,
                beta2: c.betas.1,
                weight_decay: c.weight_decay,
                no_decay: vec!["bias".into()],
                max_grad_norm: c.max_grad_norm,
                ..AdamWConfig::default()
            },
            Schedule::constant(c.lr),
            1,
        )
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Meta updates taken so far.
    pub fn steps(&self) -> u64 {
        self.opt.steps()
    }

    fn var(&self, i: usize) -> &Tensor {
        self.vars[i].1.as_tensor()
    }

    /// `w = σ(fc2(tanh(fc1(s))))` for scores `(N,)`, differentiable in the parameters.
    pub fn forward(&self, scores: &Tensor) -> Result<Tensor> {
        let s = scores.to_dtype(self.var(0).dtype())?.unsqueeze(1)?;
        let hidden = s
            .matmul(&self.var(0).t()?)?
            .broadcast_add(self.var(1))?
            .tanh()?;
        let out = hidden
            .matmul(&self.var(2).t()?)?
            .broadcast_add(self.var(3))?
            .squeeze(1)?;
        crate::objective::sigmoid(&out)
    }

    /// The weights as plain numbers (no gradient reaches the learner through them).
    pub fn weights(&self, scores: &[f64]) -> Result<Vec<f64>> {
        let s = Tensor::from_vec(scores.to_vec(), scores.len(), self.var(0).device())?;
        Ok(self
            .forward(&s)?
            .detach()
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?)
    }

    /// `mean[w(s)·ℓ_off + (1 - w(s))·ℓ_on]` over a buffer of detached losses.
    pub fn meta_loss(&self, scores: &Tensor, off: &Tensor, on: &Tensor) -> Result<Tensor> {
        let w = self.forward(scores)?;
        let dtype = w.dtype();
        let off = off.to_dtype(dtype)?.detach();
        let on = on.to_dtype(dtype)?.detach();
        let mixed = ((&w * &off)? + ((w.ones_like()? - &w)? * &on)?)?;
        Ok(mixed.mean_all()?)
    }

    /// One optimizer step on the meta-loss of the buffer `(s, ℓ_off, ℓ_on)`.
    pub fn step(&mut self, scores: &[f64], off: &[f64], on: &[f64]) -> Result<MetaStats> {
        let n = scores.len();
        if n == 0 || off.len() != n || on.len() != n {
            bail!(
                "meta step: need equal, non-empty scores, offline and online losses (got {}, {}, {})",
                n,
                off.len(),
                on.len()
            );
        }
        let dev = self.var(0).device().clone();
        let t = |v: &[f64]| Tensor::from_vec(v.to_vec(), n, &dev);
        let s = t(scores)?;
        let mean_weight = self
            .forward(&s)?
            .mean_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let loss = self.meta_loss(&s, &t(off)?, &t(on)?)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let stats = self.opt.step(loss)?.expect("one micro-batch per update");
        Ok(MetaStats {
            loss: value,
            grad_norm: stats.grad_norm,
            mean_weight,
        })
    }

    /// One step on the buffer, which is then emptied; no step (`None`) for an empty buffer.
    pub fn fit(&mut self, buffer: &mut MetaBuffer) -> Result<Option<MetaStats>> {
        if buffer.is_empty() {
            return Ok(None);
        }
        let stats = self.step(&buffer.scores, &buffer.offline, &buffer.online)?;
        buffer.clear();
        Ok(Some(stats))
    }

    /// Writes the parameters (`meta_learner.safetensors`) and optimizer state
    /// (`meta_optimizer.safetensors`) into `dir`, with the config in the parameters' metadata.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let meta = HashMap::from([("config".to_string(), serde_json::to_string(&self.config)?)]);
        safetensors::serialize_to_file(
            self.vars.iter().map(|(n, v)| (n.as_str(), v.as_tensor())),
            Some(meta),
            &dir.join(PARAMS),
        )
        .context("cannot write the meta-learner")?;
        self.opt.optimizer().save(&dir.join(OPTIMIZER))
    }

    /// Restores a learner written by [`MetaLearner::save`].
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join(PARAMS);
        let (tensors, metadata) = weights::read(&path, device)?;
        let config: MetaConfig = metadata
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .with_context(|| format!("{}: metadata `config` is missing", path.display()))?;
        let mut learner = Self::new(config, device, DType::F32)?;
        for (name, var) in &learner.vars {
            let t = weights::state_tensor(&tensors, name, var.dims(), &path)?;
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        learner.opt.optimizer_mut().load(&dir.join(OPTIMIZER))?;
        Ok(learner)
    }
}

pub const PARAMS: &str = "meta_learner.safetensors";
pub const OPTIMIZER: &str = "meta_optimizer.safetensors";

//! The one training step every loop uses (policy, warm-up, meta-learner, reward head): backward,
//! gradient accumulation, AdamW with global-norm clipping and the learning-rate schedule. A
//! non-finite loss ([`Gradients::accumulate`]) or gradient norm ([`AdamW::step`]) is refused
//! before any weight changes.

use super::grads::Gradients;
use super::optimizer::{AdamW, AdamWConfig, StepStats};
use super::schedule::{Schedule, ScheduleKind};
use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// How a trainer optimises: AdamW's hyper-parameters, the schedule and accumulation. The
/// defaults are TRL's where it has one (clip 1.0, constant schedule, no warm-up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub clip: f64,
    pub schedule: ScheduleKind,
    /// Warm-up as a fraction of `total_steps`.
    pub warmup: f64,
    /// Optimizer updates the schedule spans (needed by a decaying schedule).
    pub total_steps: u64,
    /// The learning rate a decaying schedule ends at, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Micro-batches (calls of `step`) per optimizer update.
    pub accumulate: usize,
    /// Parameters whose name contains one of these get no weight decay.
    #[serde(skip)]
    pub no_decay: Vec<String>,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        let adamw = AdamWConfig::default();
        Self {
            lr: adamw.lr,
            betas: [adamw.beta1, adamw.beta2],
            eps: adamw.eps,
            weight_decay: adamw.weight_decay,
            clip: adamw.max_grad_norm.unwrap_or(0.0),
            schedule: ScheduleKind::Constant,
            warmup: 0.0,
            total_steps: 0,
            min_lr_ratio: 0.0,
            accumulate: 1,
            no_decay: adamw.no_decay,
        }
    }
}

impl TrainerConfig {
    /// A trainer of `vars` with this config.
    pub fn trainer(&self, vars: &[(String, Var)]) -> Result<Trainer> {
        Trainer::new(vars, self.adamw(), self.schedule()?, self.accumulate)
    }

    fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            beta1: self.betas[0],
            beta2: self.betas[1],
            eps: self.eps,
            weight_decay: self.weight_decay,
            no_decay: self.no_decay.clone(),
            max_grad_norm: (self.clip != 0.0).then_some(self.clip),
            ..AdamWConfig::default()
        }
    }

    fn schedule(&self) -> Result<Schedule> {
        if self.schedule != ScheduleKind::Constant && self.total_steps == 0 {
            bail!("a decaying schedule needs `total_steps`");
        }
        for (key, v) in [("warmup", self.warmup), ("min_lr_ratio", self.min_lr_ratio)] {
            if !(0.0..=1.0).contains(&v) {
                bail!("`{key}` is a fraction in [0, 1], got {v}");
            }
        }
        if self.accumulate == 0 {
            bail!("`accumulate` must be at least 1");
        }
        Ok(Schedule {
            kind: self.schedule,
            lr: self.lr,
            warmup_steps: Schedule::warmup_from_ratio(self.total_steps, self.warmup),
            total_steps: self.total_steps,
            min_lr_ratio: self.min_lr_ratio,
        })
    }
}

pub struct Trainer {
    adamw: AdamW,
    schedule: Schedule,
    grads: Gradients,
    accumulate: usize,
    vars: Vec<(String, Var)>,
}

impl Trainer {
    /// Updates every `accumulate` micro-batches (at least 1).
    pub fn new(
        vars: &[(String, Var)],
        adamw: AdamWConfig,
        schedule: Schedule,
        accumulate: usize,
    ) -> Result<Self> {
        Ok(Self {
            adamw: AdamW::new(vars, adamw)?,
            schedule,
            grads: Gradients::new(),
            accumulate: accumulate.max(1),
            vars: vars.to_vec(),
        })
    }

    /// Backpropagates `loss`; every `accumulate` calls, updates the weights from the averaged
    /// gradients and says what the update did (`None` while accumulating).
    pub fn step(&mut self, loss: Tensor) -> Result<Option<StepStats>> {
        self.grads.accumulate(loss, &self.vars)?;
        if self.grads.micro_batches() < self.accumulate {
            return Ok(None);
        }
        let lr = self.schedule.lr_at(self.adamw.steps());
        let stats = self.adamw.step(&self.grads, lr);
        self.grads.clear();
        stats.map(Some)
    }

    /// Optimizer updates so far.
    pub fn steps(&self) -> u64 {
        self.adamw.steps()
    }

    /// The optimizer, whose state a checkpoint saves.
    pub fn optimizer(&self) -> &AdamW {
        &self.adamw
    }

    /// The optimizer, to restore its state from a checkpoint.
    pub fn optimizer_mut(&mut self) -> &mut AdamW {
        &mut self.adamw
    }
}

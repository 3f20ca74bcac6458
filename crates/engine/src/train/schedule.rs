use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

/// Learning rate per optimizer step, as HF's `get_*_schedule_with_warmup` computes it: linear
/// warm-up from 0 over `warmup_steps`, then constant, linear or cosine decay to
/// `min_lr_ratio * lr` at `total_steps` (OpenRLHF's `cosine_with_min_lr` uses 0.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_lr_ratio: f64,
}

impl Schedule {
    pub fn constant(lr: f64) -> Self {
        Self {
            kind: ScheduleKind::Constant,
            lr,
            warmup_steps: 0,
            total_steps: 0,
            min_lr_ratio: 0.0,
        }
    }

    /// The warm-up length for a fraction (e.g. 0.03) of `total_steps`, rounded up as HF does.
    pub fn warmup_from_ratio(total_steps: u64, ratio: f64) -> u64 {
        (total_steps as f64 * ratio).ceil() as u64
    }

    /// Learning rate for the optimizer step with 0-based index `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let decay = match self.kind {
            ScheduleKind::Constant => return self.lr,
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay)
    }
}

//! Training: one [`Trainer`] (gradient accumulation, the fused AdamW optimizer, learning-rate
//! schedules) for every loop, and checkpoints.

pub mod checkpoint;
pub mod grads;
pub mod optimizer;
pub mod schedule;
pub mod trainer;

pub use trainer::{Trainer, TrainerConfig};

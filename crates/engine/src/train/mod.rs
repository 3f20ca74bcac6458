//! Training: gradient accumulation, the fused AdamW optimizer, learning-rate schedules and
//! checkpoints.

pub mod checkpoint;
pub mod grads;
pub mod optimizer;
pub mod schedule;

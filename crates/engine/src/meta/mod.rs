//! MetaAPO's meta-learner (docs/ALGORITHMS.md, "MetaAPO"): a 1 → hidden → 1 MLP mapping an offline
//! pair's preference score `s = log σ(β_in·Δ_off)` to a weight `w ∈ (0, 1)`, fitted on the
//! meta-loss `mean[w·ℓ_off + (1 - w)·ℓ_on]` with its own optimizer.

mod buffer;
mod learner;

pub use buffer::MetaBuffer;
pub use learner::{MetaConfig, MetaInit, MetaLearner, MetaStats};

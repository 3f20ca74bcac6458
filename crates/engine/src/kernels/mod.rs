//! Differentiable building blocks of the decoder. candle-nn's fused `rms_norm`, `softmax_last_dim`
//! and `rope` have no backward pass (gradients silently stop), so these are written from tensor
//! ops, or as custom ops that carry their own backward.

mod logprobs;
mod mask;
mod norm;
mod rope;

pub use logprobs::token_logprobs;
pub use mask::{attention_bias, MASKED};
pub use norm::rms_norm;
pub use rope::{Rope, RopeScaling};

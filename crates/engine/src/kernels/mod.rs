//! Differentiable building blocks of the decoder. candle-nn's fused `rms_norm`, `softmax_last_dim`
//! and `rope` have no backward pass (gradients silently stop), so these are written from tensor
//! ops, or as custom ops that carry their own backward.

mod logprobs;
mod mask;
mod norm;
mod rope;
mod skinny;
mod softmax;

pub use logprobs::token_logprobs;
pub use mask::{attention_bias, MASKED};
pub use norm::rms_norm;
pub use rope::{Rope, RopeScaling};
pub use skinny::linear;
pub use softmax::masked_softmax;

use candle_core::{CpuStorage, Layout, Result, WithDType};

/// The elements of a contiguous CPU tensor, as a custom op's `cpu_fwd` receives it.
fn cpu_rows<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("a CPU kernel was given a non-contiguous tensor"),
    }
}

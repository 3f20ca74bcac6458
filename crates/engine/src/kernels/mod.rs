//! Differentiable building blocks of the decoder. candle-nn's fused `rms_norm`, `softmax_last_dim`
//! and `rope` have no backward pass (gradients silently stop), so these are written from tensor
//! ops, or as custom ops that carry their own backward.

mod attention;
mod bf16_gemm;
#[cfg(test)]
mod check;
mod linear;
mod logprobs;
mod mask;
mod norm;
mod rope;
mod simd;
mod skinny;
mod softmax;
mod swiglu;

pub use attention::{attend, attention, rotate, Heads};
pub use linear::{linear, Matmul};
pub use logprobs::token_logprobs;
pub use mask::{attention_bias, MASKED};
pub use norm::rms_norm;
pub use rope::{Rope, RopeScaling};
pub use swiglu::swiglu;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor, WithDType};

/// The elements of a contiguous CPU tensor, as a custom op's `cpu_fwd` receives it.
fn cpu_rows<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("a CPU kernel was given a non-contiguous tensor"),
    }
}

/// Whether the fused CPU kernels cover `x`: f32 and f64 on the CPU. Elsewhere (bf16, GPUs) the
/// composed ops run, so every kernel keeps a fallback.
fn fusable(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Runs the f32 or the f64 version of a kernel on two contiguous CPU inputs of that dtype.
fn on_floats(
    (s1, l1, s2, l2): (&CpuStorage, &Layout, &CpuStorage, &Layout),
    f32_kernel: impl Fn(&[f32], &[f32]) -> Vec<f32>,
    f64_kernel: impl Fn(&[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    Ok(match s1 {
        CpuStorage::F32(_) => CpuStorage::F32(f32_kernel(cpu_rows(s1, l1)?, cpu_rows(s2, l2)?)),
        CpuStorage::F64(_) => CpuStorage::F64(f64_kernel(cpu_rows(s1, l1)?, cpu_rows(s2, l2)?)),
        _ => candle_core::bail!("fused CPU kernels take f32 and f64 only"),
    })
}

/// [`on_floats`] for three inputs.
fn on_floats3(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
    f32_kernel: impl Fn(&[f32], &[f32], &[f32]) -> Vec<f32>,
    f64_kernel: impl Fn(&[f64], &[f64], &[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    Ok(match s1 {
        CpuStorage::F32(_) => CpuStorage::F32(f32_kernel(
            cpu_rows(s1, l1)?,
            cpu_rows(s2, l2)?,
            cpu_rows(s3, l3)?,
        )),
        CpuStorage::F64(_) => CpuStorage::F64(f64_kernel(
            cpu_rows(s1, l1)?,
            cpu_rows(s2, l2)?,
            cpu_rows(s3, l3)?,
        )),
        _ => candle_core::bail!("fused CPU kernels take f32 and f64 only"),
    })
}

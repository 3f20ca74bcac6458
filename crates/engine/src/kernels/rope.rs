use super::simd::{vectorized, Vectorized};
use super::{cpu_rows, fusable};
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D};
use num_traits::Float;
use rayon::prelude::*;

/// RoPE frequency scaling (`rope_scaling` in config.json).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Linear {
        factor: f64,
    },
    /// Llama 3.1's piecewise scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Rotary position embedding with HF's non-interleaved ("rotate half") layout.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    pub fn new(
        head_dim: usize,
        theta: f64,
        scaling: Option<&RopeScaling>,
        device: &Device,
    ) -> Result<Self> {
        let inv_freq: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
            .map(|f| scale_frequency(f, scaling))
            .collect();
        let n = inv_freq.len();
        Ok(Self {
            inv_freq: Tensor::from_vec(inv_freq, (1, 1, n), device)?,
        })
    }

    /// cos and sin for per-row positions `(B, T)`, shaped `(B, 1, T, head_dim)` for broadcasting
    /// over heads. Angles are computed in f32 (f64 for f64 models), as HF does.
    pub fn cos_sin(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let wide = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let pos = positions.to_dtype(wide)?.unsqueeze(D::Minus1)?;
        let freqs = pos.broadcast_mul(&self.inv_freq.to_dtype(wide)?)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?.unsqueeze(1)?;
        Ok((emb.cos()?.to_dtype(dtype)?, emb.sin()?.to_dtype(dtype)?))
    }

    /// Rotates `x` of shape `(B, H, T, head_dim)` by `cos` and `sin` of shape `(B, 1, T, head_dim)`.
    ///
    /// On CPU in f32/f64 one op that reads `x` through its strides (the heads' transposed view,
    /// no copy) and writes a contiguous result, with its own backward; composed, the halves,
    /// their negation, the concatenation and both products are each a tensor kept for the
    /// backward pass. Other devices, dtypes and shapes use the composed ops.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, _, t, d) = x.dims4()?;
        let fused = fusable(x)
            && cos.dtype() == x.dtype()
            && sin.dtype() == x.dtype()
            && cos.dims() == [b, 1, t, d]
            && sin.dims() == [b, 1, t, d]
            && x.stride()[3] == 1
            && d % 2 == 0;
        if fused {
            return x.apply_op3(
                &cos.contiguous()?,
                &sin.contiguous()?,
                Rotate { inverse: false },
            );
        }
        composed(x, cos, sin)
    }
}

/// The transpose of [`Rope::apply`]'s rotation (what its backward applies to a gradient), with
/// no graph: for kernels that write their own backward. CPU, f32 and f64, `x` `(B, H, T, D)`.
pub(super) fn rotate_back(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.apply_op3_no_bwd(cos, sin, &Rotate { inverse: true })
}

fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// The rotation (or, `inverse`, its transpose: the backward pass) as one CPU op.
struct Rotate {
    inverse: bool,
}

/// Rows per parallel task.
const ROWS: usize = 64;

/// Rotates every `(b, h, t)` row of `x`, read at `offset + b·s0 + h·s1 + t·s2`, into a
/// contiguous `(B, H, T, D)` result. Forward: `[x1 c − x2 s, x2 c + x1 s]`; inverse:
/// `[x1 c + x2 s, x2 c − x1 s]`. Each product is rounded before the sum, as the composed ops do.
fn rotate<T: candle_core::WithDType + Float>(
    x: &[T],
    l: &Layout,
    cos: &[T],
    sin: &[T],
    inverse: bool,
) -> Result<Vec<T>> {
    let (_, heads, t, d) = l.shape().dims4()?;
    let mut out = vec![T::zero(); l.shape().elem_count()];
    out.par_chunks_mut(ROWS * d)
        .enumerate()
        .for_each(|(block, out)| {
            vectorized(Rows {
                out,
                first: block * ROWS,
                x,
                strides: (l.stride(), l.start_offset()),
                dims: (heads, t, d),
                cos,
                sin,
                inverse,
            })
        });
    Ok(out)
}

struct Rows<'a, T> {
    out: &'a mut [T],
    /// The index of `out`'s first row among all `(b, h, t)` rows.
    first: usize,
    x: &'a [T],
    strides: (&'a [usize], usize),
    dims: (usize, usize, usize),
    cos: &'a [T],
    sin: &'a [T],
    inverse: bool,
}

impl<T: Float> Vectorized for Rows<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let (heads, t, d) = self.dims;
        let (s, offset) = self.strides;
        let half = d / 2;
        for (i, dst) in self.out.chunks_mut(d).enumerate() {
            let row = self.first + i;
            let (b, h, p) = (row / (heads * t), row / t % heads, row % t);
            let (x1, x2) = self.x[offset + b * s[0] + h * s[1] + p * s[2]..][..d].split_at(half);
            let at = (b * t + p) * d;
            let (c1, c2) = self.cos[at..at + d].split_at(half);
            let (s1, s2) = self.sin[at..at + d].split_at(half);
            let (d1, d2) = dst.split_at_mut(half);
            let angles = c1.iter().zip(c2).zip(s1.iter().zip(s2));
            let pairs = d1.iter_mut().zip(d2.iter_mut()).zip(x1.iter().zip(x2));
            for (((d1, d2), (&x1, &x2)), ((&c1, &c2), (&s1, &s2))) in pairs.zip(angles) {
                if self.inverse {
                    *d1 = x1 * c1 + x2 * s2;
                    *d2 = x2 * c2 - x1 * s1;
                } else {
                    *d1 = x1 * c1 + -x2 * s1;
                    *d2 = x2 * c2 + x1 * s2;
                }
            }
        }
    }
}

impl CustomOp3 for Rotate {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match s1 {
            CpuStorage::F32(x) => CpuStorage::F32(rotate(
                x,
                l1,
                cpu_rows(s2, l2)?,
                cpu_rows(s3, l3)?,
                self.inverse,
            )?),
            CpuStorage::F64(x) => CpuStorage::F64(rotate(
                x,
                l1,
                cpu_rows(s2, l2)?,
                cpu_rows(s3, l3)?,
                self.inverse,
            )?),
            _ => candle_core::bail!("rope: only f32 and f64 on CPU"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &Rotate {
                inverse: !self.inverse,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

fn scale_frequency(inv_freq: f64, scaling: Option<&RopeScaling>) -> f64 {
    match scaling {
        None => inv_freq,
        Some(RopeScaling::Linear { factor }) => inv_freq / factor,
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_len,
        }) => {
            let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
            let low_freq_wavelen = old_len / low_freq_factor;
            let high_freq_wavelen = old_len / high_freq_factor;
            if wavelen < high_freq_wavelen {
                inv_freq
            } else if wavelen > low_freq_wavelen {
                inv_freq / factor
            } else {
                let smooth =
                    (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::{assert_matches_finite_differences, max_diff};
    use super::*;
    use candle_core::Var;

    /// Two rows with different positions; `x` is the heads' transposed view, as in attention.
    fn inputs(dtype: DType) -> (Var, Tensor, Tensor) {
        let dev = Device::Cpu;
        let rope = Rope::new(8, 10_000.0, None, &dev).unwrap();
        let positions = Tensor::new(&[[0u32, 1, 2], [5, 6, 7]], &dev).unwrap();
        let (cos, sin) = rope.cos_sin(&positions, dtype).unwrap();
        let x = Tensor::randn(0f64, 1.0, (2, 3, 4, 8), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        (Var::from_tensor(&x).unwrap(), cos, sin)
    }

    #[test]
    fn forward_and_backward_match_the_composed_ops() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
            let (x, cos, sin) = inputs(dtype);
            let heads = x.transpose(1, 2).unwrap();
            let r = Tensor::randn(0f64, 1.0, (2, 4, 3, 8), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let want = composed(&heads, &cos, &sin).unwrap();
            let got = Rope::apply(&heads, &cos, &sin).unwrap();
            assert!(got.is_contiguous());
            assert!(max_diff(&want, &got) <= tol, "{dtype:?} forward");
            let grad = |y: Tensor| {
                let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(&x).unwrap().clone()
            };
            assert!(
                max_diff(&grad(want), &grad(got)) <= tol,
                "{dtype:?} backward"
            );
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (x, cos, sin) = inputs(DType::F64);
        let r = Tensor::randn(0f64, 1.0, (2, 4, 3, 8), &Device::Cpu).unwrap();
        assert_matches_finite_differences(&x, |x| {
            let heads = x.transpose(1, 2).unwrap();
            (Rope::apply(&heads, &cos, &sin).unwrap() * &r).unwrap()
        });
    }
}

use super::simd::{self, vectorized, KernelExp, Vectorized};
use super::{fusable, on_floats};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType, D};
use rayon::prelude::*;

/// Attention probabilities `softmax(scale * scores + bias)` over the last axis, for scores
/// `(B, H, Tq, Tk)` and an additive mask bias `(B, 1, Tq, Tk)` shared by the heads.
///
/// On CPU (f32, f64) one pass per row forward and one backward: composed, the scale, bias, max,
/// subtract, exp, sum and divide each write a full `(B, H, Tq, Tk)` tensor both ways. The bias
/// is a mask and gets no gradient. Other devices and dtypes use the composed ops.
pub fn masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    if fusable(scores) {
        let bias = bias.to_dtype(scores.dtype())?.contiguous()?;
        scores
            .contiguous()?
            .apply_op2(&bias, MaskedSoftmax { scale })
    } else {
        composed(scores, bias, scale)
    }
}

fn composed(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let wide = (scores * scale)?.broadcast_add(&bias.to_dtype(scores.dtype())?)?;
    candle_nn::ops::softmax(&wide, D::Minus1)
}

struct MaskedSoftmax {
    scale: f64,
}

/// The bias row for each of the `rows` score rows: score rows run over (b, h, q), bias rows over
/// (b, q).
fn bias_row(row: usize, heads: usize, tq: usize) -> usize {
    (row / (heads * tq)) * tq + row % tq
}

fn forward<T: WithDType + KernelExp>(
    scores: &[T],
    bias: &[T],
    (heads, tq, tk): (usize, usize, usize),
    scale: T,
) -> Vec<T> {
    let mut out = vec![T::zero(); scores.len()];
    out.par_chunks_mut(tk)
        .zip(scores.par_chunks(tk))
        .enumerate()
        .for_each(|(r, (dst, src))| {
            let b = &bias[bias_row(r, heads, tq) * tk..][..tk];
            vectorized(Row {
                out: dst,
                scores: src,
                bias: b,
                scale,
            });
        });
    out
}

struct Row<'a, T> {
    out: &'a mut [T],
    scores: &'a [T],
    bias: &'a [T],
    scale: T,
}

impl<T: KernelExp> Vectorized for Row<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        for ((d, &s), &m) in self.out.iter_mut().zip(self.scores).zip(self.bias) {
            *d = s * self.scale + m;
        }
        let max = simd::max(self.out);
        for d in self.out.iter_mut() {
            *d = (*d - max).kernel_exp();
        }
        let sum = simd::sum(self.out);
        self.out.iter_mut().for_each(|d| *d = *d / sum);
    }
}

/// `d scores = scale * y * (g - Σ g y)` per row.
fn backward<T: WithDType + KernelExp>(y: &[T], g: &[T], tk: usize, scale: T) -> Vec<T> {
    let mut out = vec![T::zero(); y.len()];
    out.par_chunks_mut(tk)
        .zip(y.par_chunks(tk).zip(g.par_chunks(tk)))
        .for_each(|(out, (y, grad))| {
            vectorized(RowGrad {
                out,
                y,
                grad,
                scale,
            })
        });
    out
}

struct RowGrad<'a, T> {
    out: &'a mut [T],
    y: &'a [T],
    grad: &'a [T],
    scale: T,
}

impl<T: KernelExp> Vectorized for RowGrad<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let dot = simd::sum_zip(self.y, self.grad, |a, b| a * b);
        for ((d, &y), &g) in self.out.iter_mut().zip(self.y).zip(self.grad) {
            *d = self.scale * y * (g - dot);
        }
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, heads, tq, tk) = l1.shape().dims4()?;
        if l2.shape().dims4()? != (b, 1, tq, tk) {
            candle_core::bail!(
                "masked softmax: scores {:?} need a bias of ({b}, 1, {tq}, {tk}), got {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let dims = (heads, tq, tk);
        let out = on_floats(
            (s1, l1, s2, l2),
            |s, m| forward(s, m, dims, self.scale as f32),
            |s, m| forward(s, m, dims, self.scale),
        )?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(masked_softmax_grad(res, grad, self.scale)?), None))
    }
}

/// The gradient of the scores under [`masked_softmax`], from its output `y` and the gradient
/// `g` of that output: `scale * y * (g - Σ g y)` per row. CPU, f32 and f64.
pub(super) fn masked_softmax_grad(y: &Tensor, g: &Tensor, scale: f64) -> Result<Tensor> {
    y.contiguous()?
        .apply_op2_no_bwd(&g.contiguous()?, &MaskedSoftmaxGrad { scale })
}

struct MaskedSoftmaxGrad {
    scale: f64,
}

impl CustomOp2 for MaskedSoftmaxGrad {
    fn name(&self) -> &'static str {
        "masked-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let tk = l1.shape().dims4()?.3;
        let out = on_floats(
            (s1, l1, s2, l2),
            |y, g| backward(y, g, tk, self.scale as f32),
            |y, g| backward(y, g, tk, self.scale),
        )?;
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::{assert_matches_finite_differences, max_diff};
    use super::*;
    use candle_core::{DType, Device, Var};

    fn inputs(dtype: DType) -> (Var, Tensor) {
        let dev = Device::Cpu;
        let s = Tensor::randn(0f64, 1.0, (2, 3, 4, 5), &dev).unwrap();
        // Row 0 of batch 0 masks its last two keys; batch 1 masks its first key everywhere.
        let mut m = vec![0f64; 2 * 4 * 5];
        m[3] = -1e9;
        m[4] = -1e9;
        for q in 0..4 {
            m[20 + q * 5] = -1e9;
        }
        let bias = Tensor::from_vec(m, (2, 1, 4, 5), &dev).unwrap();
        (
            Var::from_tensor(&s.to_dtype(dtype).unwrap()).unwrap(),
            bias.to_dtype(dtype).unwrap(),
        )
    }

    #[test]
    fn forward_and_backward_match_the_composed_ops() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-6)] {
            let (s, bias) = inputs(dtype);
            let r = Tensor::randn(0f64, 1.0, (2, 3, 4, 5), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let (want, got) = (
                composed(&s, &bias, 0.7).unwrap(),
                masked_softmax(&s, &bias, 0.7).unwrap(),
            );
            assert!(max_diff(&want, &got) <= tol, "{dtype:?} forward");
            let grad = |y: Tensor| {
                let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                g.get(&s).unwrap().clone()
            };
            let (gw, gg) = (grad(want), grad(got));
            assert!(max_diff(&gw, &gg) <= tol, "{dtype:?} backward");
            assert!(max_diff(&gg, &gg.zeros_like().unwrap()) > 0.1);
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (s, bias) = inputs(DType::F64);
        let r = Tensor::randn(0f64, 1.0, (2, 3, 4, 5), &Device::Cpu).unwrap();
        assert_matches_finite_differences(&s, |x| {
            (masked_softmax(x, &bias, 0.7).unwrap() * &r).unwrap()
        });
    }
}

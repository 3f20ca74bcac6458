use super::simd::{self, vectorized, Vectorized};
use super::{fusable, on_floats, on_floats3};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use num_traits::Float;
use rayon::prelude::*;

/// RMSNorm as HF computes it: normalise in f32, cast back, then scale by the weight.
///
/// On CPU in f32/f64 one op with its own backward: composed, the square, mean, sqrt, reciprocal
/// and two products each keep a full activation for the backward pass; fused, only the input
/// does. Other devices and dtypes use the composed ops.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fusable(x) && weight.dtype() == x.dtype() {
        return x
            .contiguous()?
            .apply_op2(&weight.contiguous()?, RmsNorm { eps });
    }
    composed(x, weight, eps)
}

fn composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let wide = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let x = x.to_dtype(wide)?;
    let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_rms)?
        .to_dtype(dtype)?
        .broadcast_mul(weight)
}

struct RmsNorm {
    eps: f64,
}

/// `1 / sqrt(mean(x²) + eps)`.
#[inline(always)]
fn inv_rms<T: Float>(row: &[T], eps: T) -> T {
    let sum = simd::sum_zip(row, row, |a, b| a * b);
    let n = T::from(row.len()).unwrap_or_else(T::one);
    T::one() / (sum / n + eps).sqrt()
}

/// Rows per parallel task (and per partial sum of the weight's gradient: a fixed split, so the
/// sum's order, and its rounding, does not depend on the number of threads).
const ROWS: usize = 64;

fn forward<T: candle_core::WithDType + Float>(x: &[T], w: &[T], eps: T) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(ROWS * w.len())
        .zip(x.par_chunks(ROWS * w.len()))
        .for_each(|(out, x)| vectorized(Forward { out, x, w, eps }));
    out
}

struct Forward<'a, T> {
    out: &'a mut [T],
    x: &'a [T],
    w: &'a [T],
    eps: T,
}

impl<T: Float> Vectorized for Forward<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let d = self.w.len();
        for (dst, row) in self.out.chunks_mut(d).zip(self.x.chunks(d)) {
            let r = inv_rms(row, self.eps);
            for ((d, &v), &w) in dst.iter_mut().zip(row).zip(self.w) {
                *d = v * r * w;
            }
        }
    }
}

/// `dx = r (g w - n mean(g w n))` with `n = x r`, and `dw = Σ_rows g n`, returned as one
/// `(rows + 1, D)` buffer: the rows of `dx`, then `dw`.
fn backward<T: candle_core::WithDType + Float>(x: &[T], w: &[T], g: &[T], eps: T) -> Vec<T> {
    let d = w.len();
    let mut out = vec![T::zero(); x.len() + d];
    let (dx, dw) = out.split_at_mut(x.len());
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d))
        .zip(g.par_chunks(ROWS * d))
        .map(|((dx, x), g)| {
            let mut dw = vec![T::zero(); d];
            vectorized(Backward {
                dx,
                dw: &mut dw,
                x,
                g,
                w,
                eps,
            });
            dw
        })
        .collect();
    for p in partials {
        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    out
}

struct Backward<'a, T> {
    dx: &'a mut [T],
    dw: &'a mut [T],
    x: &'a [T],
    g: &'a [T],
    w: &'a [T],
    eps: T,
}

impl<T: Float> Vectorized for Backward<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let d = self.w.len();
        let rows = self
            .dx
            .chunks_mut(d)
            .zip(self.x.chunks(d))
            .zip(self.g.chunks(d));
        for ((dx, x), g) in rows {
            let r = inv_rms(x, self.eps);
            for ((&x, &g), dw) in x.iter().zip(g).zip(self.dw.iter_mut()) {
                *dw = *dw + g * x * r;
            }
            let dot = simd::sum_zip3(g, self.w, x, |g, w, x| g * w * x * r);
            let mean = dot / T::from(d).unwrap_or_else(T::one);
            for ((dx, &x), (&g, &w)) in dx.iter_mut().zip(x).zip(g.iter().zip(self.w)) {
                *dx = r * (g * w - x * r * mean);
            }
        }
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = l1.shape().dims().last().copied().unwrap_or(0);
        if l2.shape().dims() != [d] {
            candle_core::bail!(
                "rms norm: input {:?} needs a weight of ({d}), got {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let out = on_floats(
            (s1, l1, s2, l2),
            |x, w| forward(x, w, self.eps as f32),
            |x, w| forward(x, w, self.eps),
        )?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormGrad { eps: self.eps })?;
        let rows = x.elem_count() / w.elem_count();
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = both.narrow(0, rows, 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

struct RmsNormGrad {
    eps: f64,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
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
        let d = l2.shape().elem_count();
        let rows = l1.shape().elem_count() / d.max(1);
        let eps = self.eps;
        let out = on_floats3(
            (s1, l1),
            (s2, l2),
            (s3, l3),
            |x, w, g| backward(x, w, g, eps as f32),
            |x, w, g| backward(x, w, g, eps),
        )?;
        Ok((out, Shape::from((rows + 1, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::{assert_matches_finite_differences, max_diff};
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_and_backward_match_the_composed_ops() {
        let dev = Device::Cpu;
        // 150 rows: more than one partial sum of the weight's gradient.
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            let x = Var::from_tensor(
                &Tensor::randn(0f64, 1.0, (3, 50, 7), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let w = Var::from_tensor(
                &Tensor::randn(1f64, 0.3, 7, &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap(),
            )
            .unwrap();
            let r = Tensor::randn(0f64, 1.0, (3, 50, 7), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let (want, got) = (
                composed(&x, &w, 1e-5).unwrap(),
                rms_norm(&x, &w, 1e-5).unwrap(),
            );
            assert!(max_diff(&want, &got) <= tol, "{dtype:?} forward");
            let grads = |y: Tensor| {
                let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                (g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone())
            };
            let ((wx, ww), (gx, gw)) = (grads(want), grads(got));
            assert!(max_diff(&wx, &gx) <= tol, "{dtype:?} dx");
            assert!(max_diff(&ww, &gw) <= tol * 10.0, "{dtype:?} dw");
            assert!(max_diff(&gw, &gw.zeros_like().unwrap()) > 0.1);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1.0, (2, 3, 5), &dev).unwrap();
        let w = Tensor::randn(1f64, 0.3, 5, &dev).unwrap();
        let r = Tensor::randn(0f64, 1.0, (2, 3, 5), &dev).unwrap();
        let loss = |x: &Tensor, w: &Tensor| (rms_norm(x, w, 1e-5).unwrap() * &r).unwrap();
        assert_matches_finite_differences(&x, |x| loss(x, &w));
        assert_matches_finite_differences(&w, |w| loss(&x, w));
    }

    #[test]
    fn the_weight_gradient_does_not_depend_on_the_thread_count() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (700, 33), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 33, &dev).unwrap()).unwrap();
        let dw = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let g = rms_norm(&x, &w, 1e-5)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                g.get(&w).unwrap().to_vec1::<f32>().unwrap()
            })
        };
        assert_eq!(dw(1), dw(3));
    }
}

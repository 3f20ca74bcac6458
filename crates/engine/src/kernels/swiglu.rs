use super::simd::{vectorized, KernelExp, Vectorized};
use super::{fusable, on_floats, on_floats3};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// The SwiGLU MLP's `silu(gate) * up`.
///
/// On CPU in f32/f64 one op with its own backward, which keeps only its two inputs: composed,
/// `silu(gate)` is a third `(tokens, intermediate)` activation held until the backward pass.
/// Other devices and dtypes use the composed ops.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fusable(gate) && up.dtype() == gate.dtype() && up.shape() == gate.shape() {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
    } else {
        gate.silu()? * up
    }
}

struct SwiGlu;

/// Elements per parallel task: large enough that a task outweighs its hand-off.
const CHUNK: usize = 1 << 14;

/// `x / (1 + e^-x)`, as candle's `silu` computes it.
#[inline(always)]
fn silu<T: KernelExp>(x: T) -> T {
    x / (T::one() + (-x).kernel_exp())
}

fn forward<T: WithDType + KernelExp>(gate: &[T], up: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); gate.len()];
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(out, (gate, up))| vectorized(Forward { out, gate, up }));
    out
}

struct Forward<'a, T> {
    out: &'a mut [T],
    gate: &'a [T],
    up: &'a [T],
}

impl<T: KernelExp> Vectorized for Forward<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        for ((d, &g), &u) in self.out.iter_mut().zip(self.gate).zip(self.up) {
            *d = silu(g) * u;
        }
    }
}

/// `d gate = d out · up · σ(g)(1 + g(1 − σ(g)))` and `d up = d out · silu(g)`, returned as one
/// `(2, n)` buffer.
fn backward<T: WithDType + KernelExp>(gate: &[T], up: &[T], grad: &[T]) -> Vec<T> {
    let n = gate.len();
    let mut out = vec![T::zero(); 2 * n];
    let (dgate, dup) = out.split_at_mut(n);
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .zip(grad.par_chunks(CHUNK))
        .for_each(|(((dgate, dup), (gate, up)), grad)| {
            vectorized(Backward {
                dgate,
                dup,
                gate,
                up,
                grad,
            })
        });
    out
}

struct Backward<'a, T> {
    dgate: &'a mut [T],
    dup: &'a mut [T],
    gate: &'a [T],
    up: &'a [T],
    grad: &'a [T],
}

impl<T: KernelExp> Vectorized for Backward<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let inputs = self.gate.iter().zip(self.up).zip(self.grad);
        let outputs = self.dgate.iter_mut().zip(self.dup.iter_mut());
        for ((dg, du), ((&g, &u), &d)) in outputs.zip(inputs) {
            // One exp for both: silu(g) = g / (1 + e^-g), as `silu` computes it.
            let denom = T::one() + (-g).kernel_exp();
            let sigmoid = T::one() / denom;
            let slope = sigmoid * (T::one() + g * (T::one() - sigmoid));
            *dg = d * u * slope;
            *du = d * (g / denom);
        }
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((
            on_floats((s1, l1, s2, l2), forward, forward)?,
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwiGluGrad)?;
        let part = |i: usize| both.get(i)?.reshape(gate.shape());
        Ok((Some(part(0)?), Some(part(1)?)))
    }
}

struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
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
        let out = on_floats3((s1, l1), (s2, l2), (s3, l3), backward, backward)?;
        Ok((out, Shape::from((2, l1.shape().elem_count()))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::{assert_matches_finite_differences, max_diff};
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn forward_and_backward_match_the_composed_ops() {
        let dev = Device::Cpu;
        // More elements than one chunk, and not a multiple of it.
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let var = |mean: f64| {
                Var::from_tensor(
                    &Tensor::randn(mean, 2.0, (3, 7001), &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                )
                .unwrap()
            };
            let (g, u) = (var(0.0), var(0.5));
            let r = Tensor::randn(0f64, 1.0, (3, 7001), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let want = (g.silu().unwrap() * u.as_tensor()).unwrap();
            let got = swiglu(&g, &u).unwrap();
            assert!(max_diff(&want, &got) <= tol, "{dtype:?} forward");
            let grads = |y: Tensor| {
                let s = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                (s.get(&g).unwrap().clone(), s.get(&u).unwrap().clone())
            };
            let ((wg, wu), (gg, gu)) = (grads(want), grads(got));
            assert!(max_diff(&wg, &gg) <= tol, "{dtype:?} d gate");
            assert!(max_diff(&wu, &gu) <= tol, "{dtype:?} d up");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let g = Tensor::randn(0f64, 2.0, (3, 5), &dev).unwrap();
        let u = Tensor::randn(0f64, 1.0, (3, 5), &dev).unwrap();
        assert_matches_finite_differences(&g, |g| swiglu(g, &u).unwrap());
        assert_matches_finite_differences(&u, |u| swiglu(&g, u).unwrap());
    }
}

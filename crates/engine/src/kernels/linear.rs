//! A linear layer's product `x · wᵀ`, in the precision the model asks for.

use super::{bf16_gemm, cpu_rows, skinny};
use bf16_gemm::Operand;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// The arithmetic of a model's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Matmul {
    /// In the weights' dtype: exact f32 wherever parity matters.
    #[default]
    F32,
    /// Operands rounded to bf16, products summed in f32; weights, activations and gradients stay
    /// f32. PyTorch's CPU autocast rounds the same operands (and also rounds the result, which
    /// this keeps in f32). On a CPU with AVX512-BF16 a kernel multiplies; elsewhere the rounded
    /// operands go through the ordinary matmul.
    Bf16,
}

impl Matmul {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => anyhow::bail!("matmul precision {s:?}: expected f32 or bf16"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// `x · wᵀ` for `x` `(m, k)` and a weight `w` `(n, k)`. A few rows (decoding) take the skinny
/// kernel in either precision: it is bound by reading the weights, which bf16 would not shorten
/// without a bf16 copy of them.
pub fn linear(x: &Tensor, w: &Tensor, matmul: Matmul) -> Result<Tensor> {
    if skinny::covers(x)? {
        return skinny::linear(x, w);
    }
    match matmul {
        Matmul::F32 => x.matmul(&w.t()?),
        Matmul::Bf16 if kernel_covers(x, w) => {
            x.contiguous()?.apply_op2(&w.contiguous()?, Bf16::LINEAR)
        }
        Matmul::Bf16 => rounded(x)?.matmul(&rounded(w)?.t()?),
    }
}

fn kernel_covers(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && bf16_gemm::available()
}

/// `x` rounded to bf16 (ties to even) and back; the gradient passes straight through.
fn rounded(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::BF16)?.to_dtype(x.dtype())
}

/// `C = A' · B'ᵀ` in bf16 with f32 sums, where `A'` is the first input or (`ta`) its transpose,
/// and `B'` likewise: the forward `x · wᵀ` and the backward's `dy · w` and `dyᵀ · x` read their
/// operands in place.
struct Bf16 {
    ta: bool,
    tb: bool,
}

impl Bf16 {
    const LINEAR: Self = Self {
        ta: false,
        tb: false,
    };
}

/// A contiguous `(rows, cols)` matrix read as rows of the product (`transposed`: its columns).
fn operand(data: &[f32], (rows, cols): (usize, usize), transposed: bool) -> (Operand<'_>, usize) {
    if transposed {
        (
            Operand {
                data,
                rows: cols,
                rs: 1,
                cs: cols,
            },
            rows,
        )
    } else {
        (
            Operand {
                data,
                rows,
                rs: cols,
                cs: 1,
            },
            cols,
        )
    }
}

impl CustomOp2 for Bf16 {
    fn name(&self) -> &'static str {
        "bf16-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, k) = operand(cpu_rows::<f32>(s1, l1)?, l1.shape().dims2()?, self.ta);
        let (b, k2) = operand(cpu_rows::<f32>(s2, l2)?, l2.shape().dims2()?, self.tb);
        if k != k2 {
            candle_core::bail!("bf16 matmul: the operands contract {k} and {k2} elements");
        }
        let c = bf16_gemm::gemm(a, b, k);
        Ok((CpuStorage::F32(c), Shape::from((a.rows, b.rows))))
    }

    /// `y = x wᵀ`: `dx = dy w`, `dw = dyᵀ x`, both in bf16 as autocast's backward computes them.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.ta || self.tb {
            candle_core::bail!("bf16 matmul: only the linear form has a backward pass");
        }
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2(
            w,
            Bf16 {
                ta: false,
                tb: true,
            },
        )?;
        let dw = grad.apply_op2(x, Bf16 { ta: true, tb: true })?;
        Ok((Some(dx.detach()), Some(dw.detach())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::max_diff;
    use candle_core::{Device, Var};

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        let v: Vec<f32> = (0..(shape.0 * shape.1) as u64)
            .map(|i| ((i * 2654435761 + seed * 7919) % 10007) as f32 / 5003.5 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// `a · bᵀ` in f64 from operands rounded to bf16: what every product of the bf16 path sums.
    fn reference(a: &Tensor, b: &Tensor) -> Tensor {
        let f64_of = |t: &Tensor| rounded(t).unwrap().to_dtype(DType::F64).unwrap();
        f64_of(a).matmul(&f64_of(b).t().unwrap()).unwrap()
    }

    fn relative(got: &Tensor, want: &Tensor) -> f64 {
        let scale = max_diff(want, &want.zeros_like().unwrap());
        max_diff(&got.to_dtype(DType::F64).unwrap(), want) / scale
    }

    #[test]
    fn parses_the_precisions_and_names_a_bad_one() {
        for m in [Matmul::F32, Matmul::Bf16] {
            assert_eq!(Matmul::parse(m.as_str()).unwrap(), m);
        }
        assert_eq!(Matmul::default(), Matmul::F32);
        let err = Matmul::parse("fp16").unwrap_err().to_string();
        assert!(
            err.contains("\"fp16\"") && err.contains("f32 or bf16"),
            "{err}"
        );
    }

    #[test]
    fn forward_multiplies_rounded_operands_and_stays_near_f32() {
        if !bf16_gemm::available() {
            eprintln!("no AVX512-BF16 here: the rounded-operand fallback is what runs");
        }
        // More rows than the skinny path takes, so the bf16 path runs.
        let (x, w) = (random((40, 70), 1), random((45, 70), 2));
        let got = linear(&x, &w, Matmul::Bf16).unwrap();
        assert!(relative(&got, &reference(&x, &w)) < 1e-6);
        let fallback = rounded(&x)
            .unwrap()
            .matmul(&rounded(&w).unwrap().t().unwrap())
            .unwrap();
        assert!(max_diff(&got, &fallback) < 1e-4);
        let exact = linear(&x, &w, Matmul::F32).unwrap();
        let deviation = relative(&got, &exact.to_dtype(DType::F64).unwrap());
        assert!(
            deviation > 0.0 && deviation < 1e-2,
            "bf16 against f32: {deviation}"
        );
    }

    #[test]
    fn backward_multiplies_rounded_gradients_into_every_element() {
        let (x, w) = (
            Var::from_tensor(&random((33, 50), 3)).unwrap(),
            Var::from_tensor(&random((20, 50), 4)).unwrap(),
        );
        let r = random((33, 20), 5);
        let y = linear(&x, &w, Matmul::Bf16).unwrap();
        let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (dx, dw) = (grads.get(&x).unwrap(), grads.get(&w).unwrap());
        let nonzero = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .filter(|v| **v != 0.0)
                .count()
        };
        assert_eq!(nonzero(dx), 33 * 50);
        assert_eq!(nonzero(dw), 20 * 50);
        if bf16_gemm::available() {
            // The kernel rounds the output gradient too, as autocast's backward does.
            assert!(relative(dx, &reference(&r, &w.t().unwrap())) < 1e-6);
            assert!(relative(dw, &reference(&r.t().unwrap(), &x.t().unwrap())) < 1e-6);
        }
        let exact = r
            .matmul(w.as_tensor())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        assert!(relative(dx, &exact) < 1e-2);
    }
}

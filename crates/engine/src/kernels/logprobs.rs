use super::cpu_rows;
use super::simd::{self, vectorized, KernelExp, Vectorized};
use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape,
    Tensor, WithDType, D,
};
use rayon::prelude::*;

/// `log_softmax(logits)[n, targets[n]]` for logits `(N, V)` and u32 targets `(N,)`.
///
/// On CPU this is one fused pass per row, with a fused backward (`g * (onehot - softmax)`):
/// the composed version materialises several `(N, V)` temporaries in both directions, and V is
/// ~50k for real vocabularies. Other devices use the composed candle ops. Half-precision logits
/// are widened to f32 first.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = match logits.dtype() {
        DType::F64 | DType::F32 => logits.clone(),
        _ => logits.to_dtype(DType::F32)?,
    };
    let targets = targets.to_dtype(DType::U32)?;
    if logits.device().is_cpu() {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, TokenLogprobs)
    } else {
        let picked = logits.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        picked - logits.log_sum_exp(D::Minus1)?
    }
}

struct TokenLogprobs;

/// The log-sum-exp of one row: exponentials in the row's dtype, summed in f64 partial sums (a
/// vocabulary is ~50k terms).
struct LogSumExp<'a, T>(&'a [T]);

impl<T: WithDType + KernelExp> Vectorized for LogSumExp<'_, T> {
    type Output = f64;

    #[inline(always)]
    fn run(self) -> f64 {
        let max = simd::max(self.0);
        let mut lanes = [0f64; 16];
        let chunks = self.0.chunks_exact(lanes.len());
        let exp = |x: T| (x - max).kernel_exp().to_f64();
        let rest: f64 = chunks.remainder().iter().map(|&x| exp(x)).sum();
        for c in chunks {
            for (acc, &x) in lanes.iter_mut().zip(c) {
                *acc += exp(x);
            }
        }
        max.to_f64() + (rest + lanes.iter().sum::<f64>()).ln()
    }
}

fn forward<T: WithDType + KernelExp>(logits: &[T], targets: &[u32], v: usize) -> Result<Vec<T>> {
    logits
        .par_chunks(v)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            let t = t as usize;
            if t >= v {
                candle_core::bail!("target id {t} is outside the vocabulary ({v})");
            }
            Ok(T::from_f64(row[t].to_f64() - vectorized(LogSumExp(row))))
        })
        .collect()
}

impl CustomOp2 for TokenLogprobs {
    fn name(&self) -> &'static str {
        "token-logprobs"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let targets = cpu_rows::<u32>(s2, l2)?;
        if targets.len() != n {
            candle_core::bail!(
                "token_logprobs: {n} rows of logits but {} targets",
                targets.len()
            );
        }
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(forward(cpu_rows::<f32>(s1, l1)?, targets, v)?),
            DType::F64 => CpuStorage::F64(forward(cpu_rows::<f64>(s1, l1)?, targets, v)?),
            dt => candle_core::bail!("token_logprobs: unsupported dtype {dt:?}"),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.apply_op3_no_bwd(targets, &grad.contiguous()?, &TokenLogprobsGrad)?;
        Ok((Some(g), None))
    }
}

struct TokenLogprobsGrad;

fn backward<T: WithDType + KernelExp>(
    logits: &[T],
    targets: &[u32],
    grad: &[T],
    v: usize,
) -> Vec<T> {
    let mut out = vec![T::zero(); logits.len()];
    out.par_chunks_mut(v)
        .zip(logits.par_chunks(v))
        .zip(targets.par_iter().zip(grad.par_iter()))
        .for_each(|((dst, row), (&t, &g))| {
            vectorized(RowGrad {
                out: dst,
                row,
                grad: g,
            });
            dst[t as usize] += g;
        });
    out
}

/// `-grad * softmax(row)` into `out`.
struct RowGrad<'a, T> {
    out: &'a mut [T],
    row: &'a [T],
    grad: T,
}

impl<T: WithDType + KernelExp> Vectorized for RowGrad<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let lse = T::from_f64(LogSumExp(self.row).run());
        for (d, &x) in self.out.iter_mut().zip(self.row) {
            *d = -self.grad * (x - lse).kernel_exp();
        }
    }
}

impl CustomOp3 for TokenLogprobsGrad {
    fn name(&self) -> &'static str {
        "token-logprobs-grad"
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
        let (_, v) = l1.shape().dims2()?;
        let targets = cpu_rows::<u32>(s2, l2)?;
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(backward(
                cpu_rows::<f32>(s1, l1)?,
                targets,
                cpu_rows::<f32>(s3, l3)?,
                v,
            )),
            DType::F64 => CpuStorage::F64(backward(
                cpu_rows::<f64>(s1, l1)?,
                targets,
                cpu_rows::<f64>(s3, l3)?,
                v,
            )),
            dt => candle_core::bail!("token_logprobs backward: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
}

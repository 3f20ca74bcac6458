use super::cpu_rows;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Up to this many rows of `x` take the skinny path. Decoding feeds one row per sequence, and
/// gemm's packed kernels pad and repack the whole weight for so few rows (batch-8 decoding ran at
/// half the speed of batch 1 per row); the skinny path streams each weight row once.
pub const SKINNY_MAX_ROWS: usize = 16;

/// Whether `x · wᵀ` for these rows takes the skinny path: a few f32 rows on a CPU with AVX-512.
pub fn covers(x: &Tensor) -> Result<bool> {
    Ok(x.dim(0)? <= SKINNY_MAX_ROWS
        && x.dtype() == DType::F32
        && x.device().is_cpu()
        && avx512::available())
}

/// `x · wᵀ` for `x` `(m, k)` and a weight `w` `(n, k)` where [`covers`] holds: a kernel that
/// reads each weight row once for all rows of `x`; the backward pass is candle's matmul.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Skinny)
}

struct Skinny;

impl CustomOp2 for Skinny {
    fn name(&self) -> &'static str {
        "skinny-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ((m, k), (n, k2)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if k != k2 {
            candle_core::bail!("skinny linear: x has {k} columns but the weight {k2}");
        }
        let (x, w) = (cpu_rows::<f32>(s1, l1)?, cpu_rows::<f32>(s2, l2)?);
        Ok((
            CpuStorage::F32(avx512::linear(x, w, m, n, k)),
            Shape::from((m, n)),
        ))
    }

    /// `y = x wᵀ`: `dx = dy w`, `dw = dyᵀ x`, both as ordinary (differentiable) matmuls.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), Some(grad.t()?.matmul(x)?)))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    /// Weight rows per task: enough work to amortise a rayon task, small enough to balance.
    const ROWS_PER_TASK: usize = 64;

    pub fn linear(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        // Each task fills (its weight rows) x m, transposed into (m, n) afterwards.
        let parts: Vec<Vec<f32>> = w
            .par_chunks(ROWS_PER_TASK * k)
            .map(|rows| {
                let r = rows.len() / k;
                let mut out = vec![0f32; r * m];
                // SAFETY: `available()` was checked by the caller; slices are in bounds.
                unsafe { rows_times_x(rows, x, r, m, k, &mut out) };
                out
            })
            .collect();
        let mut y = vec![0f32; m * n];
        for (task, part) in parts.iter().enumerate() {
            let j0 = task * ROWS_PER_TASK;
            for (jj, row) in part.chunks(m).enumerate() {
                for (i, v) in row.iter().enumerate() {
                    y[i * n + j0 + jj] = *v;
                }
            }
        }
        y
    }

    /// `out[j * m + i] = w[j] · x[i]` for `r` weight rows, 4 weight rows and up to 4 x rows at a
    /// time so a weight block loaded once is used against every row of x while it sits in L1.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows_times_x(w: &[f32], x: &[f32], r: usize, m: usize, k: usize, out: &mut [f32]) {
        let mut j = 0;
        while j < r {
            let rr = (r - j).min(4);
            let mut i = 0;
            while i < m {
                let cc = (m - i).min(4);
                let (wb, xb) = (&w[j * k..(j + rr) * k], &x[i * k..(i + cc) * k]);
                let mut acc = [[0f32; 4]; 4];
                match (rr, cc) {
                    (4, 4) => block::<4, 4>(wb, xb, k, &mut acc),
                    (4, 3) => block::<4, 3>(wb, xb, k, &mut acc),
                    (4, 2) => block::<4, 2>(wb, xb, k, &mut acc),
                    (4, 1) => block::<4, 1>(wb, xb, k, &mut acc),
                    (_, 4) => per_row::<4>(wb, xb, rr, k, &mut acc),
                    (_, 3) => per_row::<3>(wb, xb, rr, k, &mut acc),
                    (_, 2) => per_row::<2>(wb, xb, rr, k, &mut acc),
                    _ => per_row::<1>(wb, xb, rr, k, &mut acc),
                }
                for (a, acc_row) in acc.iter().enumerate().take(rr) {
                    for (c, v) in acc_row.iter().enumerate().take(cc) {
                        out[(j + a) * m + i + c] = *v;
                    }
                }
                i += cc;
            }
            j += rr;
        }
    }

    /// The last 1-3 weight rows, one at a time.
    #[target_feature(enable = "avx512f")]
    unsafe fn per_row<const C: usize>(
        w: &[f32],
        x: &[f32],
        rr: usize,
        k: usize,
        acc: &mut [[f32; 4]; 4],
    ) {
        for a in 0..rr {
            let mut one = [[0f32; 4]; 4];
            block::<1, C>(&w[a * k..(a + 1) * k], x, k, &mut one);
            acc[a] = one[0];
        }
    }

    /// Dot products of R weight rows with C rows of x, 16 lanes at a time, the tail masked.
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize, const C: usize>(
        w: &[f32],
        x: &[f32],
        k: usize,
        acc: &mut [[f32; 4]; 4],
    ) {
        let mut sums = [[_mm512_setzero_ps(); C]; R];
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut p = 0;
        while p < k {
            let mask: __mmask16 = if k - p >= 16 {
                0xffff
            } else {
                (1u16 << (k - p)) - 1
            };
            let mut xs = [_mm512_setzero_ps(); C];
            for (c, xv) in xs.iter_mut().enumerate() {
                *xv = _mm512_maskz_loadu_ps(mask, xp.add(c * k + p));
            }
            for (a, row) in sums.iter_mut().enumerate() {
                let wv = _mm512_maskz_loadu_ps(mask, wp.add(a * k + p));
                for (s, xv) in row.iter_mut().zip(&xs) {
                    *s = _mm512_fmadd_ps(wv, *xv, *s);
                }
            }
            p += 16;
        }
        for (a, row) in sums.iter().enumerate() {
            for (c, s) in row.iter().enumerate() {
                acc[a][c] = _mm512_reduce_add_ps(*s);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    pub fn available() -> bool {
        false
    }

    pub fn linear(_: &[f32], _: &[f32], _: usize, _: usize, _: usize) -> Vec<f32> {
        unreachable!("the skinny path is only taken where available() is true")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1;
        let v: Vec<f32> = (0..n)
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_the_matmul_for_every_small_row_count_and_ragged_widths() {
        if !avx512::available() {
            eprintln!("no avx512f here: only the fallback is in use");
        }
        for m in 1..=SKINNY_MAX_ROWS + 1 {
            for &(n, k) in &[(1, 1), (7, 33), (130, 576), (5, 15)] {
                let (x, w) = (random((m, k), m as u64), random((n, k), 7));
                let want = x.matmul(&w.t().unwrap()).unwrap();
                let got = crate::kernels::linear(&x, &w, crate::kernels::Matmul::F32).unwrap();
                assert_eq!(got.dims(), &[m, n]);
                let err = (got - &want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(err <= 1e-5 * k as f32, "m {m} n {n} k {k}: max error {err}");
            }
        }
    }

    #[test]
    fn gradients_equal_those_of_the_matmul() {
        let (x, w) = (
            Var::from_tensor(&random((3, 40), 1)).unwrap(),
            Var::from_tensor(&random((9, 40), 2)).unwrap(),
        );
        let r = random((3, 9), 3);
        let grads = |y: Tensor| {
            let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (
                g.get(&x).unwrap().to_vec2::<f32>().unwrap(),
                g.get(&w).unwrap().to_vec2::<f32>().unwrap(),
            )
        };
        let want = grads(x.matmul(&w.t().unwrap()).unwrap());
        let got = grads(crate::kernels::linear(&x, &w, crate::kernels::Matmul::F32).unwrap());
        let pairs = |a: &Vec<Vec<f32>>, b: &Vec<Vec<f32>>| {
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .map(|(p, q)| (*p, *q))
                .collect::<Vec<_>>()
        };
        for (g, e) in pairs(&got.0, &want.0)
            .into_iter()
            .chain(pairs(&got.1, &want.1))
        {
            assert!(
                g != 0.0 && (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                "{g} vs {e}"
            );
        }
    }
}

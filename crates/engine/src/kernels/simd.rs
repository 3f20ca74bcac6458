//! Element-wise loops at the CPU's full vector width, and an `exp` they can vectorise.
//!
//! The build targets baseline x86-64 (SSE2), so a plain loop runs 4 lanes wide and every
//! `f32::exp` is a scalar libm call: in the default world's run the kernels' `exp` and the loops
//! around it took more time than their matrix products. [`vectorized`] compiles a loop for the
//! best instruction set the CPU has (AVX-512, else AVX2 + FMA, chosen once at run time by `pulp`,
//! which `gemm` already uses), and [`exp`] has no branches or calls, so that loop is one vector
//! instruction stream.

use num_traits::Float;

/// A loop to run at the CPU's full vector width through [`vectorized`]. `run` must be
/// `#[inline(always)]` and call only inlined code (no rayon: its closures compile on their own,
/// for baseline x86-64, and so does a closure or function passed in).
pub trait Vectorized {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `k` compiled for the widest vector instructions this CPU has.
#[inline(always)]
pub fn vectorized<K: Vectorized>(k: K) -> K::Output {
    pulp::Arch::new().dispatch(Dispatch(k))
}

struct Dispatch<K>(K);

impl<K: Vectorized> pulp::WithSimd for Dispatch<K> {
    type Output = K::Output;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> K::Output {
        self.0.run()
    }
}

/// Partial results per reduction: 16 f32 lanes (one AVX-512 register). A float sum in one
/// accumulator cannot be vectorised (its order is fixed), so reductions keep one per lane.
const LANES: usize = 16;

/// `Σ f(a_i, b_i, c_i)` over three equally long slices, in [`LANES`] interleaved partial sums.
#[inline(always)]
pub fn sum_zip3<T: Float>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) -> T {
    let (mut lanes, mut rest) = ([T::zero(); LANES], T::zero());
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tails = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder());
    for ((&x, &y), &z) in tails {
        rest = rest + f(x, y, z);
    }
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for (((acc, &x), &y), &z) in lanes.iter_mut().zip(x).zip(y).zip(z) {
            *acc = *acc + f(x, y, z);
        }
    }
    lanes.iter().fold(rest, |t, &x| t + x)
}

/// `Σ f(a_i, b_i)` over two equally long slices, in [`LANES`] partial sums.
#[inline(always)]
pub fn sum_zip<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    sum_zip3(a, b, b, |x, y, _| f(x, y))
}

/// `Σ x_i`, in [`LANES`] partial sums.
#[inline(always)]
pub fn sum<T: Float>(xs: &[T]) -> T {
    sum_zip(xs, xs, |x, _| x)
}

/// The largest element (`-inf` for an empty slice), in [`LANES`] partial maxima.
#[inline(always)]
pub fn max<T: Float>(xs: &[T]) -> T {
    let mut lanes = [T::neg_infinity(); LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks
        .remainder()
        .iter()
        .fold(T::neg_infinity(), |m, &x| m.max(x));
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    lanes.iter().fold(rest, |m, &x| m.max(x))
}

/// `e^x` in f32 within 1 ulp over the normal range (Cephes' `expf`: `x = n ln 2 + r` with
/// `|r| <= ln 2 / 2`, a degree-6 polynomial for `e^r`, and `2^n` built in the exponent bits as
/// two factors, so overflow gives +inf, underflow subnormals then 0, and NaN stays NaN).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Beyond these every result is +inf or 0; clamping keeps n's integer conversion in range.
    let x = x.clamp(-104.0, 89.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts: n * 0.6933594 (355/512 in f32) is exact for |n| < 2^15, so r keeps
    // its low bits.
    let r = (x - n * 0.693_359_4) + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_6e-1;
    let p = p * r + 0.5;
    let e_r = p * (r * r) + r + 1.0;
    // 2^n = 2^a * 2^b with both halves in the normal exponent range for |n| <= 252.
    let n = n as i32;
    let a = n >> 1;
    let b = n - a;
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    e_r * pow2(a) * pow2(b)
}

/// The kernels' `exp`, by dtype: [`exp`] for f32, libm's for f64, whose kernels are the exact
/// reference the finite-difference tests read.
pub trait KernelExp: Float {
    fn kernel_exp(self) -> Self;
}

impl KernelExp for f32 {
    #[inline(always)]
    fn kernel_exp(self) -> f32 {
        exp(self)
    }
}

impl KernelExp for f64 {
    #[inline(always)]
    fn kernel_exp(self) -> f64 {
        self.exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct ExpAll<'a>(&'a [f32]);

    impl Vectorized for ExpAll<'_> {
        type Output = Vec<f32>;

        #[inline(always)]
        fn run(self) -> Vec<f32> {
            self.0.iter().map(|&x| exp(x)).collect()
        }
    }

    /// Distance in representable f32 values between `a` and the correctly rounded `e^x`.
    fn ulps(a: f32, x: f32) -> u32 {
        let want = (x as f64).exp() as f32;
        (a.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_one_ulp_over_the_normal_range() {
        // Every 97th f32 bit pattern whose e^x is normal, in both signs, through the vectorised
        // path and the scalar one.
        let xs: Vec<f32> = (0..u32::MAX / 97)
            .map(|i| f32::from_bits(i * 97))
            .flat_map(|x| [x, -x])
            .filter(|x| x.is_finite() && (-87.3..88.7).contains(x))
            .collect();
        let fast = vectorized(ExpAll(&xs));
        let mut worst = (0, 0.0f32);
        for (&x, &e) in xs.iter().zip(&fast) {
            assert_eq!(
                e.to_bits(),
                exp(x).to_bits(),
                "vectorised and scalar differ at {x}"
            );
            let u = ulps(e, x);
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 1, "{} ulp at x = {}", worst.0, worst.1);
        assert!(xs.len() > 10_000_000);
    }

    #[test]
    fn reductions_cover_every_element_and_the_remainder() {
        for n in [0, 1, 15, 16, 17, 33, 100] {
            let a: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos()).collect();
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (sum_zip(&a, &b, |x, y| x * y) - dot).abs() < 1e-12,
                "n = {n}"
            );
            let triple: f64 = a.iter().zip(&b).map(|(x, y)| x * y * y).sum();
            assert!((sum_zip3(&a, &b, &b, |x, y, z| x * y * z) - triple).abs() < 1e-12);
            assert!((sum(&a) - a.iter().sum::<f64>()).abs() < 1e-12, "n = {n}");
            let want = a.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(max(&a), want, "n = {n}");
        }
    }

    #[test]
    fn exp_overflows_underflows_and_keeps_nan() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-110.0), 0.0);
        assert_eq!(exp(f32::MIN), 0.0);
        assert!(exp(f32::NAN).is_nan());
        // Near the largest finite result.
        assert!(ulps(exp(88.72), 88.72) <= 2);
        // A subnormal result, to within two of the smallest subnormal steps.
        let sub = exp(-100.0);
        assert!(sub > 0.0 && !sub.is_normal());
        let step = f32::from_bits(1) as f64;
        assert!((sub as f64 - (-100f64).exp()).abs() <= 2.0 * step);
    }
}

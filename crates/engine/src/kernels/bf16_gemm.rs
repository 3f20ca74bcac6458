//! `C = A · Bᵀ` from f32 operands, multiplied in bf16 with f32 sums, on AVX512-BF16.
//!
//! Both operands are read through strides, so one kernel serves a linear layer's forward
//! (`x · Wᵀ`) and both products of its backward (`dy · W`, `dyᵀ · x`) without copying a
//! transpose first. Each operand is rounded to bf16 once, while it is packed: `A` into rows of
//! bf16 pairs, `B` into panels of [`NR`] columns whose pairs lie side by side, which is the
//! layout `vdpbf16ps` multiplies (16 lanes, each the sum of two bf16 products, added to f32).

use rayon::prelude::*;
use std::cell::RefCell;

/// An f32 matrix read through strides: element `(r, c)` is `data[r * rs + c * cs]`. `c` runs
/// along the contracted dimension.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub rs: usize,
    pub cs: usize,
}

/// The bf16 nearest `x` (ties to even), as `vcvtneps2bf16` rounds: subnormal inputs become zero
/// of the same sign, NaN stays NaN.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return (bits >> 16) as u16 | 0x40;
    }
    if bits & 0x7f80_0000 == 0 {
        return (bits >> 16) as u16 & 0x8000;
    }
    (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to bf16 and widened back: what the kernel multiplies in place of `x`.
#[cfg(test)]
pub fn round(x: f32) -> f32 {
    f32::from_bits((to_bf16(x) as u32) << 16)
}

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows of `C` per micro-tile.
const MR: usize = 12;
/// Columns of `C` per micro-tile and per packed panel of `B`: two 16-lane registers.
const NR: usize = 32;
/// Pairs of the contracted dimension per block: a panel's block (16 KiB) stays in L1 while
/// every row tile of a task passes over it.
const KC: usize = 128;
/// Rows of `C` per task: its block of `A` (96 KiB per `KC`) stays in L2 across its panels.
const MC: usize = 16 * MR;
/// Panels per task.
const PANELS: usize = 4;

/// `C[i][j] = Σ_c bf16(a(i, c)) · bf16(b(j, c))`, `C` row-major `(a.rows, b.rows)`, for `k`
/// contracted elements. Callers check [`available`] first.
pub fn gemm(a: Operand, b: Operand, k: usize) -> Vec<f32> {
    let (m, n) = (a.rows, b.rows);
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffers) => {
            let [a_buf, b_buf] = &mut *buffers;
            multiply(a, b, k, a_buf, b_buf, &mut c)
        }
        Err(_) => multiply(a, b, k, &mut vec![], &mut vec![], &mut c),
    });
    c
}

thread_local! {
    /// Packing buffers kept between products: a training step packs hundreds of operands of a
    /// few sizes, and fresh buffers each time made the heap grow and page-fault.
    static SCRATCH: RefCell<[Vec<u32>; 2]> = const { RefCell::new([vec![], vec![]]) };
}

fn multiply(
    a: Operand,
    b: Operand,
    k: usize,
    a_buf: &mut Vec<u32>,
    b_buf: &mut Vec<u32>,
    c: &mut [f32],
) {
    let (m, n) = (a.rows, b.rows);
    let pairs = k.div_ceil(2);
    pack_rows(a, k, m.div_ceil(MR) * MR, a_buf);
    pack_panels(b, k, b_buf);
    let (a_packed, b_packed) = (&a_buf[..], &b_buf[..]);
    let panels = n.div_ceil(NR);
    let (row_tasks, col_tasks) = (m.div_ceil(MC), panels.div_ceil(PANELS));
    let out = Shared(c.as_mut_ptr());
    (0..row_tasks * col_tasks).into_par_iter().for_each(|task| {
        let (rt, ct) = (task / col_tasks, task % col_tasks);
        let rows = rt * MC..((rt + 1) * MC).min(m);
        let cols = ct * PANELS..((ct + 1) * PANELS).min(panels);
        for p0 in (0..pairs).step_by(KC) {
            let np = KC.min(pairs - p0);
            for panel in cols.clone() {
                let b = &b_packed[(panel * pairs + p0) * NR..];
                let width = NR.min(n - panel * NR);
                for r0 in rows.clone().step_by(MR) {
                    let height = MR.min(m - r0);
                    let a = &a_packed[r0 * pairs + p0..];
                    // SAFETY: tasks cover disjoint blocks of C, so no two write one element;
                    // `available()` was checked by the caller.
                    unsafe {
                        let c = out.at(r0 * n + panel * NR);
                        avx512::tile_into(a, pairs, b, np, c, n, height, width, p0 > 0);
                    }
                }
            }
        }
    });
}

/// The output pointer, shared by tasks that write disjoint blocks of it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// # Safety
    /// `offset` is inside the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// `len` elements in `buf`, their values left as they were.
fn sized(buf: &mut Vec<u32>, len: usize) -> &mut [u32] {
    buf.truncate(len);
    buf.resize(len, 0);
    buf
}

/// `A` into `buf` as rows of bf16 pairs (`u32`, the lower half the even element), padded with
/// zero rows to `rows`.
fn pack_rows(a: Operand, k: usize, rows: usize, buf: &mut Vec<u32>) {
    let pairs = k.div_ceil(2);
    let out = sized(buf, rows * pairs);
    out[a.rows * pairs..].fill(0);
    if a.cs == 1 {
        out.par_chunks_mut(pairs)
            .take(a.rows)
            .enumerate()
            .for_each(|(r, row)| avx512::pairs_along(&a.data[r * a.rs..], k, row));
    } else if a.rs == 1 {
        // Rows lie side by side: 16 rows' pair p at a time, scattered down a column of `out`.
        out.par_chunks_mut(16 * pairs)
            .enumerate()
            .for_each(|(block, dst)| {
                let r0 = block * 16;
                let live = 16.min(a.rows.saturating_sub(r0));
                if live > 0 {
                    avx512::rows_across(&a.data[r0..], a.cs, k, live, dst);
                }
            });
    } else {
        for r in 0..a.rows {
            for p in 0..pairs {
                out[r * pairs + p] = scalar_pair(a, r, p, k);
            }
        }
    }
}

/// `B` into `buf` as panels of [`NR`] columns: panel `q` holds, for each pair `p`, the pairs
/// of its columns side by side (`buf[(q * pairs + p) * NR + j]`), padded with zero columns.
fn pack_panels(b: Operand, k: usize, buf: &mut Vec<u32>) {
    let pairs = k.div_ceil(2);
    let panels = b.rows.div_ceil(NR);
    sized(buf, panels * pairs * NR)
        .par_chunks_mut(pairs * NR)
        .enumerate()
        .for_each(|(q, panel)| {
            let j0 = q * NR;
            let live = NR.min(b.rows - j0);
            if live < NR {
                for p in 0..pairs {
                    panel[p * NR + live..(p + 1) * NR].fill(0);
                }
            }
            if b.rs == 1 {
                for half in (0..live).step_by(16) {
                    let lanes = 16.min(live - half);
                    let first = &b.data[(j0 + half)..];
                    avx512::pairs_across(first, b.cs, k, lanes, &mut panel[half..], NR);
                }
            } else if b.cs == 1 {
                let mut row = vec![0u32; pairs];
                for j in 0..live {
                    avx512::pairs_along(&b.data[(j0 + j) * b.rs..], k, &mut row);
                    for (p, v) in row.iter().enumerate() {
                        panel[p * NR + j] = *v;
                    }
                }
            } else {
                for j in 0..live {
                    for p in 0..pairs {
                        panel[p * NR + j] = scalar_pair(b, j0 + j, p, k);
                    }
                }
            }
        });
}

/// Pair `p` of row `r`, the odd element zero past `k`.
fn scalar_pair(x: Operand, r: usize, p: usize, k: usize) -> u32 {
    let at = |c: usize| {
        if c < k {
            to_bf16(x.data[r * x.rs + c * x.cs]) as u32
        } else {
            0
        }
    };
    at(2 * p) | (at(2 * p + 1) << 16)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// The `k` elements of one contiguous row as `k.div_ceil(2)` pairs in `out`.
    pub fn pairs_along(row: &[f32], k: usize, out: &mut [u32]) {
        // SAFETY: the caller checked `available()`.
        unsafe { pairs_along_avx(row, k, out) }
    }

    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn pairs_along_avx(row: &[f32], k: usize, out: &mut [u32]) {
        let (src, dst) = (row.as_ptr(), out.as_mut_ptr());
        let mut c = 0;
        while c < k {
            let n = (k - c).min(32);
            // Masked lanes are neither read nor faulted on.
            let lo = _mm512_maskz_loadu_ps(mask(n), src.wrapping_add(c));
            let hi = _mm512_maskz_loadu_ps(mask(n.saturating_sub(16)), src.wrapping_add(c + 16));
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi32(dst.add(c / 2).cast(), mask(n.div_ceil(2)), packed);
            c += 32;
        }
    }

    /// For `lanes` (≤ 16) rows that lie side by side (`first[lane + c * cs]`), pair `p` of
    /// lane `l` into `out[p * step + l]`: one vector store per pair.
    pub fn pairs_across(
        first: &[f32],
        cs: usize,
        k: usize,
        lanes: usize,
        out: &mut [u32],
        step: usize,
    ) {
        let pairs = k.div_ceil(2);
        assert!(lanes <= 16 && (pairs == 0 || out.len() >= (pairs - 1) * step + lanes));
        // SAFETY: the caller checked `available()`; the stores stay inside `out` (asserted).
        unsafe { pairs_across_avx(first, cs, k, lanes, out.as_mut_ptr(), step) }
    }

    /// The same pairs with the lanes as rows, pair `p` of lane `l` into `out[l * pairs + p]`:
    /// 16 pairs at a time through a block on the stack, then copied out a lane at a time.
    pub fn rows_across(first: &[f32], cs: usize, k: usize, lanes: usize, out: &mut [u32]) {
        let pairs = k.div_ceil(2);
        assert!(lanes <= 16 && out.len() >= lanes * pairs);
        let mut block = [[0u32; 16]; 16];
        for p0 in (0..pairs).step_by(16) {
            let np = 16.min(pairs - p0);
            let (from, k_block) = (2 * p0, (k - 2 * p0).min(32));
            // SAFETY: as in `pairs_across`; the block holds 16 pairs of 16 lanes.
            unsafe {
                pairs_across_avx(
                    &first[from * cs..],
                    cs,
                    k_block,
                    lanes,
                    block[0].as_mut_ptr(),
                    16,
                )
            };
            for (lane, row) in out.chunks_exact_mut(pairs).take(lanes).enumerate() {
                for (dst, pair) in row[p0..p0 + np].iter_mut().zip(&block) {
                    *dst = pair[lane];
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16,avx512bw")]
    unsafe fn pairs_across_avx(
        first: &[f32],
        cs: usize,
        k: usize,
        lanes: usize,
        out: *mut u32,
        step: usize,
    ) {
        let m = mask(lanes);
        let load = |c: usize| _mm512_maskz_loadu_ps(m, first.as_ptr().wrapping_add(c * cs));
        let widen = |x: __m512| {
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(x));
            _mm512_cvtepu16_epi32(h)
        };
        for p in 0..k.div_ceil(2) {
            let even = load(2 * p);
            let odd = if 2 * p + 1 < k {
                load(2 * p + 1)
            } else {
                _mm512_setzero_ps()
            };
            let v = _mm512_or_si512(widen(even), _mm512_slli_epi32(widen(odd), 16));
            _mm512_mask_storeu_epi32(out.add(p * step).cast(), m, v);
        }
    }

    /// One tile of `C` (`height` ≤ [`MR`] rows, `width` ≤ [`NR`] columns, row stride `ldc`)
    /// plus, over `np` pairs, the rows of `a` (row stride `lda`, [`MR`] rows readable) times the
    /// panel block `b`; `add` keeps what `C` holds, else it is overwritten.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile_into(
        a: &[u32],
        lda: usize,
        b: &[u32],
        np: usize,
        c: *mut f32,
        ldc: usize,
        height: usize,
        width: usize,
        add: bool,
    ) {
        if height == MR && width == NR {
            return tile(a.as_ptr(), lda, b.as_ptr(), np, c, ldc, add);
        }
        let mut t = [0f32; MR * NR];
        if add {
            for r in 0..height {
                std::ptr::copy_nonoverlapping(c.add(r * ldc), t.as_mut_ptr().add(r * NR), width);
            }
        }
        tile(a.as_ptr(), lda, b.as_ptr(), np, t.as_mut_ptr(), NR, add);
        for r in 0..height {
            std::ptr::copy_nonoverlapping(t.as_ptr().add(r * NR), c.add(r * ldc), width);
        }
    }

    /// The micro-kernel: [`MR`] × [`NR`] sums in 24 registers; per pair, two panel loads and
    /// one broadcast per row feed 24 `vdpbf16ps`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile(
        a: *const u32,
        lda: usize,
        b: *const u32,
        np: usize,
        c: *mut f32,
        ldc: usize,
        add: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        if add {
            for (r, row) in acc.iter_mut().enumerate() {
                row[0] = _mm512_loadu_ps(c.add(r * ldc));
                row[1] = _mm512_loadu_ps(c.add(r * ldc + 16));
            }
        }
        for p in 0..np {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
            for (r, row) in acc.iter_mut().enumerate() {
                let x: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], x, b0);
                row[1] = _mm512_dpbf16_ps(row[1], x, b1);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc), row[0]);
            _mm512_storeu_ps(c.add(r * ldc + 16), row[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    //! Never called: [`super::available`] is false off x86-64.
    pub fn pairs_along(_: &[f32], _: usize, _: &mut [u32]) {
        unreachable!()
    }
    pub fn pairs_across(_: &[f32], _: usize, _: usize, _: usize, _: impl FnMut(usize, usize, u32)) {
        unreachable!()
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile_into(
        _: &[u32],
        _: usize,
        _: &[u32],
        _: usize,
        _: *mut f32,
        _: usize,
        _: usize,
        _: usize,
        _: bool,
    ) {
        unreachable!()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) with some spread of magnitudes.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let h =
                    (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(0x9e3779b97f4a7c15)) % 10007;
                (h as f32 / 5003.5 - 1.0) * if i % 7 == 0 { 37.0 } else { 1.0 }
            })
            .collect()
    }

    #[test]
    fn rounds_to_nearest_even_like_the_hardware() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(
            to_bf16(f32::from_bits(0x3f80_8000)),
            0x3f80,
            "tie to even, down"
        );
        assert_eq!(
            to_bf16(f32::from_bits(0x3f81_8000)),
            0x3f82,
            "tie to even, up"
        );
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(to_bf16(1e-40), 0x0000, "subnormals flush to zero");
        assert_eq!(to_bf16(-1e-40), 0x8000, "keeping their sign");
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(to_bf16(f32::MAX), 0x7f80, "rounds up to infinity");
        assert!(f32::from_bits((to_bf16(f32::NAN) as u32) << 16).is_nan());
        if !available() {
            eprintln!("no AVX512-BF16 here: the hardware comparison is skipped");
            return;
        }
        // Every exponent, both signs, mantissas on and around ties, and NaNs with low payloads
        // that truncation alone would turn into infinity.
        let mut bits: Vec<u32> = (0..20_000u32)
            .map(|i| i.wrapping_mul(0x9e37_79b9))
            .collect();
        bits.extend([
            0x7f80_0001,
            0xff80_0001,
            0x0000_0001,
            0x8000_0001,
            0x3f80_8000,
            0x3f81_8000,
        ]);
        let row: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
        let mut hardware = vec![0u32; row.len().div_ceil(2)];
        avx512::pairs_along(&row, row.len(), &mut hardware);
        for (i, x) in row.iter().enumerate() {
            let hw = (hardware[i / 2] >> (16 * (i % 2))) as u16;
            if x.is_nan() {
                assert!(
                    f32::from_bits((hw as u32) << 16).is_nan(),
                    "{:#x}",
                    x.to_bits()
                );
            } else {
                assert_eq!(to_bf16(*x), hw, "{:#x}", x.to_bits());
            }
        }
    }

    /// `gemm` against sums in f64 of the rounded operands, for `A` `(m, k)` and `B` `(n, k)`
    /// stored as given (`ta`/`tb`: transposed, `(k, m)`/`(k, n)`; `gap`: every other column).
    fn check(m: usize, n: usize, k: usize, ta: bool, tb: bool, gap: bool) {
        let stride = if gap { 2 } else { 1 };
        let layout = |rows: usize, transposed: bool| {
            if transposed {
                (rows, stride, rows * stride)
            } else {
                (rows, k * stride, stride)
            }
        };
        let (a_data, b_data) = (values(m * k * stride, 1), values(n * k * stride, 2));
        let ((rows, rs, cs), (n_rows, n_rs, n_cs)) = (layout(m, ta), layout(n, tb));
        let a = Operand {
            data: &a_data,
            rows,
            rs,
            cs,
        };
        let b = Operand {
            data: &b_data,
            rows: n_rows,
            rs: n_rs,
            cs: n_cs,
        };
        let got = gemm(a, b, k);
        for i in 0..m {
            for j in 0..n {
                let (mut want, mut scale) = (0f64, 0f64);
                for c in 0..k {
                    let p = round(a.data[i * a.rs + c * a.cs]) as f64
                        * round(b.data[j * b.rs + c * b.cs]) as f64;
                    want += p;
                    scale += p.abs();
                }
                let err = (got[i * n + j] as f64 - want).abs();
                assert!(
                    err <= 1e-6 * scale.max(1e-30) * (k as f64).sqrt().max(1.0),
                    "m {m} n {n} k {k} ta {ta} tb {tb} gap {gap} at ({i}, {j}): {} vs {want}",
                    got[i * n + j]
                );
            }
        }
    }

    #[test]
    fn matches_f64_sums_of_rounded_operands_over_ragged_shapes_and_layouts() {
        if !available() {
            eprintln!("no AVX512-BF16 here: the kernel is not used");
            return;
        }
        // Edges of the micro-tile (12 × 32), of a task (192 rows, 4 panels), of a block of the
        // contracted dimension (128 pairs), and odd k.
        let shapes = [
            (1, 1, 1),
            (12, 32, 2),
            (13, 33, 3),
            (11, 31, 257),
            (193, 129, 9),
            (40, 70, 513),
            (5, 200, 64),
        ];
        for &(m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                check(m, n, k, ta, tb, false);
            }
            check(m, n, k, false, false, true);
            check(m, n, k, true, true, true);
        }
    }

    #[test]
    fn reuses_scratch_without_stale_values() {
        if !available() {
            return;
        }
        // A large product leaves non-zero packing buffers behind; a smaller one with padding
        // must not read them.
        check(100, 100, 301, false, false, false);
        check(7, 5, 3, false, true, false);
        check(100, 100, 301, true, false, false);
        check(3, 45, 1, true, true, false);
    }

    #[test]
    fn empty_products_are_empty_or_zero() {
        let none: Vec<f32> = vec![];
        let a = Operand {
            data: &none,
            rows: 0,
            rs: 4,
            cs: 1,
        };
        let b_data = vec![1f32; 12];
        let b = Operand {
            data: &b_data,
            rows: 3,
            rs: 4,
            cs: 1,
        };
        assert!(gemm(a, b, 4).is_empty());
        let a_data = vec![1f32; 2];
        let a = Operand {
            data: &a_data,
            rows: 2,
            rs: 0,
            cs: 1,
        };
        assert_eq!(gemm(a, b, 0), vec![0f32; 6], "k = 0 sums nothing");
    }
}

use super::fusable;
use super::rope::{rotate_back, Rope};
use super::softmax::{masked_softmax, masked_softmax_grad};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// The head layout of one attention layer: `heads` query heads sharing `kv_heads` key/value
/// heads (grouped-query attention), each `head_dim` wide.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Causal self-attention `softmax(q kᵀ / √d + bias) v` over projections `q` `(B, T, H·D)`, `k`
/// and `v` `(B, T, KV·D)`, with RoPE (`cos`, `sin` as [`Rope::cos_sin`] gives them) on queries
/// and keys. Returns `(B, T, H·D)`.
///
/// On CPU in f32/f64 this is one op in the autograd graph that keeps only its three inputs: its
/// backward recomputes the rotation and the probabilities. Composed, candle keeps every op's
/// inputs until the backward pass, so the rotated queries and keys, the scores and the
/// probabilities `(B, H, T, T)` and the heads' output before its transpose stay too (~24 MB a
/// layer on SmolLM2 at 4 x 256 tokens). Other devices and dtypes, and decoding with a KV cache,
/// use the composed ops ([`rotate`], then [`attend`]).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    bias: &Tensor,
    heads: Heads,
) -> Result<Tensor> {
    let (b, t, _) = q.dims3()?;
    let fused = fusable(q)
        && heads.head_dim.is_multiple_of(2)
        && cos.dims() == [b, 1, t, heads.head_dim]
        && [k.dtype(), v.dtype(), cos.dtype(), sin.dtype()] == [q.dtype(); 4];
    if !fused {
        let (q, k, v) = rotate(q, k, v, (cos, sin), heads)?;
        return attend(&q, &k, &v, bias, heads);
    }
    let (q0, k0, v0) = rotate(&q.detach(), &k.detach(), &v.detach(), (cos, sin), heads)?;
    let out = attend(&q0, &k0, &v0, bias, heads)?;
    if ![q, k, v].iter().any(|x| x.track_op()) {
        return Ok(out);
    }
    let op = Attention {
        out: Mutex::new(Some(out)),
        cos: cos.clone(),
        sin: sin.clone(),
        bias: bias.clone(),
        heads,
    };
    q.apply_op3(k, v, op)
}

/// Queries, keys and values as heads `(B, H, T, D)` and `(B, KV, T, D)`, queries and keys rotated.
pub fn rotate(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    h: Heads,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, t, _) = q.dims3()?;
    let split = |y: &Tensor, n: usize| y.reshape((b, t, n, h.head_dim))?.transpose(1, 2);
    Ok((
        Rope::apply(&split(q, h.heads)?, cos, sin)?,
        Rope::apply(&split(k, h.kv_heads)?, cos, sin)?,
        split(v, h.kv_heads)?,
    ))
}

/// Attention of rotated heads `q` `(B, H, Tq, D)` over keys and values `(B, KV, Tk, D)` (a KV
/// cache's included), as `(B, Tq, H·D)`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, h: Heads) -> Result<Tensor> {
    let (b, _, t, d) = q.dims4()?;
    grouped(&probabilities(q, k, bias, h)?, h)?
        .matmul(&v.contiguous()?)?
        .reshape((b, h.heads, t, d))?
        .transpose(1, 2)?
        .reshape((b, t, h.heads * d))
}

/// `softmax(q kᵀ / √d + bias)` of rotated heads, `(B, H, Tq, Tk)`.
fn probabilities(q: &Tensor, k: &Tensor, bias: &Tensor, h: Heads) -> Result<Tensor> {
    let (b, _, t, _) = q.dims4()?;
    let dtype = q.dtype();
    let scores =
        grouped(q, h)?
            .matmul(&k.contiguous()?.t()?)?
            .reshape((b, h.heads, t, k.dim(2)?))?;
    let wide = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    masked_softmax(&scores.to_dtype(wide)?, bias, scale(h))?.to_dtype(dtype)
}

/// `(B, H, T, X)` as `(B, KV, rep·T, X)`: grouped-query attention without copying keys and values
/// once per query head, as the `rep` query heads that share a key/value head are rows of one
/// matrix against it.
fn grouped(y: &Tensor, h: Heads) -> Result<Tensor> {
    let (b, _, t, x) = y.dims4()?;
    y.contiguous()?
        .reshape((b, h.kv_heads, h.heads / h.kv_heads * t, x))
}

fn scale(h: Heads) -> f64 {
    1.0 / (h.head_dim as f64).sqrt()
}

/// The graph node of a fused attention: its output is computed before the node exists (by tensor
/// ops on detached inputs, so every intermediate is freed at once) and handed over once. The
/// backward pass recomputes the rotated heads and the probabilities from the inputs, one more
/// `q kᵀ` product a layer, rather than keep `(B, H, T, T)` numbers a layer until then (transformers'
/// eager attention keeps them).
struct Attention {
    out: Mutex<Option<Tensor>>,
    cos: Tensor,
    sin: Tensor,
    bias: Tensor,
    heads: Heads,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let taken = self.out.lock().map(|mut o| o.take());
        let Ok(Some(out)) = taken else {
            candle_core::bail!("attention: the fused op's output was already taken");
        };
        let flat = out.flatten_all()?;
        let storage = match out.dtype() {
            DType::F32 => CpuStorage::F32(flat.to_vec1()?),
            DType::F64 => CpuStorage::F64(flat.to_vec1()?),
            dt => candle_core::bail!("attention: the fused op takes f32 and f64, not {dt:?}"),
        };
        Ok((storage, out.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = self.heads;
        let (b, t, _) = q.dims3()?;
        let (kv, d) = (h.kv_heads, h.head_dim);
        // Detached, so that nothing computed here joins (and is kept by) the graph.
        let rope = (&self.cos, &self.sin);
        let (q, k, v) = rotate(&q.detach(), &k.detach(), &v.detach(), rope, h)?;
        let probs = probabilities(&q, &k, &self.bias, h)?;
        let heads_first = grad.detach().reshape((b, t, h.heads, d))?.transpose(1, 2)?;
        let g = grouped(&heads_first, h)?;
        let p = grouped(&probs, h)?;
        let dv = p.t()?.matmul(&g)?;
        let dp = g.matmul(&v.contiguous()?.t()?)?.reshape(probs.shape())?;
        let ds = grouped(&masked_softmax_grad(&probs, &dp, scale(h))?, h)?;
        let dq = ds.matmul(&k.contiguous()?)?.reshape((b, h.heads, t, d))?;
        let dk = ds.t()?.matmul(&grouped(&q, h)?)?;
        let back = |dy: &Tensor, n: usize| {
            rotate_back(&dy.contiguous()?, &self.cos, &self.sin)?
                .transpose(1, 2)?
                .reshape((b, t, n * d))
        };
        let dv = dv.transpose(1, 2)?.reshape((b, t, kv * d))?;
        Ok((Some(back(&dq, h.heads)?), Some(back(&dk, kv)?), Some(dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::{assert_matches_finite_differences, max_diff};
    use super::super::mask::attention_bias;
    use super::*;
    use candle_core::{Device, Var};

    const HEADS: Heads = Heads {
        heads: 4,
        kv_heads: 2,
        head_dim: 6,
    };

    /// Projections of two rows of 5 tokens, the second left-padded by two when `padded`, and
    /// their RoPE and mask.
    fn inputs(dtype: DType, padded: bool) -> ([Var; 3], (Tensor, Tensor), Tensor) {
        let dev = Device::Cpu;
        let proj = |n: usize| {
            let x = Tensor::randn(0f64, 1.0, (2, 5, n * HEADS.head_dim), &dev).unwrap();
            Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap()
        };
        let rope = Rope::new(HEADS.head_dim, 10_000.0, None, &dev).unwrap();
        let positions = Tensor::new(&[[0u32, 1, 2, 3, 4], [0, 0, 0, 1, 2]], &dev).unwrap();
        let valid = vec![vec![true; 5], vec![!padded, !padded, true, true, true]];
        let bias = attention_bias(&valid, 0, 5, None, &dev).unwrap();
        (
            [
                proj(HEADS.heads),
                proj(HEADS.kv_heads),
                proj(HEADS.kv_heads),
            ],
            rope.cos_sin(&positions, dtype).unwrap(),
            bias,
        )
    }

    fn composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        rope: (&Tensor, &Tensor),
        bias: &Tensor,
    ) -> Tensor {
        let (q, k, v) = rotate(q, k, v, rope, HEADS).unwrap();
        attend(&q, &k, &v, bias, HEADS).unwrap()
    }

    #[test]
    fn forward_and_backward_match_the_composed_ops() {
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let ([q, k, v], (cos, sin), bias) = inputs(dtype, true);
            let r = Tensor::randn(
                0f64,
                1.0,
                (2, 5, HEADS.heads * HEADS.head_dim),
                &Device::Cpu,
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
            let want = composed(&q, &k, &v, (&cos, &sin), &bias);
            let got = attention(&q, &k, &v, (&cos, &sin), &bias, HEADS).unwrap();
            assert!(max_diff(&want, &got) <= tol, "{dtype:?} forward");
            let grads = |y: Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let (gw, gg) = (grads(want), grads(got));
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (w, g) = (gw.get(x).unwrap(), gg.get(x).unwrap());
                assert!(max_diff(w, g) <= tol, "{dtype:?} d{name}");
                assert!(max_diff(g, &g.zeros_like().unwrap()) > 0.1, "d{name} is ~0");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // No padding: a padded query row sees only -1e9 biases, whose f64 rounding (~1e-7)
        // swamps a finite difference.
        let ([q, k, v], (cos, sin), bias) = inputs(DType::F64, false);
        let r = Tensor::randn(
            0f64,
            1.0,
            (2, 5, HEADS.heads * HEADS.head_dim),
            &Device::Cpu,
        )
        .unwrap();
        let run = |q: &Tensor, k: &Tensor, v: &Tensor| {
            (attention(q, k, v, (&cos, &sin), &bias, HEADS).unwrap() * &r).unwrap()
        };
        assert_matches_finite_differences(&q, |x| run(x, &k, &v));
        assert_matches_finite_differences(&k, |x| run(&q, x, &v));
        assert_matches_finite_differences(&v, |x| run(&q, &k, x));
    }
}

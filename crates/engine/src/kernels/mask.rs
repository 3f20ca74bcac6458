use candle_core::{DType, Device, Result, Tensor};

/// The additive bias for a masked attention score. Large but finite: with left padding a fully
/// masked row must give a uniform softmax, not the NaN that `-inf` gives.
pub const MASKED: f32 = -1e9;

/// Additive attention bias `(B, 1, Tq, Tk)` in f32 (scores are added to it in f32).
///
/// `key_valid[b][j]` says whether key `j` of row `b` is a real token (not padding); query `i`
/// sits at key index `query_offset + i` (non-zero when a KV cache holds earlier keys). A query
/// sees the valid keys at or before it, and within `window` of it when one is given.
pub fn attention_bias(
    key_valid: &[Vec<bool>],
    query_offset: usize,
    tq: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let b = key_valid.len();
    let tk = key_valid.first().map_or(0, Vec::len);
    let mut bias = vec![MASKED; b * tq * tk];
    for (row, valid) in key_valid.iter().enumerate() {
        if valid.len() != tk {
            candle_core::bail!(
                "attention mask row {row} has {} keys, row 0 has {tk}",
                valid.len()
            );
        }
        for i in 0..tq {
            let q = query_offset + i;
            let first = window.map_or(0, |w| (q + 1).saturating_sub(w));
            let out = &mut bias[(row * tq + i) * tk..(row * tq + i + 1) * tk];
            for j in first..=q.min(tk.saturating_sub(1)) {
                if valid[j] {
                    out[j] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(bias, (b, 1, tq, tk), device)?.to_dtype(DType::F32)
}

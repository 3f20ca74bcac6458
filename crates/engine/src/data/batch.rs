use crate::model::decoder::DecoderInput;
use anyhow::Result;
use candle_core::{Device, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Pads after each sequence (training and scoring).
    Right,
    /// Pads before each sequence, so every row ends at the same column (generation).
    Left,
}

/// Pads token sequences into one decoder input. Each row's real tokens get positions 0, 1, ...
/// wherever they sit, and padding is masked out, so a row's numbers do not depend on padding.
pub fn collate(
    seqs: &[&[u32]],
    pad_id: u32,
    side: Padding,
    device: &Device,
) -> Result<DecoderInput> {
    let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * width);
    let mut positions = Vec::with_capacity(seqs.len() * width);
    let mut key_valid = Vec::with_capacity(seqs.len());
    for s in seqs {
        let pad = width - s.len();
        let (before, after) = match side {
            Padding::Right => (0, pad),
            Padding::Left => (pad, 0),
        };
        ids.extend(
            std::iter::repeat_n(pad_id, before)
                .chain(s.iter().copied())
                .chain(std::iter::repeat_n(pad_id, after)),
        );
        positions.extend(
            std::iter::repeat_n(0u32, before)
                .chain(0..s.len() as u32)
                .chain(std::iter::repeat_n(0, after)),
        );
        key_valid.push(
            (0..width)
                .map(|j| j >= before && j < before + s.len())
                .collect(),
        );
    }
    let shape = (seqs.len(), width);
    Ok(DecoderInput {
        ids: Tensor::from_vec(ids, shape, device)?,
        positions: Tensor::from_vec(positions, shape, device)?,
        key_valid,
    })
}

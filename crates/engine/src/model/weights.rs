//! safetensors files read with errors that name the file and the tensor, and weights checked
//! before a model is built from them: floating point, and every value finite.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// The tensors of a safetensors file and its metadata.
pub fn read(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        let why = diagnose(&bytes).unwrap_or_else(|| e.to_string());
        anyhow::anyhow!("{} is not a valid safetensors file: {why}", path.display())
    })?;
    let metadata = header.1.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok((tensors, metadata))
}

fn dtype_bits(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" => 64,
        _ => return None,
    })
}

/// Which tensor of a header disagrees with its byte range, for a message better than the
/// library's "invalid shape, data type, or offset for tensor".
fn diagnose(bytes: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info.get("dtype")?.as_str()?;
        let Some(bits) = dtype_bits(dtype) else {
            return Some(format!("tensor `{name}` has unknown dtype {dtype:?}"));
        };
        let integers = |key: &str| -> Option<Vec<u64>> {
            info.get(key)?
                .as_array()?
                .iter()
                .map(Value::as_u64)
                .collect()
        };
        let (shape, offsets) = (integers("shape")?, integers("data_offsets")?);
        let [start, end] = offsets[..] else {
            return Some(format!(
                "tensor `{name}`: `data_offsets` must hold two numbers"
            ));
        };
        let need = shape
            .iter()
            .try_fold(bits as u64, |a, &d| a.checked_mul(d))
            .map(|b| b / 8);
        if end < start || need != Some(end - start) {
            return Some(format!(
                "tensor `{name}`: shape {shape:?} of {dtype} needs {} bytes, but its data_offsets \
                 [{start}, {end}] span {}",
                need.map_or("too many".to_string(), |b| b.to_string()),
                end as i128 - start as i128
            ));
        }
    }
    None
}

/// Tensor `name` of a file read by [`read`], checked to have shape `dims`.
pub fn state_tensor(
    tensors: &HashMap<String, Tensor>,
    name: &str,
    dims: &[usize],
    path: &Path,
) -> Result<Tensor> {
    let t = tensors
        .get(name)
        .with_context(|| format!("{}: tensor `{name}` is missing", path.display()))?;
    if t.dims() != dims {
        bail!(
            "{}: tensor `{name}` has shape {:?}, expected {dims:?}",
            path.display(),
            t.dims()
        );
    }
    Ok(t.clone())
}

/// Refuses a weight that is not floating point, or holds NaN or infinity, naming it.
pub fn check(name: &str, t: &Tensor, source: &str) -> Result<()> {
    if !t.dtype().is_float() {
        bail!(
            "tensor `{name}` in {source} is {:?}, not floating point: these are not model weights",
            t.dtype()
        );
    }
    // x * 0 is 0 for every finite x, NaN for NaN and infinity: one pass, no copy to the host.
    let probe = (t.to_dtype(DType::F32)? * 0.0)?
        .sum_all()?
        .to_scalar::<f32>()?;
    if !probe.is_finite() {
        bail!("tensor `{name}` in {source} holds NaN or infinite values");
    }
    Ok(())
}

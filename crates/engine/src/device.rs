use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            Device::new_cuda(0).context("cannot open CUDA device 0 (built with --features cuda?)")
        }
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => {
                Device::new_cuda(i).with_context(|| format!("cannot open CUDA device {i}"))
            }
            _ => bail!("unknown device {spec:?}: use cpu, cuda or cuda:N"),
        },
    }
}

/// `f32`, `f64`, `bf16` or `f16`.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    Ok(match spec {
        "f32" => DType::F32,
        "f64" => DType::F64,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => bail!("unknown dtype {spec:?}: use f32, f64, bf16 or f16"),
    })
}

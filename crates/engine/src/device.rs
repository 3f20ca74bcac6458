use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device};

/// `cpu`, `cuda` or `cuda:N`. A CUDA device on a build without the feature, or one that does not
/// open, is a one-line error saying which.
pub fn parse_device(spec: &str) -> Result<Device> {
    let gpu = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => bail!("unknown device {spec:?}: use cpu, cuda or cuda:N"),
        },
    };
    if !cfg!(feature = "cuda") {
        bail!("--device {spec}: this metaapo was built without CUDA (build it with tools/cuda-build.sh)");
    }
    Device::new_cuda(gpu).map_err(|e| {
        let why = e.to_string();
        let why = why.lines().next().unwrap_or_default();
        anyhow!("--device {spec}: no usable CUDA GPU {gpu} on this machine ({why})")
    })
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

/// The dtypes each device runs end to end. f16 is left out everywhere: training in it needs loss
/// scaling, which the trainer does not do; bf16 has f32's range and does not.
pub fn check_dtype(device: &Device, dtype: DType) -> Result<()> {
    let ok = matches!(dtype, DType::F32 | DType::BF16) || (dtype == DType::F64 && device.is_cpu());
    if !ok {
        bail!(
            "dtype {} is not supported on {}: use f32 or bf16{}",
            dtype.as_str(),
            device_name(device),
            if device.is_cpu() { " (or f64)" } else { "" }
        );
    }
    Ok(())
}

pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

//! LoRA (Hu et al., 2021) as PEFT does it: a projection `W` becomes `W + (alpha/r)·B·A`, with `A`
//! `(r, in)` drawn like PyTorch's `kaiming_uniform_(a=√5)` (U(±1/√in)) and `B` `(out, r)` zero,
//! so training starts from the base model exactly. Only `A` and `B` train; the base weights are
//! frozen and shared, so the DPO reference (the base with the adapter off) costs no second copy.
//!
//! Adapters are saved and read as a PEFT adapter directory (`adapter_config.json`,
//! `adapter_model.safetensors` with keys `base_model.model.<module>.lora_{A,B}.weight`), which
//! `peft.PeftModel.from_pretrained` loads onto the same base model.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// The projections of a Llama-family layer an adapter can attach to.
pub const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// PEFT's `LoraConfig` defaults, so a script that names nothing gets what `peft` users get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Dropout on the adapter's input in training forwards (a trainable model scored without a
    /// KV cache); never in generation.
    pub dropout: f64,
    /// Projection names (`q_proj`, ...), or `["all-linear"]` for all seven.
    pub targets: Vec<String>,
    /// Seeds `A`'s initialisation and the dropout masks.
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 8.0,
            dropout: 0.0,
            // PEFT's default for Llama-family models.
            targets: vec!["q_proj".into(), "v_proj".into()],
            seed: 0,
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("lora: rank must be at least 1");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            bail!("lora: alpha must be a positive number (got {})", self.alpha);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("lora: dropout must be in [0, 1) (got {})", self.dropout);
        }
        if self.targets.is_empty() {
            bail!(
                "lora: targets is empty: name projections ({}) or \"all-linear\"",
                MODULES.join(", ")
            );
        }
        for t in &self.targets {
            if t != "all-linear" && !MODULES.contains(&t.as_str()) {
                bail!(
                    "lora: unknown target {t:?}: use {} or \"all-linear\"",
                    MODULES.join(", ")
                );
            }
        }
        Ok(())
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether the projection `module` (a full name such as `model.layers.3.self_attn.q_proj`)
    /// gets an adapter.
    pub fn targets(&self, module: &str) -> bool {
        let last = module.rsplit('.').next().unwrap_or(module);
        MODULES.contains(&last) && self.targets.iter().any(|t| t == "all-linear" || t == last)
    }
}

/// One projection's adapter.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// `(r, in)`
    pub a: Tensor,
    /// `(out, r)`
    pub b: Tensor,
    pub scale: f64,
    pub dropout: Option<Dropout>,
}

/// Seeded inverted dropout whose masks are drawn on the host, so runs repeat under a seed.
#[derive(Debug, Clone)]
pub struct Dropout {
    pub p: f64,
    rng: Arc<Mutex<ChaCha8Rng>>,
}

impl Dropout {
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let n = x.elem_count();
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().expect("dropout rng");
            (0..n)
                .map(|_| {
                    if rng.random::<f64>() < self.p {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

impl Adapter {
    /// `scale · B·A·x` for `x` `(N, in)`; `train` applies the dropout.
    pub fn delta(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let x = match (&self.dropout, train) {
            (Some(d), true) => d.apply(x)?,
            _ => x.clone(),
        };
        // Scaled at rank r, not at the projection's width: one fewer full-size tensor kept for
        // the backward pass.
        (x.matmul(&self.a.t()?)? * self.scale)?.matmul(&self.b.t()?)
    }

    /// `scale · B·A`, the adapter folded into its projection's weight.
    pub fn merged_delta(&self) -> candle_core::Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}

/// Fresh adapters for every targeted projection of `shapes` (HF weight names and shapes):
/// `A` U(±1/√in) from `cfg.seed`, `B` zero. Keys are module names.
pub fn init(
    cfg: &LoraConfig,
    shapes: &[(String, Vec<usize>)],
    device: &Device,
    dtype: DType,
) -> Result<Vec<(String, Tensor, Tensor)>> {
    cfg.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut out = vec![];
    for (name, shape) in shapes {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        if !module.starts_with("model.layers.") || !cfg.targets(module) || shape.len() != 2 {
            continue;
        }
        let (rows, cols) = (shape[0], shape[1]);
        let bound = 1.0 / (cols as f64).sqrt();
        let a: Vec<f32> = (0..cfg.rank * cols)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::from_vec(a, (cfg.rank, cols), device)?.to_dtype(dtype)?;
        let b = Tensor::zeros((rows, cfg.rank), dtype, device)?;
        out.push((module.to_string(), a, b));
    }
    if out.is_empty() {
        bail!("lora: no projection matches targets {:?}", cfg.targets);
    }
    Ok(out)
}

/// The shared dropout of a model's adapters, if any.
pub fn dropout(cfg: &LoraConfig) -> Option<Dropout> {
    (cfg.dropout > 0.0).then(|| Dropout {
        p: cfg.dropout,
        rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed))),
    })
}

/// Whether `dir` holds a PEFT adapter.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (which exists).
/// `adapters` are `(module, A, B)`; `base` names the base model for `peft`.
pub fn write_into(
    dir: &Path,
    cfg: &LoraConfig,
    adapters: &[(String, Tensor, Tensor)],
    base: &str,
) -> Result<()> {
    let targets: Vec<&str> = MODULES
        .iter()
        .copied()
        .filter(|m| cfg.targets.iter().any(|t| t == "all-linear" || t == m))
        .collect();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "init_lora_weights": true,
        "inference_mode": true,
    });
    std::fs::write(
        dir.join(CONFIG_FILE),
        serde_json::to_string_pretty(&config)?,
    )?;
    crate::atomic::fault_point(CONFIG_FILE);
    let mut tensors = vec![];
    for (module, a, b) in adapters {
        tensors.push((format!("{PREFIX}{module}.lora_A.weight"), a.clone()));
        tensors.push((format!("{PREFIX}{module}.lora_B.weight"), b.clone()));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &dir.join(WEIGHTS_FILE),
    )
    .with_context(|| format!("cannot write {}", dir.join(WEIGHTS_FILE).display()))?;
    crate::atomic::fault_point(WEIGHTS_FILE);
    Ok(())
}

/// Reads a PEFT LoRA adapter: its config and `(module, A, B)` per adapted projection. PEFT
/// options this implementation does not follow are refused by name, not ignored.
pub fn read(dir: &Path, device: &Device) -> Result<(LoraConfig, Vec<(String, Tensor, Tensor)>)> {
    let path = dir.join(CONFIG_FILE);
    let raw: Value = crate::textfile::read_json(&path)?;
    let field = |k: &str| raw.get(k).filter(|v| !v.is_null());
    if let Some(t) = field("peft_type").and_then(Value::as_str) {
        if t != "LORA" {
            bail!(
                "{}: field `peft_type` is {t:?}; only LORA adapters are supported",
                path.display()
            );
        }
    }
    for (key, default) in [
        ("use_dora", json!(false)),
        ("use_rslora", json!(false)),
        ("use_qalora", json!(false)),
        ("lora_bias", json!(false)),
        ("fan_in_fan_out", json!(false)),
        ("bias", json!("none")),
    ] {
        if let Some(v) = field(key) {
            if *v != default {
                bail!(
                    "{}: field `{key}` is {v}; only {default} is supported",
                    path.display()
                );
            }
        }
    }
    for key in [
        "modules_to_save",
        "layers_to_transform",
        "layer_replication",
        "rank_pattern",
        "alpha_pattern",
        "trainable_token_indices",
        "target_parameters",
    ] {
        let set = field(key).is_some_and(|v| {
            !(v.as_array().is_some_and(Vec::is_empty)
                || v.as_object().is_some_and(|o| o.is_empty()))
        });
        if set {
            bail!(
                "{}: field `{key}` is set; this adapter format is not supported",
                path.display()
            );
        }
    }
    let num = |k: &str| -> Result<f64> {
        field(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("{}: field `{k}` is missing or not a number", path.display()))
    };
    let targets = match field("target_modules") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .with_context(|| {
                format!("{}: field `target_modules` must list names", path.display())
            })?,
        _ => bail!("{}: field `target_modules` is missing", path.display()),
    };
    let rank = num("r")?;
    if rank < 1.0 || rank.fract() != 0.0 {
        bail!(
            "{}: field `r` must be a positive integer (got {rank})",
            path.display()
        );
    }
    let cfg = LoraConfig {
        rank: rank as usize,
        alpha: num("lora_alpha")?,
        dropout: field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
        targets,
        seed: 0,
    };
    cfg.validate()
        .with_context(|| format!("in {}", path.display()))?;
    let weights = dir.join(WEIGHTS_FILE);
    let (tensors, _) = super::weights::read(&weights, device)?;
    let mut modules: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_A.weight"))
        .map(|k| k.strip_prefix(PREFIX).unwrap_or(k).to_string())
        .collect();
    modules.sort();
    if modules.is_empty() {
        bail!("{}: no `*.lora_A.weight` tensors", weights.display());
    }
    let mut out = vec![];
    for module in modules {
        let get = |which: &str| -> Result<Tensor> {
            let key = format!("{PREFIX}{module}.lora_{which}.weight");
            let t = tensors
                .get(&key)
                .or_else(|| tensors.get(&format!("{module}.lora_{which}.weight")))
                .with_context(|| format!("{}: tensor `{key}` is missing", weights.display()))?;
            Ok(t.to_dtype(DType::F32)?)
        };
        let (a, b) = (get("A")?, get("B")?);
        let (ra, rb) = (a.dims2()?.0, b.dims2()?.1);
        if ra != cfg.rank || rb != cfg.rank {
            bail!(
                "{}: `{module}` has rank {ra} (A) and {rb} (B), but `r` is {}",
                weights.display(),
                cfg.rank
            );
        }
        out.push((module, a, b));
    }
    Ok((cfg, out))
}

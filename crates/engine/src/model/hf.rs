//! HF model directories: `config.json`, `tokenizer.json`, and `model.safetensors` or a sharded
//! `model.safetensors.index.json`. Saved models use HF tensor names and load in transformers.

use super::config::ModelConfig;
use super::tokenizer::TextTokenizer;
use super::CausalLm;
use crate::atomic;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

pub const WEIGHTS: &str = "model.safetensors";
pub const INDEX: &str = "model.safetensors.index.json";

/// Loads `config.json` and the weights of a HF directory (tokenizer files are optional here:
/// tiny test models have none).
pub fn load(
    dir: &Path,
    device: &Device,
    dtype: DType,
    trainable: bool,
) -> Result<(CausalLm, Option<TextTokenizer>)> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let (tensors, source) = read_weights(dir, device)?;
    let model = CausalLm::from_tensors(config, tensors, &source, dtype, trainable)?;
    let tokenizer = if dir.join("tokenizer.json").exists() {
        Some(TextTokenizer::from_hf_dir(dir, &model.config)?)
    } else {
        None
    };
    Ok((model, tokenizer))
}

fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    Ok(super::weights::read(path, device)?.0)
}

pub fn read_weights(dir: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, String)> {
    let single = dir.join(WEIGHTS);
    if single.exists() {
        return Ok((
            read_safetensors(&single, device)?,
            single.display().to_string(),
        ));
    }
    let index_path = dir.join(INDEX);
    if !index_path.exists() {
        bail!("{} has neither {WEIGHTS} nor {INDEX}", dir.display());
    }
    let index: Value = crate::textfile::read_json(&index_path)?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .with_context(|| {
            format!(
                "{}: missing object field `weight_map`",
                index_path.display()
            )
        })?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().with_context(|| {
            format!(
                "{}: `weight_map.{name}` must be a file name",
                index_path.display()
            )
        })?;
        files.insert(file.to_string());
    }
    let mut tensors = HashMap::new();
    for file in files {
        tensors.extend(read_safetensors(&dir.join(&file), device)?);
    }
    Ok((tensors, format!("the shards of {}", index_path.display())))
}

fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// The kind of folder [`save`] writes (see [`atomic`]).
pub const KIND: &str = "model";

/// Writes `model` (and its tokenizer) as a new HF directory, atomically: `dir` must be new or
/// empty.
pub fn save(dir: &Path, model: &CausalLm, tokenizer: Option<&TextTokenizer>) -> Result<()> {
    save_as(
        dir,
        model,
        tokenizer,
        atomic::Replace::Never,
        "use hf::save_as",
    )
}

/// [`save`], where an earlier saved model in `dir` is replaced with
/// [`atomic::Replace::SameKind`] (`hint` says how a user asks for that).
pub fn save_as(
    dir: &Path,
    model: &CausalLm,
    tokenizer: Option<&TextTokenizer>,
    replace: atomic::Replace,
    hint: &str,
) -> Result<()> {
    atomic::write_dir(dir, KIND, replace, hint, |tmp| {
        write_into(tmp, model, tokenizer)
    })
    .with_context(|| format!("saving the model to {}", dir.display()))
}

/// Writes the HF files into an existing folder (used inside atomic checkpoint writes). A model
/// with LoRA adapters is written as its PEFT adapter (what `peft` saves), not as full weights.
pub fn write_into(dir: &Path, model: &CausalLm, tokenizer: Option<&TextTokenizer>) -> Result<()> {
    if let Some((cfg, adapters)) = model.lora() {
        let base = model.config.raw["_name_or_path"]
            .as_str()
            .unwrap_or_default();
        super::lora::write_into(dir, cfg, adapters, base)?;
        if let Some(tok) = tokenizer {
            tok.save(dir)?;
            atomic::fault_point("the tokenizer files");
        }
        return Ok(());
    }
    let config = model.config.to_hf_json(torch_dtype(model.dtype()));
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let tensors: Vec<(&str, &Tensor)> = model
        .named_tensors()
        .iter()
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    atomic::fault_point("config.json");
    safetensors::serialize_to_file(tensors, Some(metadata), &dir.join(WEIGHTS))
        .context("cannot write model.safetensors")?;
    atomic::fault_point(WEIGHTS);
    if let Some(tok) = tokenizer {
        tok.save(dir)?;
        atomic::fault_point("the tokenizer files");
    }
    Ok(())
}

//! Llama-family model configuration, read from a HF `config.json`.

pub use crate::kernels::RopeScaling;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;

/// The HF architectures the decoder implements; they differ only in biases and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" | "llama" => Some(Architecture::Llama),
            "MistralForCausalLM" | "mistral" => Some(Architecture::Mistral),
            "Qwen2ForCausalLM" | "qwen2" => Some(Architecture::Qwen2),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (always on for Qwen2).
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The original config.json, kept so that saving preserves fields this crate ignores.
    pub raw: Value,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    /// transformers >= 5 also writes theta and scaling here.
    rope_parameters: Option<Value>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<Value>,
    hidden_act: Option<String>,
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: Value = crate::textfile::read_json(path)?;
        Self::from_json(raw).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let raw: Value = serde_json::from_str(text).context("config is not valid JSON")?;
        Self::from_json(raw)
    }

    pub fn from_json(raw: Value) -> Result<Self> {
        let c: RawConfig = crate::textfile::from_value(raw.clone())?;
        // `architectures` decides; `model_type` only when it is absent.
        let names: Vec<String> = match &c.architectures {
            Some(a) if !a.is_empty() => a.clone(),
            _ => c.model_type.clone().into_iter().collect(),
        };
        let architecture = names
            .iter()
            .find_map(|n| Architecture::from_name(n))
            .with_context(|| {
                format!(
                    "unsupported architecture {names:?}: field `architectures` must be one of \
                     LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"
                )
            })?;
        if let Some(act) = &c.hidden_act {
            if act != "silu" {
                bail!("field `hidden_act`: only \"silu\" is supported, found {act:?}");
            }
        }
        for (field, v) in [
            ("vocab_size", c.vocab_size),
            ("hidden_size", c.hidden_size),
            ("intermediate_size", c.intermediate_size),
            ("num_hidden_layers", c.num_hidden_layers),
            (
                "max_position_embeddings",
                c.max_position_embeddings.unwrap_or(1),
            ),
            ("head_dim", c.head_dim.unwrap_or(1)),
        ] {
            if v == 0 {
                bail!("field `{field}` must be at least 1");
            }
        }
        // An explicit head_dim need not be hidden_size / heads.
        let divides = c.num_attention_heads > 0
            && (c.head_dim.is_some() || c.hidden_size.is_multiple_of(c.num_attention_heads));
        if !divides {
            bail!(
                "field `num_attention_heads` ({}) must divide `hidden_size` ({}) when `head_dim` is absent",
                c.num_attention_heads,
                c.hidden_size
            );
        }
        let num_key_value_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        if num_key_value_heads == 0 || !c.num_attention_heads.is_multiple_of(num_key_value_heads) {
            bail!(
                "field `num_key_value_heads` ({num_key_value_heads}) must divide `num_attention_heads` ({})",
                c.num_attention_heads
            );
        }
        let rope_scaling = match c.rope_scaling.as_ref().or(c.rope_parameters.as_ref()) {
            None | Some(Value::Null) => None,
            Some(v) => parse_rope_scaling(v)?,
        };
        let rope_theta = c
            .rope_theta
            .or_else(|| c.rope_parameters.as_ref()?.get("rope_theta")?.as_f64());
        let sliding_window = match (architecture, c.use_sliding_window) {
            (Architecture::Qwen2, Some(true)) | (Architecture::Mistral, _) => c.sliding_window,
            _ => None,
        };
        let eos_token_ids = match &c.eos_token_id {
            None | Some(Value::Null) => vec![],
            Some(Value::Number(n)) => vec![n.as_u64().context("field `eos_token_id`")? as u32],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|x| x as u32))
                .collect::<Option<Vec<_>>>()
                .context("field `eos_token_id` must be an integer or a list of integers")?,
            Some(_) => bail!("field `eos_token_id` must be an integer or a list of integers"),
        };
        Ok(ModelConfig {
            architecture,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads,
            head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads),
            max_position_embeddings: c.max_position_embeddings.unwrap_or(4096),
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            attention_bias: architecture == Architecture::Qwen2
                || c.attention_bias.unwrap_or(false),
            mlp_bias: c.mlp_bias.unwrap_or(false),
            sliding_window,
            bos_token_id: c.bos_token_id,
            eos_token_ids,
            raw,
        })
    }

    /// The config.json to write next to saved weights: the original fields, with every field the
    /// decoder reads set to the value it used, so HF transformers rebuilds the same model.
    pub fn to_hf_json(&self, torch_dtype: &str) -> Value {
        let mut v = match &self.raw {
            Value::Object(_) => self.raw.clone(),
            _ => json!({}),
        };
        let rope_scaling = match &self.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Linear { factor }) => {
                json!({"rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": *original_max_position_embeddings as u64,
            }),
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let fields = json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": torch_dtype,
        });
        if let (Value::Object(dst), Value::Object(src)) = (&mut v, fields) {
            dst.extend(src);
        }
        v
    }
}

fn parse_rope_scaling(v: &Value) -> Result<Option<RopeScaling>> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .context("field `rope_scaling` needs a `rope_type`")?;
    let num = |k: &str| -> Result<f64> {
        v.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("field `rope_scaling.{k}` is missing or not a number"))
    };
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear { factor: num("factor")? }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => bail!(
            "field `rope_scaling.rope_type`: {other:?} is not supported (supported: default, linear, llama3)"
        ),
    })
}

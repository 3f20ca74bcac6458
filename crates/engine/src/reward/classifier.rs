//! A Llama-family sequence classifier used as a reward model: the decoder body, then the
//! `score.weight` head `(num_labels = 1, hidden)` read at each sequence's last real token. HF
//! `LlamaForSequenceClassification` reads the last token that is not padding; here every
//! sequence's length is known, so padding never matters.

use crate::data::batch::{collate, Padding};
use crate::model::config::ModelConfig;
use crate::model::hf;
use crate::model::tokenizer::TextTokenizer;
use crate::model::CausalLm;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

pub struct SequenceClassifier {
    /// The decoder body; its LM head is never used.
    pub body: CausalLm,
    /// `(1, hidden)`
    score: Tensor,
}

/// Whether a HF `config.json` describes a sequence classifier.
pub fn is_classifier(config: &Value) -> bool {
    config["architectures"].as_array().is_some_and(|a| {
        a.iter().any(|n| {
            n.as_str()
                .is_some_and(|n| n.ends_with("ForSequenceClassification"))
        })
    })
}

impl SequenceClassifier {
    /// Builds from HF-named tensors (`model.*` and `score.weight`) and the classifier's config.
    pub fn from_tensors(
        config: &Value,
        mut tensors: HashMap<String, Tensor>,
        source: &str,
        dtype: DType,
    ) -> Result<Self> {
        let mut body = config.clone();
        let arch = config["architectures"][0].as_str().unwrap_or_default();
        body["architectures"] = Value::from(vec![
            arch.replace("ForSequenceClassification", "ForCausalLM")
        ]);
        // The body alone: tying lets it build without an `lm_head.weight` the checkpoint lacks.
        body["tie_word_embeddings"] = Value::Bool(true);
        let body_config = ModelConfig::from_json(body)?;
        let score = tensors
            .remove("score.weight")
            .with_context(|| format!("tensor `score.weight` is missing from {source}"))?;
        if score.dims() != [1, body_config.hidden_size] {
            bail!(
                "`score.weight` in {source} has shape {:?}; a reward model needs [1, {}] (num_labels = 1)",
                score.dims(),
                body_config.hidden_size
            );
        }
        let body = CausalLm::from_tensors(body_config, tensors, source, dtype, false)?;
        Ok(Self {
            score: score.to_dtype(dtype)?,
            body,
        })
    }

    /// Loads a HF directory whose config names a `*ForSequenceClassification` architecture.
    pub fn load(dir: &Path, device: &Device) -> Result<(Self, TextTokenizer)> {
        let path = dir.join("config.json");
        let config: Value = crate::textfile::read_json(&path)?;
        if !is_classifier(&config) {
            bail!(
                "{}: `architectures` names no *ForSequenceClassification model",
                path.display()
            );
        }
        let (tensors, source) = hf::read_weights(dir, device)?;
        let model = Self::from_tensors(&config, tensors, &source, DType::F32)
            .with_context(|| format!("in {}", dir.display()))?;
        let tokenizer = TextTokenizer::from_hf_dir(dir, &model.body.config)?;
        Ok((model, tokenizer))
    }

    /// The reward of each token sequence (prompt and response together), in batches of 16.
    pub fn rewards(&self, seqs: &[Vec<u32>], pad_id: u32) -> Result<Vec<f64>> {
        if let Some(i) = seqs.iter().position(Vec::is_empty) {
            bail!("sequence {i} has no tokens");
        }
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(16) {
            crate::interrupt::check()?;
            let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            let input = collate(&refs, pad_id, Padding::Right, self.body.device())?;
            let hidden = self.body.hidden_states(&input, None)?;
            let last = chunk
                .iter()
                .enumerate()
                .map(|(b, s)| hidden.i((b, s.len() - 1)))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let values = Tensor::stack(&last, 0)?
                .matmul(&self.score.t()?)?
                .squeeze(1)?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?;
            out.extend(values);
        }
        Ok(out)
    }
}

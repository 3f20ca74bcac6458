//! Models: config, the decoder, loading and saving (HF directories, GGUF), tokenizers and chat
//! templates.

pub mod config;
pub mod decoder;
pub mod gguf;
pub mod hf;
pub mod init;
pub mod template;
pub mod tokenizer;
pub mod weights;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use config::ModelConfig;
use decoder::{parameter_shapes, Decoder, DecoderInput, KvCache};
use std::collections::HashMap;

/// A causal language model: the decoder plus its named parameters.
///
/// A trainable model owns one `Var` per parameter; the optimizer updates them in place and the
/// decoder, which holds views of the same storage, sees the update. A frozen model (the DPO
/// reference) holds plain tensors with storage of its own, so nothing done to the policy can
/// reach it and no gradient is ever computed for it.
#[derive(Debug, Clone)]
pub struct CausalLm {
    pub config: ModelConfig,
    decoder: Decoder,
    params: Vec<(String, Tensor)>,
    vars: Vec<(String, Var)>,
}

impl CausalLm {
    /// Builds a model from HF-named tensors, checking that every parameter the config calls for
    /// is present with the right shape. `source` names where the tensors came from, for errors.
    pub fn from_tensors(
        config: ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        source: &str,
        dtype: DType,
        trainable: bool,
    ) -> Result<Self> {
        let mut params = Vec::new();
        let mut vars = Vec::new();
        for (name, shape) in parameter_shapes(&config) {
            let t = tensors.remove(&name).with_context(|| {
                format!("tensor `{name}` is missing from {source} (the config calls for it)")
            })?;
            if t.dims() != shape.as_slice() {
                bail!(
                    "tensor `{name}` in {source} has shape {:?}, but the config implies {shape:?}",
                    t.dims()
                );
            }
            weights::check(&name, &t, source)?;
            let t = t.to_dtype(dtype)?.contiguous()?;
            if trainable {
                let v = Var::from_tensor(&t)?;
                params.push((name.clone(), v.as_tensor().clone()));
                vars.push((name, v));
            } else {
                params.push((name, t.detach()));
            }
        }
        Self::assemble(config, params, vars)
    }

    fn assemble(
        config: ModelConfig,
        params: Vec<(String, Tensor)>,
        vars: Vec<(String, Var)>,
    ) -> Result<Self> {
        let index: HashMap<&str, &Tensor> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let decoder = Decoder::new(&config, |name| {
            index
                .get(name)
                .map(|t| (*t).clone())
                .with_context(|| format!("no tensor `{name}`"))
        })?;
        Ok(Self {
            config,
            decoder,
            params,
            vars,
        })
    }

    /// A frozen deep copy: shares no storage with `self`, tracks no gradients.
    pub fn frozen(&self) -> Result<Self> {
        let params = self
            .params
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.detach().copy()?)))
            .collect::<Result<Vec<_>>>()?;
        Self::assemble(self.config.clone(), params, vec![])
    }

    /// Sets every trainable variable to the same-named parameter of `other` (a resumed
    /// checkpoint), in place, so optimizers and views keep pointing at them.
    pub fn assign(&self, other: &CausalLm) -> Result<()> {
        let theirs: HashMap<&str, &Tensor> =
            other.params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, var) in &self.vars {
            let t = theirs
                .get(name.as_str())
                .with_context(|| format!("the checkpoint has no tensor `{name}`"))?;
            if t.dims() != var.dims() {
                bail!(
                    "tensor `{name}` has shape {:?} in the checkpoint, {:?} in the policy",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }

    pub fn is_trainable(&self) -> bool {
        !self.vars.is_empty()
    }

    /// The trainable variables with their HF names (empty for a frozen model).
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Every parameter with its HF name, in HF order.
    pub fn named_tensors(&self) -> &[(String, Tensor)] {
        &self.params
    }

    pub fn num_parameters(&self) -> usize {
        self.params.iter().map(|(_, t)| t.elem_count()).sum()
    }

    pub fn device(&self) -> &Device {
        self.params[0].1.device()
    }

    pub fn dtype(&self) -> DType {
        self.params[0].1.dtype()
    }

    pub fn hidden_states(
        &self,
        input: &DecoderInput,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.decoder.hidden_states(input, cache)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.decoder.logits(hidden)
    }

    /// Logits `(B, T, vocab)` for every position of the input.
    pub fn forward(&self, input: &DecoderInput, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.decoder.forward(input, cache)
    }
}

/// Loads a model from a HF directory or a `.gguf` file. A tokenizer whose ids go past the
/// model's vocabulary is refused here, rather than failing at the first such token.
pub fn load_pretrained(
    path: &std::path::Path,
    device: &Device,
    dtype: DType,
    trainable: bool,
) -> Result<(CausalLm, Option<tokenizer::TextTokenizer>)> {
    let (model, tokenizer) = if path.extension().is_some_and(|e| e == "gguf") {
        let (m, t) = gguf::load(path, device, dtype, trainable)?;
        (m, Some(t))
    } else {
        hf::load(path, device, dtype, trainable)?
    };
    if let Some(t) = &tokenizer {
        if t.vocab_size() > model.config.vocab_size {
            anyhow::bail!(
                "{}: the tokenizer has {} ids but the model's vocabulary (`vocab_size` in its \
                 config) has {}: they do not belong together",
                path.display(),
                t.vocab_size(),
                model.config.vocab_size
            );
        }
    }
    Ok((model, tokenizer))
}

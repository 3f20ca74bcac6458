//! Models: config, the decoder, loading and saving (HF directories, GGUF), tokenizers and chat
//! templates.

pub mod config;
pub mod decoder;
pub mod gguf;
pub mod hf;
pub mod init;
pub mod lora;
pub mod template;
pub mod tokenizer;
pub mod weights;

use crate::kernels::Matmul;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use config::ModelConfig;
use decoder::{parameter_shapes, Decoder, DecoderInput, KvCache};
use lora::{Adapter, LoraConfig};
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
    /// LoRA adapters `(module, A, B)`: then only they are trainable (`vars`), and `params`,
    /// the base weights, are frozen.
    lora: Option<(LoraConfig, Vec<(String, Tensor, Tensor)>)>,
    /// Gradient checkpointing per decoder layer in training forwards.
    checkpointing: bool,
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
            lora: None,
            checkpointing: false,
        })
    }

    /// This model with fresh LoRA adapters: only they train.
    pub fn with_lora(&self, cfg: &LoraConfig) -> Result<Self> {
        if self.lora.is_some() {
            bail!("lora: this policy already has LoRA adapters");
        }
        let params = self.base_for_adapters()?;
        let shapes: Vec<(String, Vec<usize>)> = params
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect();
        let adapters = lora::init(cfg, &shapes, self.device(), self.dtype())?;
        self.adapted(params, cfg.clone(), adapters, true)
    }

    /// The base weights adapters go on: shared when this model is frozen, copied when it is
    /// trainable (its own optimizer could move them).
    fn base_for_adapters(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(if self.is_trainable() {
            self.frozen()?.params
        } else {
            self.params.clone()
        })
    }

    /// A model over base `params` with `adapters`, trainable (adapters as variables, with
    /// dropout) or frozen.
    fn adapted(
        &self,
        params: Vec<(String, Tensor)>,
        cfg: LoraConfig,
        adapters: Vec<(String, Tensor, Tensor)>,
        trainable: bool,
    ) -> Result<Self> {
        let dropout = if trainable { lora::dropout(&cfg) } else { None };
        let (mut vars, mut held, mut by_module) = (vec![], vec![], HashMap::new());
        for (module, a, b) in adapters {
            let (a, b) = if trainable {
                let (va, vb) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
                let pair = (va.as_tensor().clone(), vb.as_tensor().clone());
                vars.push((format!("{module}.lora_A.weight"), va));
                vars.push((format!("{module}.lora_B.weight"), vb));
                pair
            } else {
                (a.detach(), b.detach())
            };
            let adapter = Adapter {
                a: a.clone(),
                b: b.clone(),
                scale: cfg.scale(),
                dropout: dropout.clone(),
            };
            by_module.insert(module.clone(), adapter);
            held.push((module, a, b));
        }
        let base = Self::assemble(self.config.clone(), params, vec![])?;
        Self {
            decoder: base.decoder.with_adapters(&by_module),
            vars,
            lora: Some((cfg, held)),
            ..base
        }
        .with_matmul(self.matmul())
        .with_checkpointing(trainable && self.checkpointing)
    }

    /// This model with the adapters read from a PEFT directory, trainable.
    pub fn with_adapter_dir(&self, dir: &std::path::Path) -> Result<Self> {
        let (cfg, adapters) = lora::read(dir, self.device())?;
        let expected: HashMap<String, Vec<usize>> = self
            .params
            .iter()
            .map(|(n, t)| (n.clone(), t.dims().to_vec()))
            .collect();
        let mut converted = vec![];
        for (module, a, b) in adapters {
            let Some(shape) = expected.get(&format!("{module}.weight")) else {
                bail!(
                    "{}: the adapter targets `{module}`, which this model does not have",
                    dir.display()
                );
            };
            if a.dims()[1] != shape[1] || b.dims()[0] != shape[0] {
                bail!(
                    "{}: `{module}`'s adapter is {:?}·{:?}, the model's weight is {shape:?}",
                    dir.display(),
                    b.dims(),
                    a.dims()
                );
            }
            converted.push((module, a.to_dtype(self.dtype())?, b.to_dtype(self.dtype())?));
        }
        self.adapted(self.base_for_adapters()?, cfg, converted, true)
    }

    /// This model (the same weights, not a copy) with gradient checkpointing per decoder layer
    /// on or off: a training forward then keeps each layer's input instead of its activations,
    /// and the backward pass runs every layer a second time.
    pub fn with_checkpointing(&self, on: bool) -> Result<Self> {
        if on && self.lora.as_ref().is_some_and(|(c, _)| c.dropout > 0.0) {
            bail!("gradient checkpointing with LoRA dropout is not supported: the recomputed layers would draw new dropout masks (set the adapter's dropout to 0)");
        }
        Ok(Self {
            checkpointing: on,
            ..self.clone()
        })
    }

    pub fn checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// This model (the same weights) with its matrix products in `matmul`'s precision; frozen
    /// copies and adapted models keep it.
    pub fn with_matmul(&self, matmul: Matmul) -> Self {
        Self {
            decoder: self.decoder.with_matmul(matmul),
            ..self.clone()
        }
    }

    pub fn matmul(&self) -> Matmul {
        self.decoder.matmul()
    }

    /// The LoRA config and adapters `(module, A, B)`, if this model has any.
    pub fn lora(&self) -> Option<(&LoraConfig, &[(String, Tensor, Tensor)])> {
        self.lora.as_ref().map(|(c, a)| (c, a.as_slice()))
    }

    /// A frozen model with the adapters folded into the weights (`W + (alpha/r)·B·A`), which a
    /// HF directory can hold.
    pub fn merged(&self) -> Result<Self> {
        let Some((cfg, adapters)) = &self.lora else {
            return self.frozen();
        };
        let deltas: HashMap<String, Tensor> = adapters
            .iter()
            .map(|(m, a, b)| {
                let delta =
                    (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * cfg.scale())?;
                Ok((format!("{m}.weight"), delta))
            })
            .collect::<Result<_>>()?;
        let params = self
            .params
            .iter()
            .map(|(n, t)| {
                let t = match deltas.get(n) {
                    Some(d) => (t.to_dtype(DType::F32)? + d)?.to_dtype(t.dtype())?,
                    None => t.detach().copy()?,
                };
                Ok((n.clone(), t))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::assemble(self.config.clone(), params, vec![])
    }

    /// A frozen copy that nothing done to `self` can change, tracking no gradients. With LoRA
    /// the base weights, frozen already, are shared and only the adapters are copied; adapters
    /// still at their start (B = 0) are dropped, so the reference is the base model with the
    /// adapter off and costs no second copy.
    pub fn frozen(&self) -> Result<Self> {
        Ok(self.frozen_weights()?.with_matmul(self.matmul()))
    }

    fn frozen_weights(&self) -> Result<Self> {
        if let Some((cfg, adapters)) = &self.lora {
            let mut untouched = true;
            for (_, _, b) in adapters {
                untouched &= b
                    .abs()?
                    .max_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?
                    == 0.0;
            }
            if untouched {
                return Self::assemble(self.config.clone(), self.params.clone(), vec![]);
            }
            let copies = adapters
                .iter()
                .map(|(m, a, b)| Ok((m.clone(), a.detach().copy()?, b.detach().copy()?)))
                .collect::<Result<Vec<_>>>()?;
            return self.adapted(self.params.clone(), cfg.clone(), copies, false);
        }
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
        let mut theirs: HashMap<String, Tensor> = other.params.iter().cloned().collect();
        if let Some((_, adapters)) = &other.lora {
            for (m, a, b) in adapters {
                theirs.insert(format!("{m}.lora_A.weight"), a.clone());
                theirs.insert(format!("{m}.lora_B.weight"), b.clone());
            }
        }
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

    /// Base parameters plus adapters.
    pub fn num_parameters(&self) -> usize {
        let adapters = self.lora.as_ref().map_or(0, |(_, a)| {
            a.iter()
                .map(|(_, a, b)| a.elem_count() + b.elem_count())
                .sum()
        });
        self.params
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum::<usize>()
            + adapters
    }

    pub fn device(&self) -> &Device {
        self.params[0].1.device()
    }

    /// Whether independent batches (frozen scoring chunks, generation batches) should run side
    /// by side on the CPU's threads: a small model's ops are too small for the threads to share
    /// (on the default world's policy, two threads made a run ~15% faster than one). Each
    /// batch's result is the same whichever thread computes it. Larger models split each op
    /// instead, and keep one batch's activations at a time.
    pub fn batches_side_by_side(&self) -> bool {
        const MAX_PARAMETERS: usize = 1_000_000;
        self.device().is_cpu() && self.num_parameters() <= MAX_PARAMETERS
    }

    pub fn dtype(&self) -> DType {
        self.params[0].1.dtype()
    }

    pub fn hidden_states(
        &self,
        input: &DecoderInput,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let checkpoint = self.checkpointing && self.is_trainable();
        self.decoder.hidden_states(input, cache, checkpoint)
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

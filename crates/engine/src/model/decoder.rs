//! The Llama-family decoder (Llama, Mistral, Qwen2): RMSNorm, RoPE, grouped-query attention,
//! SwiGLU MLP. Every op is differentiable; batches carry per-row positions and a padding mask so
//! a sequence scores the same alone, left-padded or right-padded.

use super::config::{Architecture, ModelConfig};
use super::lora::Adapter;
use crate::kernels::{
    attend, attention, attention_bias, linear, rms_norm, rotate, swiglu, Heads, Matmul, Rope,
};
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// The parameters a config calls for, with HF names and shapes, in HF order.
pub fn parameter_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let mut add = |name: &str, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
        add("input_layernorm.weight", vec![h]);
        for (proj, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            add(&format!("self_attn.{proj}.weight"), vec![rows, h]);
            if c.attention_bias {
                add(&format!("self_attn.{proj}.bias"), vec![rows]);
            }
        }
        add("self_attn.o_proj.weight", vec![h, q]);
        if o_proj_bias(c) {
            add("self_attn.o_proj.bias", vec![h]);
        }
        add("post_attention_layernorm.weight", vec![h]);
        for (proj, shape, bias) in [
            ("gate_proj", vec![i, h], i),
            ("up_proj", vec![i, h], i),
            ("down_proj", vec![h, i], h),
        ] {
            add(&format!("mlp.{proj}.weight"), shape);
            if c.mlp_bias {
                add(&format!("mlp.{proj}.bias"), vec![bias]);
            }
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    out
}

/// Llama's `attention_bias` covers all four projections; Qwen2 has biases on q/k/v only.
fn o_proj_bias(c: &ModelConfig) -> bool {
    c.attention_bias && c.architecture != Architecture::Qwen2
}

#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
}

impl Linear {
    /// `train`: a forward without a KV cache, where an adapter's dropout applies.
    fn forward(&self, x: &Tensor, train: bool, matmul: Matmul) -> candle_core::Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let x = x.reshape((b * t, d))?;
        let mut y = linear(&x, &self.weight, matmul)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        if let Some(adapter) = &self.adapter {
            y = (y + adapter.delta(&x, train)?)?;
        }
        y.reshape((b, t, ()))
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    /// The layer's projections with their HF module names under `prefix`.
    fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        [
            ("self_attn.q_proj", &mut self.q),
            ("self_attn.k_proj", &mut self.k),
            ("self_attn.v_proj", &mut self.v),
            ("self_attn.o_proj", &mut self.o),
            ("mlp.gate_proj", &mut self.gate),
            ("mlp.up_proj", &mut self.up),
            ("mlp.down_proj", &mut self.down),
        ]
    }
}

/// What every layer of one forward shares: RoPE tables and the attention bias.
#[derive(Debug, Clone)]
struct LayerConsts {
    cos: Tensor,
    sin: Tensor,
    bias: Tensor,
}

/// A checkpointed forward awaiting its backward pass: the decoder (its weights are shared, not
/// copied), each layer's input (the first one still attached to the embedding) and the leaf
/// that stands for the last layer's output.
struct Checkpointed {
    decoder: Decoder,
    inputs: Vec<Tensor>,
    consts: LayerConsts,
    last: Var,
}

thread_local! {
    /// Checkpointed forwards since the last backward that used one. Per thread, as autograd is:
    /// the loss that consumes a forward is built and back-propagated on the thread that ran it.
    static PENDING: std::cell::RefCell<Vec<Checkpointed>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Completes `grads` (the store of a `loss.backward()`) for `vars` through the checkpointed
/// forwards the loss used: each layer runs again from its saved input, and the gradient
/// arriving at its output is pushed through it with `(out · g).sum().backward()`. Forwards the
/// loss did not use are dropped once some forward was used (a later loss cannot use them: they
/// belonged to this step), and kept when none was (a backward of another model, such as the
/// meta-learner's, between a forward and its own loss).
pub fn replay_checkpoints(grads: &mut GradStore, vars: &[(String, Var)]) -> Result<()> {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let (used, unused): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|c| grads.get(c.last.as_tensor()).is_some());
    if used.is_empty() {
        PENDING.with(|p| *p.borrow_mut() = unused);
        return Ok(());
    }
    for c in used {
        let mut g = grads.remove(c.last.as_tensor()).expect("partitioned on it");
        for l in (0..c.decoder.layers.len()).rev() {
            let input = if l == 0 {
                None
            } else {
                Some(Var::from_tensor(&c.inputs[l])?)
            };
            let x = input.as_ref().map_or(&c.inputs[0], |v| v.as_tensor());
            let out = c.decoder.layer(l, x, &c.consts, None)?;
            let layer_grads = (out * &g)?.sum_all()?.backward()?;
            for (_, var) in vars {
                if let Some(lg) = layer_grads.get(var.as_tensor()) {
                    let sum = match grads.get(var.as_tensor()) {
                        Some(acc) => (acc + lg)?,
                        None => lg.clone(),
                    };
                    grads.insert(var.as_tensor(), sum);
                }
            }
            if let Some(v) = input {
                g = match layer_grads.get(v.as_tensor()) {
                    Some(grad) => grad.clone(),
                    None => v.as_tensor().zeros_like()?,
                };
            }
        }
    }
    Ok(())
}

/// Keys and values of earlier positions, one entry per layer, for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dim(2).unwrap_or(0),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cuts the cached keys and values from the autograd graph. Generating with a trainable
    /// model otherwise chains every step's activations to the next through the cache, and
    /// keeps them all alive (gigabytes for SmolLM2 over 64 tokens).
    pub fn detach(&mut self) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.detach();
            *v = v.detach();
        }
    }
}

/// One forward's input: token ids `(B, T)`, their positions `(B, T)`, and for every key (cached
/// ones first, then these T) whether it is a real token.
#[derive(Debug, Clone)]
pub struct DecoderInput {
    pub ids: Tensor,
    pub positions: Tensor,
    pub key_valid: Vec<Vec<bool>>,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    rope: Rope,
    heads: Heads,
    eps: f64,
    sliding_window: Option<usize>,
    matmul: Matmul,
}

impl Decoder {
    /// Builds the decoder from tensors looked up by HF name (already shape-checked).
    pub fn new(c: &ModelConfig, get: impl Fn(&str) -> Result<Tensor>) -> Result<Self> {
        let linear = |name: &str, bias: bool| -> Result<Linear> {
            Ok(Linear {
                weight: get(&format!("{name}.weight"))?,
                bias: if bias {
                    Some(get(&format!("{name}.bias"))?)
                } else {
                    None
                },
                adapter: None,
            })
        };
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                Ok(Layer {
                    input_norm: get(&format!("{p}.input_layernorm.weight"))?,
                    q: linear(&format!("{p}.self_attn.q_proj"), c.attention_bias)?,
                    k: linear(&format!("{p}.self_attn.k_proj"), c.attention_bias)?,
                    v: linear(&format!("{p}.self_attn.v_proj"), c.attention_bias)?,
                    o: linear(&format!("{p}.self_attn.o_proj"), o_proj_bias(c))?,
                    post_norm: get(&format!("{p}.post_attention_layernorm.weight"))?,
                    gate: linear(&format!("{p}.mlp.gate_proj"), c.mlp_bias)?,
                    up: linear(&format!("{p}.mlp.up_proj"), c.mlp_bias)?,
                    down: linear(&format!("{p}.mlp.down_proj"), c.mlp_bias)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = get("model.embed_tokens.weight")?;
        let lm_head = if c.tie_word_embeddings {
            embed.clone()
        } else {
            get("lm_head.weight")?
        };
        Ok(Self {
            rope: Rope::new(
                c.head_dim,
                c.rope_theta,
                c.rope_scaling.as_ref(),
                embed.device(),
            )?,
            embed,
            layers,
            norm: get("model.norm.weight")?,
            lm_head,
            heads: Heads {
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
            },
            eps: c.rms_norm_eps,
            sliding_window: c.sliding_window,
            matmul: Matmul::default(),
        })
    }

    /// This decoder with its projections and vocabulary head computed in `matmul`'s precision;
    /// the weights are shared, not copied.
    pub fn with_matmul(&self, matmul: Matmul) -> Self {
        Self {
            matmul,
            ..self.clone()
        }
    }

    pub fn matmul(&self) -> Matmul {
        self.matmul
    }

    /// This decoder with `adapters` (by module name, e.g. `model.layers.0.self_attn.q_proj`) on
    /// its projections and none elsewhere; the weights are shared, not copied.
    pub fn with_adapters(&self, adapters: &HashMap<String, Adapter>) -> Self {
        let mut out = self.clone();
        for (l, layer) in out.layers.iter_mut().enumerate() {
            for (name, linear) in layer.linears_mut() {
                linear.adapter = adapters.get(&format!("model.layers.{l}.{name}")).cloned();
            }
        }
        out
    }

    /// Final-norm hidden states `(B, T, hidden)`. With a cache, keys and values of these
    /// positions are appended to it.
    /// `checkpoint`: a training forward (no cache) keeps only each layer's input, and the layers
    /// run again in the backward pass (see [`replay_checkpoints`]).
    pub fn hidden_states(
        &self,
        input: &DecoderInput,
        cache: Option<&mut KvCache>,
        checkpoint: bool,
    ) -> Result<Tensor> {
        let (b, t) = input.ids.dims2()?;
        let dtype = self.embed.dtype();
        let mut x = self
            .embed
            .index_select(&input.ids.flatten_all()?, 0)?
            .reshape((b, t, ()))?;
        let (cos, sin) = self.rope.cos_sin(&input.positions, dtype)?;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let bias = attention_bias(&input.key_valid, offset, t, self.sliding_window, x.device())?;
        let mut cache = cache;
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize(self.layers.len(), None);
        }
        let consts = LayerConsts { cos, sin, bias };
        if checkpoint && cache.is_none() {
            return self.checkpointed(x, consts);
        }
        for l in 0..self.layers.len() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            x = self.layer(l, &x, &consts, slot)?;
        }
        Ok(rms_norm(&x, &self.norm, self.eps)?)
    }

    /// Decoder layer `l` on `x`; without a cache it is a training forward (adapter dropout).
    fn layer(
        &self,
        l: usize,
        x: &Tensor,
        c: &LayerConsts,
        slot: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> candle_core::Result<Tensor> {
        let layer = &self.layers[l];
        let train = slot.is_none();
        let h = rms_norm(x, &layer.input_norm, self.eps)?;
        let x = (x + self.attention(layer, &h, &c.cos, &c.sin, &c.bias, slot)?)?;
        let h = rms_norm(&x, &layer.post_norm, self.eps)?;
        let mlp = swiglu(
            &layer.gate.forward(&h, train, self.matmul)?,
            &layer.up.forward(&h, train, self.matmul)?,
        )?;
        x + layer.down.forward(&mlp, train, self.matmul)?
    }

    /// The layers run one at a time with no graph kept between them: only each layer's input
    /// stays (B·T·hidden numbers a layer), not its activations. The final hidden state becomes a
    /// leaf variable; [`replay_checkpoints`] runs each layer again during the backward pass.
    fn checkpointed(&self, embedded: Tensor, consts: LayerConsts) -> Result<Tensor> {
        let mut inputs = vec![embedded.clone()];
        let mut x = embedded.detach();
        for l in 0..self.layers.len() {
            x = self.layer(l, &x, &consts, None)?.detach();
            if l + 1 < self.layers.len() {
                inputs.push(x.clone());
            }
        }
        let last = Var::from_tensor(&x)?;
        let out = rms_norm(last.as_tensor(), &self.norm, self.eps)?;
        PENDING.with(|p| {
            p.borrow_mut().push(Checkpointed {
                decoder: self.clone(),
                inputs,
                consts,
                last,
            })
        });
        Ok(out)
    }

    /// Logits over the vocabulary for hidden states of shape `(B, T, hidden)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let lm_head = Linear {
            weight: self.lm_head.clone(),
            bias: None,
            adapter: None,
        };
        Ok(lm_head.forward(hidden, false, self.matmul)?)
    }

    pub fn forward(&self, input: &DecoderInput, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.logits(&self.hidden_states(input, cache, false)?)
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bias: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> candle_core::Result<Tensor> {
        let (train, heads) = (cache.is_none(), self.heads);
        let q = layer.q.forward(x, train, self.matmul)?;
        let k = layer.k.forward(x, train, self.matmul)?;
        let v = layer.v.forward(x, train, self.matmul)?;
        let out = match cache {
            None => attention(&q, &k, &v, (cos, sin), bias, heads)?,
            Some(slot) => {
                let (q, mut k, mut v) = rotate(&q, &k, &v, (cos, sin), heads)?;
                if let Some((pk, pv)) = slot.as_ref() {
                    k = Tensor::cat(&[pk, &k], 2)?;
                    v = Tensor::cat(&[pv, &v], 2)?;
                }
                *slot = Some((k.clone(), v.clone()));
                attend(&q, &k, &v, bias, heads)?
            }
        };
        layer.o.forward(&out, train, self.matmul)
    }
}

//! GGUF files of Llama-family models (llama.cpp's format): tensors dequantised to f32, renamed to
//! HF names, llama.cpp's Q/K row permutation undone, and the tokenizer rebuilt from metadata.

use super::config::ModelConfig;
use super::tokenizer::TextTokenizer;
use super::CausalLm;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

struct Meta<'a> {
    map: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.map
            .get(key)
            .with_context(|| format!("{}: metadata key `{key}` is missing", self.path.display()))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        v.to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x as u64))
            .map(|x| x as usize)
            .map_err(|e| anyhow!("{}: metadata key `{key}`: {e}", self.path.display()))
    }
    fn f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        // Through the shortest decimal form, so an f32 1e-5 reads as 1e-5, not 9.9999997e-6.
        v.to_f32()
            .map(|x| x.to_string().parse().unwrap_or(f64::from(x)))
            .or_else(|_| v.to_f64())
            .map_err(|e| anyhow!("{}: metadata key `{key}`: {e}", self.path.display()))
    }
    fn str(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| anyhow!("{}: metadata key `{key}`: {e}", self.path.display()))
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.get(key)?
            .to_vec()
            .map_err(|e| anyhow!("{}: metadata key `{key}`: {e}", self.path.display()))?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(|e| anyhow!("{}: metadata key `{key}`: {e}", self.path.display()))
    }
}

/// Loads a GGUF file into an f32 (or `dtype`) model and its tokenizer.
/// Refuses tensors whose declared data runs past the end of the file, and a model whose
/// dequantised weights would not fit in memory, before any tensor is read.
fn check_sizes(content: &Content, file: &std::fs::File, path: &Path) -> Result<()> {
    let len = file.metadata()?.len() as u128;
    let mut f32_bytes = 0f64;
    for (name, info) in &content.tensor_infos {
        let t = info.ggml_dtype;
        let elems = info
            .shape
            .dims()
            .iter()
            .try_fold(1u128, |a, &d| a.checked_mul(d as u128));
        let bytes = elems.map(|n| n / t.block_size() as u128 * t.type_size() as u128);
        let end = bytes.map(|b| content.tensor_data_offset as u128 + info.offset as u128 + b);
        if end.is_none_or(|e| e > len) {
            bail!(
                "{}: tensor `{name}` ({:?}, {t:?}) runs past the end of the file ({len} bytes)",
                path.display(),
                info.shape.dims()
            );
        }
        f32_bytes += elems.unwrap_or(0) as f64 * 4.0;
    }
    crate::memory::ensure_fits(&format!("loading {}", path.display()), f32_bytes)
}

pub fn load(
    path: &Path,
    device: &Device,
    dtype: DType,
    trainable: bool,
) -> Result<(CausalLm, TextTokenizer)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let content = Content::read(&mut file)
        .map_err(|e| anyhow!("{} is not a readable GGUF file: {e}", path.display()))?;
    let meta = Meta {
        map: &content.metadata,
        path,
    };
    let arch = meta.str("general.architecture")?.to_string();
    if arch != "llama" && arch != "qwen2" {
        bail!(
            "{}: architecture {arch:?} is not supported (llama, qwen2)",
            path.display()
        );
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        bail!(
            "{}: per-frequency RoPE factors (`rope_freqs.weight`) are not supported",
            path.display()
        );
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let tied = !content.tensor_infos.contains_key("output.weight");
    let heads = meta.usize(&format!("{arch}.attention.head_count"))?;
    let kv_heads = meta
        .usize(&format!("{arch}.attention.head_count_kv"))
        .unwrap_or(heads);
    let hidden = meta.usize(&format!("{arch}.embedding_length"))?;
    let eos = meta.usize("tokenizer.ggml.eos_token_id")?;
    let bos = meta.usize("tokenizer.ggml.bos_token_id").ok();
    let config = ModelConfig::from_json(json!({
        "architectures": [if arch == "llama" { "LlamaForCausalLM" } else { "Qwen2ForCausalLM" }],
        "vocab_size": tokens.len(),
        "hidden_size": hidden,
        "intermediate_size": meta.usize(&format!("{arch}.feed_forward_length"))?,
        "num_hidden_layers": meta.usize(&format!("{arch}.block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        // No head count is refused by the config; no division by it here.
        "head_dim": meta
            .usize(&format!("{arch}.rope.dimension_count"))
            .unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
        "max_position_embeddings": meta.usize(&format!("{arch}.context_length")).unwrap_or(4096),
        "rms_norm_eps": meta.f64(&format!("{arch}.attention.layer_norm_rms_epsilon"))?,
        "rope_theta": meta.f64(&format!("{arch}.rope.freq_base")).unwrap_or(10_000.0),
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        // Where the tokenizer metadata lives, for a GGUF export of the trained model.
        "_name_or_path": path.display().to_string(),
    }))
    .with_context(|| format!("building a config from the metadata of {}", path.display()))?;

    check_sizes(&content, &file, path)?;
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(name) else { continue };
        let q = content
            .tensor(&mut file, name, device)
            .map_err(|e| anyhow!("{}: cannot read tensor `{name}`: {e}", path.display()))?;
        let mut t = q
            .dequantize(device)
            .map_err(|e| anyhow!("{}: cannot dequantise tensor `{name}`: {e}", path.display()))?;
        // llama.cpp permutes Q/K rows of Llama models for its interleaved RoPE; Qwen2 is not permuted.
        if arch == "llama" && hf.ends_with("q_proj.weight") {
            t = unpermute(&t, heads)?;
        } else if arch == "llama" && hf.ends_with("k_proj.weight") {
            t = unpermute(&t, kv_heads)?;
        }
        tensors.insert(hf, t);
    }
    let source = format!("GGUF file {}", path.display());
    let model = CausalLm::from_tensors(config, tensors, &source, dtype, trainable)?;
    let tokenizer = tokenizer_from_meta(&meta, &tokens, eos, bos)?;
    Ok((model, tokenizer))
}

/// llama.cpp's names for whole-model tensors and per-layer modules, with the HF names.
const FIXED: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];
const MODULES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// llama.cpp tensor names to HF names.
fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf)) = FIXED.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let (_, hf) = MODULES.iter().find(|(g, _)| *g == module)?;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// HF tensor names to llama.cpp names.
fn gguf_name(hf: &str) -> Option<String> {
    if let Some((g, _)) = FIXED.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let (g, _) = MODULES.iter().find(|(_, h)| *h == module)?;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Element types of an exported GGUF file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExportType {
    F32,
    /// Matrices in f16; norms stay f32, as llama.cpp's converter writes them.
    F16,
}

/// Writes `model` as a GGUF file llama.cpp can serve, atomically. Its metadata (architecture,
/// hyper-parameters, tokenizer, chat template) is the GGUF file the model was first loaded from
/// (`_name_or_path` in its config), with only the file type changed; the tensors are the model's
/// current weights (merged, for a LoRA model), with llama.cpp's Q/K row permutation applied.
pub fn export(path: &Path, model: &CausalLm, ty: ExportType) -> Result<()> {
    let source = model.config.raw["_name_or_path"]
        .as_str()
        .unwrap_or_default();
    if !source.ends_with(".gguf") {
        bail!(
            "a GGUF export reuses the tokenizer metadata of the GGUF file the model came from, and \
             this model came from {:?}; load the policy from a .gguf file, or export \
             format \"hf\" (vLLM, SGLang)",
            source
        );
    }
    let mut file = std::fs::File::open(source)
        .with_context(|| format!("cannot open {source}, the GGUF file the model came from"))?;
    let content = Content::read(&mut file)
        .map_err(|e| anyhow!("{source} is not a readable GGUF file: {e}"))?;
    let meta = Meta {
        map: &content.metadata,
        path: Path::new(source),
    };
    let arch = meta.str("general.architecture")?.to_string();
    let heads = model.config.num_attention_heads;
    let kv_heads = model.config.num_key_value_heads;
    let merged;
    let model = if model.lora().is_some() {
        merged = model.merged()?;
        &merged
    } else {
        model
    };
    let mut tensors = Vec::new();
    for (name, t) in model.named_tensors() {
        let g =
            gguf_name(name).with_context(|| format!("tensor `{name}` has no llama.cpp name"))?;
        let mut t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if arch == "llama" && name.ends_with("q_proj.weight") {
            t = permute(&t, heads)?;
        } else if arch == "llama" && name.ends_with("k_proj.weight") {
            t = permute(&t, kv_heads)?;
        }
        let dtype = match (ty, t.rank()) {
            (ExportType::F16, 2) => GgmlDType::F16,
            _ => GgmlDType::F32,
        };
        tensors.push((g, QTensor::quantize(&t, dtype)?));
    }
    // llama.cpp's LLAMA_FTYPE: 0 all f32, 1 mostly f16.
    let file_type = Value::U32(if ty == ExportType::F16 { 1 } else { 0 });
    let mut keys: Vec<&String> = content.metadata.keys().collect();
    keys.sort();
    let metadata: Vec<(&str, &Value)> = keys
        .into_iter()
        .filter(|k| *k != "general.file_type")
        .map(|k| (k.as_str(), &content.metadata[k]))
        .chain([("general.file_type", &file_type)])
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut bytes = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut bytes, &metadata, &refs)?;
    crate::atomic::write_file(path, bytes.get_ref())
        .with_context(|| format!("writing {}", path.display()))
}

/// llama.cpp's permutation of a `(out, in)` Q or K weight with `heads` heads, which
/// [`unpermute`] undoes.
fn permute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    Ok(w.reshape((heads, 2, out / heads / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Undoes llama.cpp's permutation of a `(out, in)` Q or K weight with `heads` heads:
/// `(heads, out/heads/2, 2, in)` with axes 1 and 2 swapped back.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    Ok(w.reshape((heads, out / heads / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Rebuilds a HF byte-level BPE tokenizer from `tokenizer.ggml.*` metadata.
fn tokenizer_from_meta(
    meta: &Meta,
    tokens: &[String],
    eos: usize,
    bos: Option<usize>,
) -> Result<TextTokenizer> {
    let model = meta.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        bail!(
            "{}: tokenizer.ggml.model {model:?} is not supported (only byte-level BPE, \"gpt2\")",
            meta.path.display()
        );
    }
    let pre = meta.str("tokenizer.ggml.pre").unwrap_or("default");
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre {
        "default" | "gpt2" => byte_level,
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        other => bail!(
            "{}: tokenizer.ggml.pre {other:?} is not supported (default, gpt2, smollm); \
             load the model from a HF directory with its tokenizer.json instead",
            meta.path.display()
        ),
    };
    let types: Vec<i64> = match meta.map.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|t| t.to_i32().map(i64::from))
            .collect::<candle_core::Result<_>>()?,
        None => vec![1; tokens.len()],
    };
    // Token types: 1 normal, 3 control (special), 4 user-defined.
    let added: Vec<_> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &t))| t == 3 || t == 4)
        .map(|(id, (tok, &t))| {
            json!({"id": id, "content": tok, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": t == 4, "special": t == 3})
        })
        .collect();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": meta.strings("tokenizer.ggml.merges")?},
    });
    let name = |id: usize, what: &str| {
        tokens.get(id).cloned().with_context(|| {
            format!(
                "{}: {what} id {id} is outside the vocabulary",
                meta.path.display()
            )
        })
    };
    let eos_tok = name(eos, "tokenizer.ggml.eos_token_id")?;
    let bos_tok = bos
        .map(|b| name(b, "tokenizer.ggml.bos_token_id"))
        .transpose()?;
    let pad_tok = meta
        .usize("tokenizer.ggml.padding_token_id")
        .ok()
        .map(|p| name(p, "tokenizer.ggml.padding_token_id"))
        .transpose()?;
    let template = meta.str("tokenizer.chat_template").ok();
    TextTokenizer::from_parts(
        &tokenizer_json.to_string(),
        &eos_tok,
        bos_tok.as_deref(),
        pad_tok.as_deref(),
        template,
    )
    .with_context(|| format!("building the tokenizer of {}", meta.path.display()))
}

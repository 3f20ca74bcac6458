//! Shared by the benchmarks: the benchmark model configs with random weights.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use metaapo::model::config::ModelConfig;
use metaapo::model::decoder::parameter_shapes;
use metaapo::model::CausalLm;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// `smollm2` (SmolLM2-135M's shape), `30m`, `llama-1b` (Llama-3.2-1B's shape, 1.24B), or `world`
/// (the default built-in world's 108k-parameter policy, where per-operation cost dominates).
pub fn config(name: &str) -> Result<ModelConfig> {
    let (hidden, inter, layers, heads, kv, theta, vocab) = match name {
        "smollm2" => (576, 1536, 30, 9, 3, 100000.0, 49152),
        "30m" => (256, 768, 6, 4, 2, 10000.0, 49152),
        "llama-1b" => (2048, 8192, 16, 32, 8, 500000.0, 128256),
        "world" => (64, 192, 2, 4, 4, 10000.0, metaapo::world::vocab::size()),
        other => anyhow::bail!("unknown config {other}: smollm2, 30m, llama-1b or world"),
    };
    ModelConfig::from_json(json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "rope_theta": theta, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": true, "max_position_embeddings": 2048,
    }))
}

/// A model of config `name` in `dtype`, with uniform(-0.02, 0.02) weights and unit norms.
pub fn random_model(
    name: &str,
    device: &Device,
    dtype: DType,
    trainable: bool,
) -> Result<CausalLm> {
    let cfg = config(name)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let tensors = parameter_shapes(&cfg)
        .into_iter()
        .map(|(n, shape)| {
            let len: usize = shape.iter().product();
            let v: Vec<f32> = (0..len)
                .map(|_| {
                    if n.ends_with("norm.weight") {
                        1.0
                    } else {
                        rng.random_range(-0.02..0.02)
                    }
                })
                .collect();
            Ok((n, Tensor::from_vec(v, shape, device)?))
        })
        .collect::<Result<_>>()?;
    CausalLm::from_tensors(cfg, tensors, "random weights", dtype, trainable)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Stack per compute thread: what a spawned thread gets by default (the benchmarks run no
/// scripts, which is why `metaapo` asks for more).
const STACK_BYTES: usize = 8 << 20;

/// Runs a benchmark's `measure` the way `metaapo` runs its host: memory and thread settings
/// first, then on a worker of the compute pool (see `threads::on_pool`).
pub fn run(measure: fn() -> Result<()>) -> Result<()> {
    metaapo::memory::keep_freed_memory();
    metaapo::threads::fix_count();
    metaapo::threads::on_pool(STACK_BYTES, measure)?
}

//! Shared test helpers: tiny random Llama-family models.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use metaapo::model::config::ModelConfig;
use metaapo::model::decoder::parameter_shapes;
use metaapo::model::CausalLm;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;

/// The cache every test that runs the binary shares (`METAAPO_CACHE`), so the tiny world is
/// warmed up once per build folder, not once per test; concurrent warm-ups are safe.
pub fn shared_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("metaapo-cache")
}

pub fn tiny_config(arch: &str, tied: bool) -> ModelConfig {
    ModelConfig::from_json(json!({
        "architectures": [arch],
        "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied,
        "max_position_embeddings": 64, "eos_token_id": 2,
    }))
    .unwrap()
}

/// Random weights (uniform, scale 0.3; norms around 1) for `config`.
pub fn random_tensors(config: &ModelConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    parameter_shapes(config)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let norm = name.ends_with("norm.weight");
            let v: Vec<f64> = (0..n)
                .map(|_| {
                    let u: f64 = rng.random_range(-1.0..1.0);
                    if norm {
                        1.0 + 0.2 * u
                    } else {
                        0.3 * u
                    }
                })
                .collect();
            (name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
        })
        .collect()
}

pub fn tiny_model(arch: &str, tied: bool, dtype: DType, trainable: bool) -> CausalLm {
    let config = tiny_config(arch, tied);
    let tensors = random_tensors(&config, 7);
    CausalLm::from_tensors(config, tensors, "random test weights", dtype, trainable).unwrap()
}

pub fn fixture_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A JSON array of token ids.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The tiny built-in world (cached after its first build).
pub fn tiny_world() -> metaapo::world::BuiltinWorld {
    metaapo::world::BuiltinWorld::build(
        metaapo::world::WorldConfig::preset("tiny").unwrap(),
        &Device::Cpu,
        &mut |_, _, _| Ok(()),
    )
    .unwrap()
}

/// A user's files for a world: the tiny world's policy in `dir/policy`, and the tiny
/// sequence-classifier fixture (given the same tokenizer) as the reward model in `dir/reward`.
pub fn policy_and_reward(dir: &std::path::Path, world: &metaapo::world::BuiltinWorld) {
    metaapo::model::hf::save(
        &dir.join("policy"),
        &world.model(false).unwrap(),
        Some(&world.tokenizer),
    )
    .unwrap();
    let rm = dir.join("reward");
    std::fs::create_dir_all(&rm).unwrap();
    for f in ["config.json", metaapo::model::hf::WEIGHTS] {
        std::fs::copy(fixture_dir("tiny_llama_rm").join(f), rm.join(f)).unwrap();
    }
    world.tokenizer.save(&rm).unwrap();
}

/// The DPO loss of two fixed pairs (ids within the tiny configs' vocabularies).
pub fn dpo_loss(policy: &CausalLm, reference: &CausalLm) -> Tensor {
    use metaapo::data::encode::EncodedSeq;
    let s = |ids: &[u32], p| EncodedSeq {
        ids: ids.to_vec(),
        prompt_len: p,
    };
    let chosen = [s(&[5, 6, 7, 20, 21, 2], 3), s(&[8, 9, 30, 2], 2)];
    let rejected = [s(&[5, 6, 7, 25, 2], 3), s(&[8, 9, 31, 32, 33, 2], 2)];
    let pol = metaapo::score::pair_logps(policy, &chosen, &rejected, 0).unwrap();
    let refs = metaapo::score::pair_logps(reference, &chosen, &rejected, 0)
        .unwrap()
        .detach();
    let cfg = metaapo::objective::DpoConfig::default();
    metaapo::objective::dpo(&pol, &refs, &cfg, None)
        .unwrap()
        .loss
}

/// One central finite difference in f64 at `var`'s coordinate with the largest analytic gradient
/// (where a relative error means something): `(index, analytic, numeric, relative error)`.
/// `loss` is evaluated with that coordinate moved by ±h; the variable is restored after.
pub fn finite_difference(
    var: &candle_core::Var,
    grad: &Tensor,
    h: f64,
    loss: impl Fn() -> f64,
) -> (usize, f64, f64, f64) {
    let g = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let (i, &analytic) = g
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap();
    let orig = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let set = |p: Vec<f64>| {
        var.set(&Tensor::from_vec(p, var.shape(), var.device()).unwrap())
            .unwrap()
    };
    let eval = |delta: f64| {
        let mut p = orig.clone();
        p[i] += delta;
        set(p);
        loss()
    };
    let numeric = (eval(h) - eval(-h)) / (2.0 * h);
    set(orig);
    let rel = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-12);
    (i, analytic, numeric, rel)
}

/// The metaapo binary, run in `dir` with the shared cache.
pub fn metaapo(dir: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_metaapo"));
    c.env("METAAPO_CACHE", shared_cache()).current_dir(dir);
    c
}

/// A finished command's stdout followed by its stderr.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

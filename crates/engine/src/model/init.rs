//! Fresh weights for a config, as HF initialises Llama-family models: normal(0, σ) matrices,
//! zero biases, unit norm weights. Seeded, so a world built twice is the same world.

use super::config::ModelConfig;
use super::decoder::parameter_shapes;
use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

pub fn random_weights(
    config: &ModelConfig,
    std: f64,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, shape) in parameter_shapes(config) {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| (std * normal(&mut rng)) as f32).collect()
        };
        out.insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
    }
    Ok(out)
}

/// A standard normal draw (Box-Muller), so no distributions crate is needed for one use.
pub fn normal(rng: &mut impl Rng) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

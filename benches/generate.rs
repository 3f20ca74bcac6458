//! Generation benchmark: greedy decoding with the KV cache for the SmolLM2-135M config (random
//! weights, f32), 32-token prompts, 64 new tokens, at batch 1 and 8. Reports end-to-end tokens/s
//! and where the time goes: the prompt forward (prefill), the per-token forwards, and the rest
//! (logits to host, picking tokens, building the step inputs).
//!
//!   cargo bench --bench generate [-- --repeats N] [-- --device cuda]
//!
//! Writes target/bench/generate.json; `python3 benches/pytorch_generate.py` times HF
//! transformers `generate` on the same config and prints the ratio.

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use metaapo::data::batch::{collate, Padding};
use metaapo::generate::{generate, SampleConfig, Stop};
use metaapo::model::decoder::{DecoderInput, KvCache};
use metaapo::model::CausalLm;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::Instant;

const PROMPT: usize = 32;
const NEW: usize = 64;

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// The bare decode loop: one cached forward per new token and the logits copied to the host.
fn forwards_only(model: &CausalLm, prompts: &[Vec<u32>]) -> Result<f64> {
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let dev = model.device();
    let input = collate(&refs, 0, Padding::Left, dev)?;
    let mut cache = KvCache::default();
    model.forward(&input, Some(&mut cache))?;
    let b = prompts.len();
    let mut key_valid = input.key_valid.clone();
    timed(|| {
        for step in 0..NEW - 1 {
            key_valid.iter_mut().for_each(|v| v.push(true));
            let step_input = DecoderInput {
                ids: Tensor::from_vec(vec![5u32; b], (b, 1), dev)?,
                positions: Tensor::from_vec(vec![(PROMPT + step) as u32; b], (b, 1), dev)?,
                key_valid: key_valid.clone(),
            };
            model
                .forward(&step_input, Some(&mut cache))?
                .i((.., 0))?
                .to_vec2::<f32>()?;
        }
        Ok(())
    })
}

fn run(model: &CausalLm, batch: usize, repeats: usize) -> Result<Value> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(batch as u64);
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|_| (0..PROMPT).map(|_| rng.random_range(3..49152)).collect())
        .collect();
    let cfg = |max_new_tokens| SampleConfig {
        temperature: 0.0,
        max_new_tokens,
        batch_size: batch,
        ..SampleConfig::default()
    };
    let gen = |n| -> Result<f64> {
        timed(|| {
            let out = generate(model, &prompts, &Stop::tokens(&[]), 0, &cfg(n))?;
            anyhow::ensure!(out.iter().all(|s| s.tokens.len() == n));
            Ok(())
        })
    };
    gen(2)?; // warm-up
    let (mut total, mut prefill, mut forwards) = (vec![], vec![], vec![]);
    for _ in 0..repeats {
        total.push(gen(NEW)?);
        prefill.push(gen(1)?);
        forwards.push(forwards_only(model, &prompts)?);
    }
    let (total, prefill, forwards) = (
        common::median(total),
        common::median(prefill),
        common::median(forwards),
    );
    Ok(json!({
        "tokens_per_s": (batch * NEW) as f64 / total,
        "total_s": total,
        "prefill_s": prefill,
        "decode_forwards_s": forwards,
        "other_s": (total - prefill - forwards).max(0.0),
    }))
}

fn main() -> Result<()> {
    common::run(measure)
}

fn measure() -> Result<()> {
    let (mut repeats, mut device_spec) = (2usize, "cpu".to_string());
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--repeats" => repeats = args.next().context("--repeats needs a number")?.parse()?,
            "--device" => device_spec = args.next().context("--device needs a value")?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let device: Device = metaapo::device::parse_device(&device_spec)?;
    let model = common::random_model("smollm2", &device, DType::F32, false)?;
    println!(
        "smollm2 config, greedy, {PROMPT}-token prompts, {NEW} new tokens, threads {}, device {device_spec}",
        rayon::current_num_threads()
    );
    let mut results = serde_json::Map::new();
    for batch in [1, 8] {
        let v = run(&model, batch, repeats)?;
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        println!(
            "batch {batch}: {:>6.1} tokens/s  ({:.2} s: prefill {:.2} s, decode forwards {:.2} s, other {:.2} s)",
            f("tokens_per_s"), f("total_s"), f("prefill_s"), f("decode_forwards_s"), f("other_s")
        );
        results.insert(format!("batch_{batch}"), v);
    }
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/generate.json",
        serde_json::to_string_pretty(&Value::Object(results))?,
    )?;
    Ok(())
}

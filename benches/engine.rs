//! Engine benchmark: a training step (forward + backward + fused AdamW) on a batch of 4 x 256
//! tokens, scoring throughput, and peak memory, for the SmolLM2-135M config and a ~30M config
//! (random weights), the SmolLM2 step again with gradient checkpointing per decoder layer
//! (`smollm2-checkpointed`), and both configs with bf16 matrix products (`smollm2-bf16`,
//! `30m-bf16`: `--matmul bf16`). Each config runs in its own process so peak memory is per config.
//!
//!   cargo bench --bench engine [-- smollm2|30m|smollm2-checkpointed|smollm2-bf16 ...] [-- --steps N] [-- --device cuda]
//!
//! Writes target/bench/engine.json; `python3 benches/pytorch_engine.py` runs the same step in
//! PyTorch and prints the ratio against it.

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use metaapo::data::encode::EncodedSeq;
use metaapo::kernels::Matmul;
use metaapo::score::sequence_logps;
use metaapo::train::grads::Gradients;
use metaapo::train::optimizer::{AdamW, AdamWConfig};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::Instant;

const BATCH: usize = 4;
/// A config name ending in this trains with gradient checkpointing.
const CHECKPOINTED: &str = "-checkpointed";
/// A config name ending in this multiplies in bf16 (`Matmul::Bf16`).
const BF16: &str = "-bf16";
const SEQ: usize = 256;

fn run_one(name: &str, steps: usize, device: &Device) -> Result<Value> {
    let (base, bf16) = name.strip_suffix(BF16).map_or((name, false), |b| (b, true));
    let (base, checkpointed) = base
        .strip_suffix(CHECKPOINTED)
        .map_or((base, false), |b| (b, true));
    let matmul = if bf16 { Matmul::Bf16 } else { Matmul::F32 };
    let policy = common::random_model(base, device, DType::F32, true)?
        .with_checkpointing(checkpointed)?
        .with_matmul(matmul);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    // Every token after the first is scored, as in a causal-LM loss.
    let batch: Vec<EncodedSeq> = (0..BATCH)
        .map(|_| EncodedSeq {
            ids: (0..SEQ).map(|_| rng.random_range(3..49152)).collect(),
            prompt_len: 1,
        })
        .collect();
    let tokens = (BATCH * (SEQ - 1)) as f64;
    let mut opt = AdamW::new(
        policy.vars(),
        AdamWConfig {
            lr: 1e-5,
            ..Default::default()
        },
    )?;
    let mut train = vec![];
    for step in 0..=steps {
        let t = Instant::now();
        let loss = (sequence_logps(&policy, &batch, 0)?.sum.sum_all()? / -tokens)?;
        let mut grads = Gradients::new();
        grads.accumulate(loss, policy.vars())?;
        opt.step(&grads, 1e-5)?;
        if step > 0 {
            train.push(t.elapsed().as_secs_f64());
        }
    }
    let frozen = policy.frozen()?;
    let mut score = vec![];
    for _ in 0..3 {
        let t = Instant::now();
        sequence_logps(&frozen, &batch, 0)?.sum.to_vec1::<f32>()?;
        score.push(t.elapsed().as_secs_f64());
    }
    Ok(json!({
        "params": policy.num_parameters(),
        "train_step_s": common::median(train),
        "score_tokens_per_s": (BATCH * SEQ) as f64 / common::median(score),
        "peak_rss_mb": metaapo::memory::peak_rss_mib(),
    }))
}

fn main() -> Result<()> {
    common::run(measure)
}

fn measure() -> Result<()> {
    let (mut steps, mut device_spec, mut names) = (3usize, "cpu".to_string(), Vec::new());
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--steps" => steps = args.next().context("--steps needs a number")?.parse()?,
            "--device" => device_spec = args.next().context("--device needs a value")?,
            _ => names.push(arg),
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    if let [one] = names.as_slice() {
        let device = metaapo::device::parse_device(&device_spec)?;
        println!("{}", run_one(one, steps, &device)?);
        return Ok(());
    }
    let names = if names.is_empty() {
        vec![
            "30m",
            "smollm2",
            "smollm2-checkpointed",
            "30m-bf16",
            "smollm2-bf16",
        ]
    } else {
        names
    };
    let exe = std::env::current_exe()?;
    let mut configs = serde_json::Map::new();
    println!(
        "threads: {}  batch: {BATCH} x {SEQ}  device: {device_spec}",
        rayon::current_num_threads()
    );
    for name in names {
        let out = std::process::Command::new(&exe)
            .args([
                name,
                "--steps",
                &steps.to_string(),
                "--device",
                &device_spec,
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(out.stdout.trim_ascii())?;
        println!(
            "{name:>20}: {:>11} params  train step {:>7.3} s  scoring {:>8.0} tokens/s  peak RSS {:>7.0} MiB",
            v["params"], v["train_step_s"].as_f64().unwrap_or(0.0),
            v["score_tokens_per_s"].as_f64().unwrap_or(0.0), v["peak_rss_mb"].as_f64().unwrap_or(0.0)
        );
        configs.insert(name.to_string(), v);
    }
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/engine.json",
        serde_json::to_string_pretty(&json!({"configs": configs}))?,
    )?;
    println!("wrote target/bench/engine.json");
    Ok(())
}

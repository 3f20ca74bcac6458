//! DPO benchmark, on any device and dtype: the three things a preference-optimisation run spends
//! its time on, for model shapes with random weights.
//!   dpo_step_s          one DPO step on 4 pairs of 256-token sequences: the trainable policy's
//!                       forward and backward over chosen and rejected together, the frozen
//!                       reference's forward, and the AdamW step (median of --steps, after one
//!                       warm-up)
//!   score_tokens_per_s  a no-grad forward and per-token log-probs of the same 8 sequences
//!   generate_tokens_per_s  greedy decoding with the KV cache, 8 prompts of 32 tokens, 64 new
//!                       tokens each, counted as 8 x 64
//! The `world` config (the default world's policy) takes the default world's shapes instead: 32
//! pairs of 16 tokens (8 of prompt), and 64 prompts of 8 tokens with 8 new tokens each.
//!
//!   cargo bench --bench dpo -- [smollm2 llama-1b 30m world] [--device cuda] [--dtype bf16] \
//!       [--steps N] [--lora RANK] [--checkpointing] [--json FILE]
//!
//! `--lora RANK` trains LoRA adapters (all seven projections, alpha = rank) instead of every
//! weight, with the base model as the reference; `--checkpointing` turns on gradient
//! checkpointing per decoder layer. Peak RSS is the process's, so compare modes in separate runs.
//!
//! `python3 benches/pytorch_dpo.py` measures the same three in PyTorch + transformers and, given
//! this one's JSON, prints the ratios. The CUDA bundle (tools/cuda-bundle.sh) runs both.

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use metaapo::data::encode::EncodedSeq;
use metaapo::generate::{generate, SampleConfig, Stop};
use metaapo::model::lora::LoraConfig;
use metaapo::objective::{dpo, DpoConfig};
use metaapo::score::{pair_logps, sequence_logps};
use metaapo::train::grads::Gradients;
use metaapo::train::optimizer::{AdamW, AdamWConfig};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::Instant;

/// Pairs per step, tokens per sequence (prompt included), prompt tokens, new tokens per generated
/// sequence, and sequences per generation batch, for config `name`.
struct Shape {
    pairs: usize,
    seq: usize,
    prompt: usize,
    new: usize,
    gen_batch: usize,
}

fn shape(name: &str) -> Shape {
    if name == "world" {
        // metaapo_dpo.rhai on the default world: 32 pairs a step, "12+30=" prompts with short
        // answers, K = 8 samples of each selected prompt.
        Shape {
            pairs: 32,
            seq: 16,
            prompt: 8,
            new: 8,
            gen_batch: 64,
        }
    } else {
        Shape {
            pairs: 4,
            seq: 256,
            prompt: 32,
            new: 64,
            gen_batch: 8,
        }
    }
}

fn timed(device: &Device, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    device.synchronize()?;
    let t = Instant::now();
    f()?;
    device.synchronize()?;
    Ok(t.elapsed().as_secs_f64())
}

struct Mode {
    lora: usize,
    checkpointing: bool,
}

fn run_one(name: &str, steps: usize, device: &Device, dtype: DType, mode: &Mode) -> Result<Value> {
    let policy = if mode.lora > 0 {
        let base = common::random_model(name, device, dtype, false)?;
        base.with_lora(&LoraConfig {
            rank: mode.lora,
            alpha: mode.lora as f64,
            targets: vec!["all-linear".into()],
            ..Default::default()
        })?
    } else {
        common::random_model(name, device, dtype, true)?
    };
    let policy = policy.with_checkpointing(mode.checkpointing)?;
    let Shape {
        pairs,
        seq: len,
        prompt,
        new,
        gen_batch,
    } = shape(name);
    let reference = policy.frozen()?;
    let vocab = policy.config.vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut seq = || EncodedSeq {
        ids: (0..len).map(|_| rng.random_range(3..vocab)).collect(),
        prompt_len: prompt,
    };
    let chosen: Vec<EncodedSeq> = (0..pairs).map(|_| seq()).collect();
    let rejected: Vec<EncodedSeq> = (0..pairs).map(|_| seq()).collect();
    let mut opt = AdamW::new(
        policy.vars(),
        AdamWConfig {
            lr: 1e-6,
            ..Default::default()
        },
    )?;
    let mut train = vec![];
    for step in 0..=steps {
        let t = timed(device, || {
            let refs = pair_logps(&reference, &chosen, &rejected, 0)?.detach();
            let pol = pair_logps(&policy, &chosen, &rejected, 0)?;
            let loss = dpo(&pol, &refs, &DpoConfig::default(), None)?.loss;
            // As a trainer does: the loss alone holds the graph, which the backward pass frees.
            drop(pol);
            let mut grads = Gradients::new();
            grads.accumulate(loss, policy.vars())?;
            opt.step(&grads, 1e-6)?;
            Ok(())
        })?;
        if step > 0 {
            train.push(t);
        }
    }
    drop(opt);
    let all: Vec<EncodedSeq> = chosen.iter().chain(&rejected).cloned().collect();
    let mut score = vec![];
    for _ in 0..4 {
        score.push(timed(device, || {
            sequence_logps(&reference, &all, 0)?.sum.to_vec1::<f32>()?;
            Ok(())
        })?);
    }
    let prompts: Vec<Vec<u32>> = (0..gen_batch)
        .map(|_| (0..prompt).map(|_| rng.random_range(3..vocab)).collect())
        .collect();
    let cfg = SampleConfig {
        temperature: 0.0,
        max_new_tokens: new,
        batch_size: gen_batch,
        ..SampleConfig::default()
    };
    let mut gen = vec![];
    for _ in 0..3 {
        gen.push(timed(device, || {
            let out = generate(&reference, &prompts, &Stop::tokens(&[]), 0, &cfg)?;
            anyhow::ensure!(out.iter().all(|s| s.tokens.len() == new));
            Ok(())
        })?);
    }
    // The first scoring and generation runs are warm-ups (kernel loading, allocator growth).
    Ok(json!({
        "params": policy.num_parameters(),
        "dpo_batch": format!("{pairs} pairs x {len} tokens"),
        "trainable_params": policy.vars().iter().map(|(_, v)| v.elem_count()).sum::<usize>(),
        "dpo_step_s": common::median(train),
        "score_tokens_per_s": (2 * pairs * len) as f64 / common::median(score[1..].to_vec()),
        "generate_tokens_per_s": (gen_batch * new) as f64 / common::median(gen[1..].to_vec()),
        "peak_rss_mb": metaapo::memory::peak_rss_mib(),
    }))
}

fn main() -> Result<()> {
    common::run(measure)
}

fn measure() -> Result<()> {
    let (mut steps, mut device_spec, mut dtype_spec) =
        (3usize, "cpu".to_string(), "f32".to_string());
    let (mut names, mut json_path) = (Vec::new(), "target/bench/dpo.json".to_string());
    let mut mode = Mode {
        lora: 0,
        checkpointing: false,
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--steps" => steps = value()?.parse()?,
            "--device" => device_spec = value()?,
            "--dtype" => dtype_spec = value()?,
            "--json" => json_path = value()?,
            "--lora" => mode.lora = value()?.parse()?,
            "--checkpointing" => mode.checkpointing = true,
            _ => names.push(arg),
        }
    }
    let device = metaapo::device::parse_device(&device_spec)?;
    let dtype = metaapo::device::parse_dtype(&dtype_spec)?;
    metaapo::device::check_dtype(&device, dtype)?;
    if names.is_empty() {
        names = vec!["smollm2".into()];
    }
    println!(
        "device: {device_spec}  dtype: {dtype_spec}  threads: {}  lora rank: {}  checkpointing: {}",
        rayon::current_num_threads(),
        mode.lora,
        mode.checkpointing
    );
    let mut configs = serde_json::Map::new();
    for name in &names {
        let v = run_one(name, steps, &device, dtype, &mode)?;
        println!(
            "{name:>9}: {:>11} params ({} trainable)  {}  DPO step {:>7.3} s  scoring {:>8.0} tokens/s  generation {:>7.0} tokens/s  peak RSS {:>6.0} MiB",
            v["params"],
            v["trainable_params"],
            v["dpo_batch"].as_str().unwrap_or(""),
            v["dpo_step_s"].as_f64().unwrap_or(0.0),
            v["score_tokens_per_s"].as_f64().unwrap_or(0.0),
            v["generate_tokens_per_s"].as_f64().unwrap_or(0.0),
            v["peak_rss_mb"].as_f64().unwrap_or(0.0),
        );
        configs.insert(name.clone(), v);
    }
    let out = json!({"engine": "metaapo", "device": device_spec, "dtype": dtype_spec,
        "lora": mode.lora, "checkpointing": mode.checkpointing, "configs": configs});
    if let Some(dir) = std::path::Path::new(&json_path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {json_path}");
    Ok(())
}

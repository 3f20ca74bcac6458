//! Serving benchmark: sampling from SmolLM2-135M-Instruct here (candle, f32, all rows batched
//! with the KV cache) against the same weights on llama.cpp's server (llama-cpp-python, the f32
//! GGUF a weight sync exports), and what a sync costs per iteration (export + server restart).
//!
//!   cargo bench --bench serving [-- --prompts 8 --n 4 --new 64 --syncs 3]
//!
//! Both sides sample the same prompts with the same settings (temperature 1, top_p 1, no top_k),
//! one after the other on the same cores. Tokens are the local generated ids and, for the server,
//! its text re-tokenized by the policy's tokenizer (llama.cpp's server returns no ids). Writes
//! target/bench/serving.json.

#[path = "../tests/common/llama.rs"]
mod llama;

use anyhow::{bail, Result};
use candle_core::Device;
use metaapo::data::encode::Text;
use metaapo::generate::SampleConfig;
use metaapo::policy::{Completion, Policy};
use metaapo::serving::{ExportFormat, HttpConfig, Server, ServerConfig, SyncConfig, SyncMethod};
use serde_json::json;
use std::time::Instant;

const PROMPTS: [&str; 8] = [
    "How do I boil an egg?",
    "Write a haiku about autumn.",
    "What is the capital of France?",
    "Explain photosynthesis to a child.",
    "Give me three tips for sleeping better.",
    "What is 17 times 23?",
    "Name a famous painting and its painter.",
    "Why is the sky blue?",
];

fn arg(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(v) if v > 0 => Ok(v),
            _ => bail!("{name} needs a positive number"),
        },
    }
}

fn tokens(samples: &[Completion]) -> usize {
    samples.iter().map(|c| c.tokens.len()).sum()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let prompts = arg(&args, "--prompts", 8)?;
    if prompts > PROMPTS.len() {
        bail!("--prompts: at most {}", PROMPTS.len());
    }
    let (n, new, syncs) = (
        arg(&args, "--n", 4)?,
        arg(&args, "--new", 64)?,
        arg(&args, "--syncs", 3)?,
    );
    let texts: Vec<Text> = PROMPTS[..prompts]
        .iter()
        .map(|p| Text::Plain(p.to_string()))
        .collect();
    let gguf = llama::smollm2_gguf();
    let policy = Policy::load(&gguf.display().to_string(), &Device::Cpu, false)?;
    let server_llama = llama::Llama::start("bench");
    let server = Server::connect(
        &ServerConfig {
            url: server_llama.url.clone(),
            model: "smollm2".into(),
            ..ServerConfig::default()
        },
        &HttpConfig::default(),
        &SyncConfig {
            reload: SyncMethod::Command,
            format: ExportFormat::GgufF32,
            command: server_llama.restart_command(),
            ..SyncConfig::default()
        },
    )?;
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let sync_dir = out.join("serving-sync");

    // A sync per iteration: each round the policy counts as updated, so it is exported again.
    let mut export = vec![];
    let mut reload = vec![];
    for _ in 0..syncs {
        policy.mark_updated();
        let r = server.sync(&policy, &sync_dir)?;
        export.push(r.export_s);
        reload.push(r.reload_s);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (export_s, reload_s) = (mean(&export), mean(&reload));

    let cfg = SampleConfig {
        n,
        max_new_tokens: new,
        temperature: 1.0,
        seed: 0,
        ..SampleConfig::default()
    };
    let t = Instant::now();
    let local = policy.generate(&texts, &cfg, &[])?;
    let local_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let served = server.generate(&policy, &texts, &cfg, &[], false)?;
    let server_s = t.elapsed().as_secs_f64();
    drop(server_llama);
    let _ = std::fs::remove_dir_all(&sync_dir);

    let local_tps = tokens(&local) as f64 / local_s;
    let server_tps = tokens(&served) as f64 / server_s;
    let sync_s = export_s + reload_s;
    println!(
        "sampling {prompts} prompts x {n} samples, up to {new} new tokens, SmolLM2-135M-Instruct f32, 2 threads"
    );
    println!(
        "local (candle)        {:>6} tokens in {local_s:>6.2} s  {local_tps:>7.1} tokens/s",
        tokens(&local)
    );
    println!(
        "llama.cpp server      {:>6} tokens in {server_s:>6.2} s  {server_tps:>7.1} tokens/s  ({:.2}x local)",
        tokens(&served),
        server_tps / local_tps
    );
    println!(
        "sync (mean of {syncs})     export {export_s:.2} s + reload {reload_s:.2} s = {sync_s:.2} s, {:.0}% of a server sampling round",
        100.0 * sync_s / (sync_s + server_s)
    );
    std::fs::create_dir_all(&out)?;
    let report = json!({
        "prompts": prompts, "n": n, "max_new_tokens": new,
        "local": {"tokens": tokens(&local), "seconds": local_s, "tokens_per_s": local_tps},
        "server": {"tokens": tokens(&served), "seconds": server_s, "tokens_per_s": server_tps},
        "server_over_local": server_tps / local_tps,
        "sync": {"export_s": export, "reload_s": reload, "mean_s": sync_s},
    });
    metaapo::atomic::write_file(
        &out.join("serving.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(())
}

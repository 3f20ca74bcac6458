//! `metaapo selftest`: the engine's computations on a device against the same computations on
//! the CPU in f32, from the same random weights, each item with its measured difference and the
//! tolerance it must meet. Run CPU against CPU it tests the code path on any machine.
//!
//! Differences are relative to the largest magnitude of the CPU's values (`max|a-b| / max|b|`),
//! so a value near zero is not judged by its own relative error.

use crate::data::batch::{collate, Padding};
use crate::data::encode::EncodedSeq;
use crate::device::check_dtype;
use crate::generate::{generate, SampleConfig, Stop};
use crate::meta::MetaConfig;
use crate::meta::MetaLearner;
use crate::model::config::ModelConfig;
use crate::model::decoder::parameter_shapes;
use crate::model::CausalLm;
use crate::objective::{dpo, DpoConfig};
use crate::reward::bert::{BertConfig, BertEncoder};
use crate::reward::bradley_terry::LinearHead;
use crate::reward::classifier::SequenceClassifier;
use crate::score::pair_logps;
use crate::train::grads::Gradients;
use crate::train::optimizer::{AdamW, AdamWConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;

/// One compared item.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub item: String,
    /// What `measured` is.
    pub metric: String,
    pub measured: f64,
    pub tolerance: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.measured <= self.tolerance
    }
}

/// Tolerances for the device's dtype. f32: the 1e-4 relative. bf16 keeps 8 significant
/// bits (unit roundoff 2^-8 = 3.9e-3); a value that went through a few dozen roundings (two
/// decoder layers, each a matmul, a norm and a softmax) is good to a few of those, so 3e-2
/// relative, and its gradients, whose errors add over both passes, to 6e-2. Parts that stay f32
/// in bf16 runs (the meta-learner, the BERT encoder) keep f32's bound.
struct Tolerances {
    values: f64,
    grads: f64,
}

fn tolerances(dtype: DType) -> Tolerances {
    match dtype {
        DType::BF16 => Tolerances {
            values: 3e-2,
            grads: 6e-2,
        },
        _ => Tolerances {
            values: F32_VALUES,
            grads: F32_VALUES,
        },
    }
}

const F32_VALUES: f64 = 1e-4;
/// The AdamW step gets the same gradients on both sides and updates f32 (master) weights on
/// both, so its bound is f32's whatever the dtype; 1e-3 of the update's norm allows for the
/// gradients' rounding to bf16 where `g / (sqrt(v) + eps)` is not yet saturated.
const STEP: f64 = 1e-3;

/// Runs every check on `device` in `dtype` against the CPU in f32; `report` sees each as it
/// finishes.
pub fn run(device: &Device, dtype: DType, report: &mut dyn FnMut(&Check)) -> Result<Vec<Check>> {
    check_dtype(device, dtype)?;
    let tol = tolerances(dtype);
    let cpu = Device::Cpu;
    let mut checks = vec![];
    let mut push = |c: Check| {
        report(&c);
        checks.push(c);
    };
    let config = decoder_config()?;
    let weights = random_decoder(&config, 1);
    let on = |dev: &Device, dt: DType, trainable: bool| -> Result<CausalLm> {
        let t = to_device(&weights, dev)?;
        CausalLm::from_tensors(config.clone(), t, "selftest weights", dt, trainable)
    };
    let (dev_model, cpu_model) = (on(device, dtype, false)?, on(&cpu, DType::F32, false)?);
    let seqs = sequences(&config, 7);

    // Logits of a right-padded batch, padding rows included (they are masked, not dropped).
    let logits = |m: &CausalLm| -> Result<Vec<f64>> {
        let rows: Vec<&[u32]> = seqs.iter().map(|s| s.ids.as_slice()).collect();
        let input = collate(&rows, PAD, Padding::Right, m.device())?;
        values(&m.forward(&input, None)?)
    };
    push(compare(
        "logits",
        &logits(&dev_model)?,
        &logits(&cpu_model)?,
        tol.values,
    ));
    let logps = |m: &CausalLm| -> Result<Vec<f64>> {
        values(&crate::score::sequence_logps(m, &seqs, PAD)?.sum)
    };
    push(compare(
        "log-probs (summed per sequence)",
        &logps(&dev_model)?,
        &logps(&cpu_model)?,
        tol.values,
    ));

    // DPO through a trainable policy and its frozen reference, then one AdamW step.
    let (chosen, rejected) = seqs.split_at(seqs.len() / 2);
    let dpo_step = |m: &CausalLm| -> Result<(Gradients, AdamW)> {
        let reference = m.frozen()?;
        let policy = pair_logps(m, chosen, rejected, PAD)?;
        let refs = pair_logps(&reference, chosen, rejected, PAD)?.detach();
        let loss = dpo(&policy, &refs, &DpoConfig::default(), None)?.loss;
        let mut grads = Gradients::new();
        grads.accumulate(loss, m.vars())?;
        let opt = AdamW::new(
            m.vars(),
            AdamWConfig {
                lr: LR,
                ..Default::default()
            },
        )?;
        Ok((grads, opt))
    };
    let (dev_train, cpu_train) = (on(device, dtype, true)?, on(&cpu, DType::F32, true)?);
    let (dev_grads, mut dev_opt) = dpo_step(&dev_train)?;
    let (cpu_grads, mut cpu_opt) = dpo_step(&cpu_train)?;
    let (mut worst, mut worst_name, mut nonzero) = (0f64, String::new(), 0);
    for ((name, dv), (_, cv)) in dev_train.vars().iter().zip(cpu_train.vars()) {
        let (Some(dg), Some(cg)) = (dev_grads.get(dv), cpu_grads.get(cv)) else {
            bail!("selftest: `{name}` got no gradient");
        };
        let (dg, cg) = (values(dg)?, values(cg)?);
        nonzero += usize::from(dg.iter().any(|&x| x != 0.0));
        let d = relative(&dg, &cg);
        if d >= worst {
            (worst, worst_name) = (d, name.clone());
        }
    }
    let vars = dev_train.vars().len();
    push(Check {
        item: format!("DPO gradients ({nonzero} of {vars} variables non-zero; worst {worst_name})"),
        metric: "max rel diff".into(),
        measured: if nonzero == vars {
            worst
        } else {
            f64::INFINITY
        },
        tolerance: tol.grads,
    });
    // The step is judged on the same input: the CPU's gradients, in the device's dtype, which
    // `Σ ⟨var, g⟩` hands to every variable exactly. (From its own gradients, AdamW's
    // `g / (|g| + eps)` would turn each tiny gradient whose sign differs into a 2·lr gap.)
    let mut injected = Tensor::zeros((), dtype, device)?;
    for ((_, dv), (_, cv)) in dev_train.vars().iter().zip(cpu_train.vars()) {
        let g = cpu_grads
            .get(cv)
            .expect("checked above")
            .to_dtype(dtype)?
            .to_device(device)?;
        injected = (injected + (dv.as_tensor() * g)?.sum_all()?)?;
    }
    let mut same_grads = Gradients::new();
    same_grads.accumulate(injected, dev_train.vars())?;
    // Each side's update from its own starting point (bf16 weights start rounded).
    let update = |opt: &mut AdamW, grads: &Gradients| -> Result<Vec<f64>> {
        let before = opt.parameters_f32()?;
        opt.step(grads, LR)?;
        let mut all = vec![];
        for ((_, b), (_, a)) in before.iter().zip(opt.parameters_f32()?) {
            all.extend(values(&(a - b)?)?);
        }
        Ok(all)
    };
    let (du, cu) = (
        update(&mut dev_opt, &same_grads)?,
        update(&mut cpu_opt, &cpu_grads)?,
    );
    push(Check {
        item: "AdamW step from the same gradients (f32 master weights)".into(),
        metric: "rel L2 diff".into(),
        measured: l2_relative(&du, &cu),
        tolerance: STEP,
    });

    push(greedy(&dev_model, &cpu_model, &config, tol.values)?);
    push(meta_learner(device)?);
    push(classifier(device, dtype, tol.values)?);
    push(bert_head(device)?);
    Ok(checks)
}

const PAD: u32 = 0;
const LR: f64 = 1e-3;
const VOCAB: usize = 256;

/// A small Llama: HF `config.json` fields, as an LM (`LlamaForCausalLM`) or a reward model.
fn decoder_json(arch: &str) -> serde_json::Value {
    json!({
        "architectures": [arch], "vocab_size": VOCAB, "hidden_size": 64,
        "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "max_position_embeddings": 128, "eos_token_id": 1,
    })
}

fn decoder_config() -> Result<ModelConfig> {
    ModelConfig::from_json(decoder_json("LlamaForCausalLM"))
}

/// Uniform weights of scale 0.1 (norms around 1): logits of a few units, like a trained model's.
fn random_decoder(config: &ModelConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    parameter_shapes(config)
        .into_iter()
        .map(|(name, shape)| {
            let norm = name.ends_with("norm.weight");
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    let u: f32 = rng.random_range(-1.0..1.0);
                    if norm {
                        1.0 + 0.2 * u
                    } else {
                        0.1 * u
                    }
                })
                .collect();
            (
                name,
                Tensor::from_vec(v, shape, &Device::Cpu).expect("shape"),
            )
        })
        .collect()
}

fn to_device(t: &HashMap<String, Tensor>, device: &Device) -> Result<HashMap<String, Tensor>> {
    t.iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(device)?)))
        .collect()
}

/// Eight sequences of 9 to 30 tokens (ids 2.., never padding or EOS), prompts of 3 to 6.
fn sequences(config: &ModelConfig, seed: u64) -> Vec<EncodedSeq> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..8)
        .map(|_| {
            let len = rng.random_range(9..=30);
            EncodedSeq {
                ids: (0..len)
                    .map(|_| rng.random_range(2..config.vocab_size as u32))
                    .collect(),
                prompt_len: rng.random_range(3..=6),
            }
        })
        .collect()
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

fn relative(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    if a.len() != b.len() || diff.is_nan() {
        return f64::INFINITY;
    }
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

fn l2_relative(a: &[f64], b: &[f64]) -> f64 {
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(&mut a.iter().zip(b).map(|(x, y)| x - y));
    let scale = norm(&mut b.iter().copied());
    if a.len() != b.len() || diff.is_nan() {
        f64::INFINITY
    } else if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

fn compare(item: &str, device: &[f64], cpu: &[f64], tolerance: f64) -> Check {
    Check {
        item: item.into(),
        metric: "max rel diff".into(),
        measured: relative(device, cpu),
        tolerance,
    }
}

/// Greedy decoding on the device, judged by the CPU: at every generated position the CPU's
/// logit for the device's token must be within the logits tolerance of the CPU's best, so
/// tokens differ only where the CPU itself has a near-tie.
fn greedy(dev: &CausalLm, cpu: &CausalLm, config: &ModelConfig, tol: f64) -> Result<Check> {
    let prompts: Vec<Vec<u32>> = sequences(config, 11)
        .into_iter()
        .map(|s| s.ids[..s.prompt_len].to_vec())
        .collect();
    let cfg = SampleConfig {
        n: 1,
        temperature: 0.0,
        max_new_tokens: 16,
        batch_size: prompts.len(),
        ..SampleConfig::default()
    };
    let run = |m: &CausalLm| generate(m, &prompts, &Stop::tokens(&[]), PAD, &cfg);
    let (on_dev, on_cpu) = (run(dev)?, run(cpu)?);
    let (mut same, mut total, mut worst) = (0, 0, 0f64);
    for ((p, d), c) in prompts.iter().zip(&on_dev).zip(&on_cpu) {
        total += d.tokens.len();
        same += d
            .tokens
            .iter()
            .zip(&c.tokens)
            .take_while(|(a, b)| a == b)
            .count();
        let full: Vec<u32> = p.iter().chain(&d.tokens).copied().collect();
        let input = collate(&[&full], PAD, Padding::Right, &Device::Cpu)?;
        let logits = cpu
            .forward(&input, None)?
            .squeeze(0)?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let scale = logits.iter().flatten().fold(0f64, |m, x| m.max(x.abs()));
        for (i, &tok) in d.tokens.iter().enumerate() {
            let row = &logits[p.len() - 1 + i];
            let best = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            worst = worst.max((best - row[tok as usize]) / scale);
        }
    }
    Ok(Check {
        item: format!("greedy generation ({same} of {total} tokens identical)"),
        metric: "max logit gap of chosen token".into(),
        measured: worst,
        tolerance: tol,
    })
}

/// Five meta-learner updates on the same buffer, then the weights it assigns: f32 on both.
fn meta_learner(device: &Device) -> Result<Check> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let n = 64;
    let mut draw =
        |lo: f64, hi: f64| -> Vec<f64> { (0..n).map(|_| rng.random_range(lo..hi)).collect() };
    let (scores, off, on) = (draw(-3.0, 3.0), draw(0.0, 2.0), draw(0.0, 2.0));
    let fit = |d: &Device| -> Result<Vec<f64>> {
        let mut m = MetaLearner::new(MetaConfig::default(), d, DType::F32)?;
        for _ in 0..5 {
            m.step(&scores, &off, &on)?;
        }
        m.weights(&scores)
    };
    Ok(compare(
        "meta-learner (weights after 5 updates)",
        &fit(device)?,
        &fit(&Device::Cpu)?,
        F32_VALUES,
    ))
}

/// The Llama sequence-classifier reward model on the same sequences.
fn classifier(device: &Device, dtype: DType, tol: f64) -> Result<Check> {
    let config = decoder_config()?;
    let mut weights = random_decoder(&config, 5);
    weights.remove("lm_head.weight");
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let score: Vec<f32> = (0..config.hidden_size)
        .map(|_| rng.random_range(-0.1..0.1))
        .collect();
    weights.insert(
        "score.weight".into(),
        Tensor::from_vec(score, (1, config.hidden_size), &Device::Cpu)?,
    );
    let seqs: Vec<Vec<u32>> = sequences(&config, 13).into_iter().map(|s| s.ids).collect();
    let rewards = |d: &Device, dt: DType| -> Result<Vec<f64>> {
        let json = decoder_json("LlamaForSequenceClassification");
        let rm = SequenceClassifier::from_tensors(&json, to_device(&weights, d)?, "selftest", dt)?;
        rm.rewards(&seqs, PAD)
    };
    Ok(compare(
        "reward model: sequence classifier",
        &rewards(device, dtype)?,
        &rewards(&Device::Cpu, DType::F32)?,
        tol,
    ))
}

/// The BERT encoder with a linear Bradley-Terry head (f32 on both: it only makes features).
fn bert_head(device: &Device) -> Result<Check> {
    let config: BertConfig = serde_json::from_value(json!({
        "vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "max_position_embeddings": 64,
    }))
    .context("selftest BERT config")?;
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut tensor = |shape: &[usize], around: f32| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| around + rng.random_range(-0.1..0.1))
            .collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
    };
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let mut weights = HashMap::new();
    let mut add = |name: String, shape: &[usize], around: f32| -> Result<()> {
        weights.insert(name, tensor(shape, around)?);
        Ok(())
    };
    add("embeddings.word_embeddings.weight".into(), &[VOCAB, h], 0.0)?;
    add(
        "embeddings.position_embeddings.weight".into(),
        &[64, h],
        0.0,
    )?;
    add(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, h],
        0.0,
    )?;
    add("embeddings.LayerNorm.weight".into(), &[h], 1.0)?;
    add("embeddings.LayerNorm.bias".into(), &[h], 0.0)?;
    for l in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", i, h),
            ("output.dense", h, i),
        ] {
            add(format!("{p}.{name}.weight"), &[out, inp], 0.0)?;
            add(format!("{p}.{name}.bias"), &[out], 0.0)?;
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(format!("{p}.{name}.weight"), &[h], 1.0)?;
            add(format!("{p}.{name}.bias"), &[h], 0.0)?;
        }
    }
    let head = tensor(&[h], 0.0)?;
    let ids: Vec<Vec<u32>> = sequences(&decoder_config()?, 17)
        .into_iter()
        .map(|s| s.ids)
        .collect();
    let types: Vec<Vec<u32>> = ids.iter().map(|s| vec![0; s.len()]).collect();
    let rewards = |d: &Device| -> Result<Vec<f64>> {
        let enc = BertEncoder::from_tensors(config.clone(), to_device(&weights, d)?)?;
        let head = LinearHead {
            weight: head.to_device(d)?,
        };
        values(&head.rewards(&enc.embed(&ids, &types)?)?)
    };
    Ok(compare(
        "reward model: BERT encoder + linear head",
        &rewards(device)?,
        &rewards(&Device::Cpu)?,
        F32_VALUES,
    ))
}

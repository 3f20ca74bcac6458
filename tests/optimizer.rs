//! The fused AdamW against a plain reference implementation and the candle-op fallback;
//! bit-identical resume; gradient accumulation and the memory its backward pass lets go of;
//! clipping; decay groups; schedules.

mod common;

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Var};
use candle_core::{DType, Tensor};
use metaapo::data::encode::EncodedSeq;
use metaapo::model::CausalLm;
use metaapo::score::sequence_logps;
use metaapo::train::grads::Gradients;
use metaapo::train::optimizer::{AdamW, AdamWConfig};
use metaapo::train::schedule::{Schedule, ScheduleKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

fn data() -> Vec<EncodedSeq> {
    vec![
        EncodedSeq {
            ids: vec![3, 4, 5, 6, 7, 2],
            prompt_len: 2,
        },
        EncodedSeq {
            ids: vec![8, 9, 10, 11, 2],
            prompt_len: 3,
        },
    ]
}

/// Negative mean response log-likelihood (SFT loss) of `seqs`.
fn nll(model: &CausalLm, seqs: &[EncodedSeq]) -> Tensor {
    sequence_logps(model, seqs, 0)
        .unwrap()
        .sum
        .mean_all()
        .unwrap()
        .neg()
        .unwrap()
}

fn snapshot(model: &CausalLm) -> HashMap<String, Vec<f32>> {
    model
        .vars()
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

fn config() -> AdamWConfig {
    AdamWConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        max_grad_norm: Some(0.5),
        ..Default::default()
    }
}

/// PyTorch's AdamW, written out plainly in f64, with clipping by the global norm.
struct Reference {
    m: HashMap<String, Vec<f64>>,
    v: HashMap<String, Vec<f64>>,
    t: i32,
}

impl Reference {
    fn step(
        &mut self,
        params: &mut HashMap<String, Vec<f64>>,
        grads: &HashMap<String, Vec<f64>>,
        decayed: &[&str],
        c: &AdamWConfig,
    ) {
        self.t += 1;
        let norm: f64 = grads.values().flatten().map(|g| g * g).sum::<f64>().sqrt();
        let clip = match c.max_grad_norm {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        for (name, p) in params.iter_mut() {
            let g = &grads[name];
            let m = self.m.entry(name.clone()).or_insert(vec![0.0; p.len()]);
            let v = self.v.entry(name.clone()).or_insert(vec![0.0; p.len()]);
            let wd = if decayed.contains(&name.as_str()) {
                c.weight_decay
            } else {
                0.0
            };
            for i in 0..p.len() {
                let gi = g[i] * clip;
                m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * gi;
                v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * gi * gi;
                let m_hat = m[i] / (1.0 - c.beta1.powi(self.t));
                let v_hat = v[i] / (1.0 - c.beta2.powi(self.t));
                p[i] = p[i] * (1.0 - c.lr * wd) - c.lr * m_hat / (v_hat.sqrt() + c.eps);
            }
        }
    }
}

#[test]
fn fused_adamw_matches_reference_and_fallback() {
    let fused_model = common::tiny_model("Qwen2ForCausalLM", false, DType::F32, true);
    let plain_model = common::tiny_model("Qwen2ForCausalLM", false, DType::F32, true);
    let mut fused = AdamW::new(fused_model.vars(), config()).unwrap();
    let mut plain = AdamW::new(
        plain_model.vars(),
        AdamWConfig {
            fused: false,
            ..config()
        },
    )
    .unwrap();
    let decayed: Vec<String> = fused.decayed().iter().map(|s| s.to_string()).collect();
    let decayed: Vec<&str> = decayed.iter().map(String::as_str).collect();
    let mut reference = Reference {
        m: HashMap::new(),
        v: HashMap::new(),
        t: 0,
    };
    let mut ref_params: HashMap<String, Vec<f64>> = snapshot(&fused_model)
        .into_iter()
        .map(|(n, v)| (n, v.into_iter().map(f64::from).collect()))
        .collect();
    for step in 0..5 {
        let mut g = Gradients::new();
        g.accumulate(nll(&fused_model, &data()), fused_model.vars())
            .unwrap();
        let grads: HashMap<String, Vec<f64>> = fused_model
            .vars()
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    g.get(v)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_vec1()
                        .unwrap(),
                )
            })
            .collect();
        let stats = fused.step(&g, 1e-2).unwrap();
        let norm: f64 = grads.values().flatten().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            (stats.grad_norm - norm).abs() < 1e-4 * norm,
            "step {step}: grad norm {} vs {norm}",
            stats.grad_norm
        );
        let mut g2 = Gradients::new();
        g2.accumulate(nll(&plain_model, &data()), plain_model.vars())
            .unwrap();
        plain.step(&g2, 1e-2).unwrap();
        reference.step(&mut ref_params, &grads, &decayed, &config());
        let (a, b) = (snapshot(&fused_model), snapshot(&plain_model));
        for (name, want) in &ref_params {
            for (i, w) in want.iter().enumerate() {
                let (x, y) = (a[name][i] as f64, b[name][i] as f64);
                assert!(
                    (x - w).abs() < 1e-5,
                    "step {step} {name}[{i}]: fused {x} vs reference {w}"
                );
                assert!(
                    (x - y).abs() < 1e-5,
                    "step {step} {name}[{i}]: fused {x} vs fallback {y}"
                );
            }
        }
    }
    assert_eq!(fused.steps(), 5);
}

#[test]
fn decay_groups_exclude_biases_and_norms() {
    let model = common::tiny_model("Qwen2ForCausalLM", false, DType::F32, true);
    let opt = AdamW::new(model.vars(), config()).unwrap();
    let decayed = opt.decayed();
    assert!(decayed.contains(&"model.layers.0.self_attn.q_proj.weight"));
    assert!(decayed.contains(&"model.embed_tokens.weight"));
    assert!(
        !decayed
            .iter()
            .any(|n| n.contains("bias") || n.contains("norm")),
        "{decayed:?}"
    );
    assert!(model.vars().iter().any(|(n, _)| n.ends_with("q_proj.bias")));
}

#[test]
fn saved_state_resumes_bit_identically() {
    let dir = std::env::temp_dir().join(format!("metaapo-opt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("optimizer.safetensors");
    let run = |model: &CausalLm, opt: &mut AdamW, steps: usize| {
        for _ in 0..steps {
            let mut g = Gradients::new();
            g.accumulate(nll(model, &data()), model.vars()).unwrap();
            opt.step(&g, 1e-2).unwrap();
        }
    };
    let model = common::tiny_model("LlamaForCausalLM", false, DType::F32, true);
    let mut opt = AdamW::new(model.vars(), config()).unwrap();
    run(&model, &mut opt, 3);
    opt.save(&path).unwrap();
    let weights_at_3 = model.frozen().unwrap();
    run(&model, &mut opt, 3);
    // A fresh model and optimizer from the step-3 weights and state.
    let tensors = weights_at_3.named_tensors().iter().cloned().collect();
    let resumed =
        CausalLm::from_tensors(model.config.clone(), tensors, "snapshot", DType::F32, true)
            .unwrap();
    let mut opt2 = AdamW::new(resumed.vars(), config()).unwrap();
    opt2.load(&path).unwrap();
    assert_eq!(opt2.steps(), 3);
    run(&resumed, &mut opt2, 3);
    assert_eq!(snapshot(&model), snapshot(&resumed), "resumed run diverged");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn accumulated_micro_batches_equal_one_batch() {
    let a = common::tiny_model("LlamaForCausalLM", true, DType::F32, true);
    let b = common::tiny_model("LlamaForCausalLM", true, DType::F32, true);
    let mut oa = AdamW::new(a.vars(), config()).unwrap();
    let mut ob = AdamW::new(b.vars(), config()).unwrap();
    let mut ga = Gradients::new();
    ga.accumulate(nll(&a, &data()), a.vars()).unwrap();
    let mut gb = Gradients::new();
    for s in data() {
        gb.accumulate(nll(&b, std::slice::from_ref(&s)), b.vars())
            .unwrap();
    }
    assert_eq!(gb.micro_batches(), 2);
    let (sa, sb) = (oa.step(&ga, 1e-2).unwrap(), ob.step(&gb, 1e-2).unwrap());
    assert!((sa.grad_norm - sb.grad_norm).abs() < 1e-5);
    let (pa, pb) = (snapshot(&a), snapshot(&b));
    for (name, x) in &pa {
        for (u, v) in x.iter().zip(&pb[name]) {
            assert!((u - v).abs() < 1e-6, "{name}: {u} vs {v}");
        }
    }
}

#[test]
fn non_finite_loss_and_empty_steps_change_nothing() {
    let model = common::tiny_model("LlamaForCausalLM", true, DType::F32, true);
    let mut opt = AdamW::new(model.vars(), config()).unwrap();
    let before = snapshot(&model);
    let mut g = Gradients::new();
    let bad = (nll(&model, &data()) * f64::NAN).unwrap();
    let err = g.accumulate(bad, model.vars()).unwrap_err().to_string();
    assert!(err.contains("NaN"), "{err}");
    assert!(opt.step(&g, 1e-2).is_err());
    assert_eq!(snapshot(&model), before);
    assert_eq!(opt.steps(), 0);
}

#[test]
fn schedules_follow_hf_formulas() {
    let s = |kind| Schedule {
        kind,
        lr: 1.0,
        warmup_steps: 10,
        total_steps: 110,
        min_lr_ratio: 0.1,
    };
    for kind in [
        ScheduleKind::Constant,
        ScheduleKind::Linear,
        ScheduleKind::Cosine,
    ] {
        assert_eq!(s(kind).lr_at(0), 0.0);
        assert_eq!(s(kind).lr_at(5), 0.5);
        assert_eq!(s(kind).lr_at(10), 1.0);
    }
    assert_eq!(s(ScheduleKind::Constant).lr_at(100), 1.0);
    // Halfway through decay: linear 0.1 + 0.9·0.5, cosine the same at the midpoint.
    assert!((s(ScheduleKind::Linear).lr_at(60) - 0.55).abs() < 1e-12);
    assert!((s(ScheduleKind::Cosine).lr_at(60) - 0.55).abs() < 1e-12);
    // A quarter in, cosine is 0.1 + 0.9·0.5·(1 + cos(π/4)).
    let q = 0.1 + 0.9 * 0.5 * (1.0 + std::f64::consts::FRAC_PI_4.cos());
    assert!((s(ScheduleKind::Cosine).lr_at(35) - q).abs() < 1e-12);
    // At and after the end: the floor.
    assert!((s(ScheduleKind::Linear).lr_at(110) - 0.1).abs() < 1e-12);
    assert!((s(ScheduleKind::Cosine).lr_at(500) - 0.1).abs() < 1e-12);
    assert_eq!(Schedule::warmup_from_ratio(61135 / 128, 0.03), 15);
    assert_eq!(Schedule::constant(3e-7).lr_at(1000), 3e-7);
}

/// The identity, gradient passed through, as a graph node. A probe (`seen` empty) sets `freed`
/// when dropped, which happens when its node is freed; an observer records in its backward
/// whether `freed` was already set.
struct Watch {
    freed: Arc<AtomicBool>,
    seen: Option<Arc<Mutex<Option<bool>>>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.seen.is_none() {
            self.freed.store(true, Ordering::SeqCst);
        }
    }
}

impl CustomOp1 for Watch {
    fn name(&self) -> &'static str {
        "watch"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(v), Some((a, b))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("contiguous f32 only");
        };
        Ok((CpuStorage::F32(v[a..b].to_vec()), l.shape().clone()))
    }
    fn bwd(&self, _: &Tensor, _: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if let Some(seen) = &self.seen {
            *seen.lock().unwrap() = Some(self.freed.load(Ordering::SeqCst));
        }
        Ok(Some(g.clone()))
    }
}

/// Like PyTorch, the backward pass frees a forward value once the nodes that read it are done,
/// not after the whole pass (vendor/candle-core/PATCHED.md). In `sum(probe(observe(w)) * v)`
/// the probe's output is read by the product, whose gradient for `v` is computed from it: it
/// must be freed before the pass reaches `observe`, although a stored gradient was made from it.
#[test]
fn backward_frees_a_forward_value_once_its_readers_are_done() {
    let (freed, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(None)));
    let w = Var::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
    let v = Var::new(&[0.5f32, -1., 2.], &Device::Cpu).unwrap();
    let vars = [("w".to_string(), w.clone()), ("v".to_string(), v.clone())];
    let y = w
        .as_tensor()
        .apply_op1(Watch {
            freed: freed.clone(),
            seen: Some(seen.clone()),
        })
        .unwrap()
        .apply_op1(Watch {
            freed: freed.clone(),
            seen: None,
        })
        .unwrap();
    let loss = (y * v.as_tensor()).unwrap().sum_all().unwrap();
    let mut g = Gradients::new();
    g.accumulate(loss, &vars).unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        Some(true),
        "the probe's node outlived its readers"
    );
    let grad = |var: &Var| g.get(var).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(grad(&w), [0.5, -1., 2.]);
    assert_eq!(grad(&v), [1., 2., 3.]);
}

//! train: the optimizer (fused AdamW with a learning-rate schedule and gradient accumulation)
//! and checkpoints. `opt.step(loss)` backpropagates; every `accumulate` calls it updates the
//! weights and returns `#{ grad_norm, learning_rate }` (an empty map while accumulating).

use super::api_meta::Learner;
use super::api_model::{in_run, Policy};
use super::api_report::{from_json, to_json};
use super::api_tensor::Tensor;
use super::opts::{number, Opts};
use super::registry::{error, fail, Family, Res};
use super::run::Run;
use crate::meta::MetaLearner;
use crate::model::hf;
use crate::train::checkpoint::{self, RngState, TrainerState};
use crate::train::grads::Gradients;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::schedule::{Schedule, ScheduleKind};
use rhai::{Array, Dynamic, Map};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

pub struct OptimizerInner {
    adamw: AdamW,
    schedule: Schedule,
    grads: Gradients,
    accumulate: usize,
    policy: Policy,
}

#[derive(Clone)]
pub struct Optimizer(pub Rc<RefCell<OptimizerInner>>);

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Optimizer(AdamW, {} steps)",
            self.0.borrow().adamw.steps()
        )
    }
}

fn build(policy: Policy, opts: &Map) -> Res<Optimizer> {
    if !policy.0.model.is_trainable() {
        return Err(error(
            "optimizer: the policy is frozen; pass a trainable policy",
        ));
    }
    let o = Opts::new("optimizer options", opts);
    let defaults = AdamWConfig::default();
    let lr = o.f64("lr", defaults.lr)?;
    let (beta1, beta2) = match o.get("betas") {
        None => (defaults.beta1, defaults.beta2),
        Some(v) => {
            let pair = v
                .read_lock::<Array>()
                .and_then(|a| (a.len() == 2).then(|| (number(&a[0]), number(&a[1]))));
            match pair {
                Some((Some(a), Some(b))) => (a, b),
                _ => return Err(error("optimizer options: `betas` must be [beta1, beta2]")),
            }
        }
    };
    let clip = o.f64("clip", 1.0)?;
    let config = AdamWConfig {
        lr,
        beta1,
        beta2,
        eps: o.f64("eps", defaults.eps)?,
        weight_decay: o.f64("weight_decay", defaults.weight_decay)?,
        max_grad_norm: (clip != 0.0).then_some(clip),
        ..defaults
    };
    let kind = match o.string("schedule", "constant")?.as_str() {
        "constant" => ScheduleKind::Constant,
        "linear" => ScheduleKind::Linear,
        "cosine" => ScheduleKind::Cosine,
        other => {
            return Err(error(format!(
                "optimizer options: schedule {other:?} is not one of constant, linear, cosine"
            )))
        }
    };
    let total_steps = o.usize("total_steps", 0)? as u64;
    if kind != ScheduleKind::Constant && total_steps == 0 {
        return Err(error(
            "optimizer options: a decaying schedule needs `total_steps`",
        ));
    }
    let warmup = o.f64("warmup", 0.0)?;
    let min_lr_ratio = o.f64("min_lr_ratio", 0.0)?;
    for (key, v) in [("warmup", warmup), ("min_lr_ratio", min_lr_ratio)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(error(format!(
                "optimizer options: `{key}` is a fraction in [0, 1], got {v}"
            )));
        }
    }
    let schedule = Schedule {
        kind,
        lr,
        warmup_steps: Schedule::warmup_from_ratio(total_steps, warmup),
        total_steps,
        min_lr_ratio,
    };
    let accumulate = o.usize("accumulate", 1)?.max(1);
    o.finish()?;
    let adamw = AdamW::new(policy.0.model.vars(), config).map_err(fail("optimizer"))?;
    Ok(Optimizer(Rc::new(RefCell::new(OptimizerInner {
        adamw,
        schedule,
        grads: Gradients::new(),
        accumulate,
        policy,
    }))))
}

fn step(opt: &Optimizer, loss: &Tensor) -> Res<Map> {
    let mut o = opt.0.borrow_mut();
    let o = &mut *o;
    o.grads
        .accumulate(&loss.0, o.policy.0.model.vars())
        .map_err(fail("step"))?;
    if o.grads.micro_batches() < o.accumulate {
        return Ok(Map::new());
    }
    let lr = o.schedule.lr_at(o.adamw.steps());
    let stats = o.adamw.step(&o.grads, lr);
    o.grads.clear();
    let stats = stats.map_err(fail("step"))?;
    let mut m = Map::new();
    m.insert("grad_norm".into(), Dynamic::from_float(stats.grad_norm));
    m.insert("learning_rate".into(), Dynamic::from_float(stats.lr));
    Ok(m)
}

pub fn register(api: &mut Family, run: &Rc<Run>) {
    api.ty::<Optimizer>("Optimizer");
    api.func(
        "optimizer",
        "(policy: Policy, options: Map) -> Optimizer",
        "AdamW over the policy: lr, betas, eps, weight_decay, clip (1.0; 0 = off), schedule (constant|linear|cosine), warmup (ratio), total_steps, min_lr_ratio, accumulate.",
        |p: Policy, opts: Map| build(p, &opts),
    );
    api.func(
        "step",
        "(opt: Optimizer, loss: Tensor) -> Map",
        "Backpropagates loss; updates every `accumulate` calls and returns grad_norm and learning_rate.",
        |o: &mut Optimizer, loss: Tensor| step(o, &loss),
    );
    api.getter(
        "Optimizer",
        "steps",
        "int",
        "Optimizer updates so far.",
        |o: &mut Optimizer| o.0.borrow().adamw.steps() as i64,
    );
    let r = run.clone();
    api.func(
        "checkpoint",
        "(opt: Optimizer, name: String) -> String",
        "Writes the policy (HF dir), optimizer state, RNG and annotation count to checkpoints/<name> in the run directory, atomically.",
        move |o: &mut Optimizer, name: &str| save(&r, o, name, &Map::new()),
    );
    let r = run.clone();
    api.func(
        "checkpoint",
        "(opt: Optimizer, name: String, state: Map) -> String",
        "checkpoint(name) plus `state`: MetaLearner values are saved beside it, other values (numbers, strings, arrays, maps) in trainer_state.json; resume() gives them back.",
        move |o: &mut Optimizer, name: &str, state: Map| save(&r, o, name, &state),
    );
    let r = run.clone();
    api.func(
        "resume",
        "(path: String, opt: Optimizer) -> Map",
        "Restores the policy weights, optimizer, RNG and annotation count from a checkpoint, or from a run directory's latest one; returns the checkpoint's state map.",
        move |path: &str, o: Optimizer| resume(&r, Path::new(path), &o),
    );
}

const ANNOTATIONS: &str = "online/annotations";

fn save(run: &Run, opt: &Optimizer, name: &str, extra: &Map) -> Res<String> {
    checkpoint::check_name(name).map_err(fail("checkpoint"))?;
    let o = opt.0.borrow();
    let mut learners = Vec::new();
    let mut counters = serde_json::Map::new();
    for (key, value) in extra {
        match value.clone().try_cast::<Learner>() {
            Some(l) => learners.push((key.to_string(), l)),
            None => {
                counters.insert(key.to_string(), to_json(value));
            }
        }
    }
    counters.insert(ANNOTATIONS.into(), run.annotations.get().into());
    let dir = in_run(run, &format!("checkpoints/{name}")).map_err(fail("checkpoint"))?;
    let state = TrainerState {
        global_step: o.adamw.steps(),
        rng: RngState::capture(&run.rng.borrow()),
        counters,
        meta_learners: learners.iter().map(|(k, _)| k.clone()).collect(),
    };
    let write_learners = |tmp: &Path| -> anyhow::Result<()> {
        for (key, l) in &learners {
            let sub = tmp.join(key);
            std::fs::create_dir_all(&sub)?;
            l.0.borrow().save(&sub)?;
        }
        Ok(())
    };
    let model = &o.policy.0.model;
    checkpoint::save(
        &dir,
        model,
        Some(&o.policy.0.tokenizer),
        &o.adamw,
        &state,
        &write_learners,
    )
    .map_err(fail("checkpoint"))?;
    Ok(dir.display().to_string())
}

fn resume(run: &Run, path: &Path, opt: &Optimizer) -> Res<Map> {
    let load = || -> anyhow::Result<Map> {
        let dir = checkpoint::latest(path)?;
        let state = checkpoint::load_state(&dir)?;
        let mut o = opt.0.borrow_mut();
        let device = o.policy.0.model.device().clone();
        let (saved, _) = hf::load(&dir, &device, o.policy.0.model.dtype(), false)?;
        o.policy.0.model.assign(&saved)?;
        o.adamw.load(&dir.join(checkpoint::OPTIMIZER))?;
        *run.rng.borrow_mut() = state.rng.restore()?;
        if let Some(n) = state.counters.get(ANNOTATIONS).and_then(|v| v.as_u64()) {
            run.annotations.set(n);
        }
        let mut out = Map::new();
        for (key, value) in &state.counters {
            out.insert(key.into(), from_json(value)?);
        }
        for key in &state.meta_learners {
            let l = MetaLearner::load(&dir.join(key), &device)?;
            out.insert(key.into(), Dynamic::from(Learner(Rc::new(RefCell::new(l)))));
        }
        out.insert("checkpoint".into(), dir.display().to_string().into());
        Ok(out)
    };
    let out = load().map_err(fail("resume"))?;
    run.print(&format!("resumed from {}", out["checkpoint"]));
    Ok(out)
}

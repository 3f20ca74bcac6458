//! train: the optimizer (fused AdamW with a learning-rate schedule and gradient accumulation)
//! and checkpoints. `opt.step(loss)` backpropagates; every `accumulate` calls it updates the
//! weights and returns `#{ grad_norm, learning_rate }` (an empty map while accumulating).

use super::api_model::{in_run, Policy};
use super::api_tensor::Tensor;
use super::opts::{number, Opts};
use super::registry::{error, fail, Family, Res};
use super::run::Run;
use crate::train::checkpoint::{self, RngState, TrainerState};
use crate::train::grads::Gradients;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::schedule::{Schedule, ScheduleKind};
use rhai::{Array, Dynamic, Map};
use std::cell::RefCell;
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
        max_grad_norm: (clip > 0.0).then_some(clip),
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
    let schedule = Schedule {
        kind,
        lr,
        warmup_steps: Schedule::warmup_from_ratio(total_steps, warmup),
        total_steps,
        min_lr_ratio: o.f64("min_lr_ratio", 0.0)?,
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
        "Writes the policy (HF dir), optimizer state and RNG to checkpoints/<name> in the run directory, atomically.",
        move |o: &mut Optimizer, name: &str| -> Res<String> {
            let o = o.0.borrow();
            let dir = in_run(&r, &format!("checkpoints/{name}")).map_err(fail("checkpoint"))?;
            let state = TrainerState {
                global_step: o.adamw.steps(),
                rng: RngState::capture(&r.rng.borrow()),
                counters: Default::default(),
            };
            checkpoint::save(&dir, &o.policy.0.model, Some(&o.policy.0.tokenizer), &o.adamw, &state)
                .map_err(fail("checkpoint"))?;
            Ok(dir.display().to_string())
        },
    );
}

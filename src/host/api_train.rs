//! train: the optimizer (fused AdamW with a learning-rate schedule and gradient accumulation)
//! and checkpoints. `opt.step(loss)` backpropagates; every `accumulate` calls it updates the
//! weights and returns `#{ grad_norm, learning_rate }` (an empty map while accumulating).

use super::api_tensor::Tensor;
use super::opts::{defaults, Opts};
use super::registry::{error, fail, Family, Res};
use super::run::Run;
use super::types::{Learner, Optimizer, OptimizerInner};
use super::values::{from_json, to_json};
use crate::meta::MetaLearner;
use crate::model::hf;
use crate::policy::Policy;
use crate::train::checkpoint::{self, RngState, TrainerState};
use crate::train::TrainerConfig;
use rhai::{Dynamic, Map};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

fn build(policy: Policy, opts: &Map) -> Res<Optimizer> {
    if !policy.model().is_trainable() {
        return Err(error(
            "optimizer: the policy is frozen; pass a trainable policy",
        ));
    }
    let o = Opts::new("optimizer options", opts);
    let config: TrainerConfig = o.config()?;
    o.finish()?;
    let trainer = config
        .trainer(policy.model().vars())
        .map_err(fail("optimizer"))?;
    Ok(Optimizer(Rc::new(RefCell::new(OptimizerInner {
        trainer,
        policy,
    }))))
}

fn step(opt: &Optimizer, loss: Tensor) -> Res<Map> {
    let mut m = Map::new();
    let mut inner = opt.0.borrow_mut();
    if let Some(stats) = inner.trainer.step(loss.0).map_err(fail("step"))? {
        inner.policy.mark_updated();
        m.insert("grad_norm".into(), Dynamic::from_float(stats.grad_norm));
        m.insert("learning_rate".into(), Dynamic::from_float(stats.lr));
    }
    Ok(m)
}

pub fn register(api: &mut Family, run: &Rc<Run>) {
    api.ty::<Optimizer>("Optimizer");
    api.func(
        "optimizer",
        "(policy: Policy, options: Map) -> Optimizer",
        &format!(
            "AdamW over the policy with a learning-rate schedule (constant, linear or cosine; warmup a fraction of total_steps) and gradient accumulation; clip 0 is off. Options: {}.",
            defaults::<TrainerConfig>()
        ),
        |p: Policy, opts: Map| build(p, &opts),
    );
    api.func(
        "step",
        "(opt: Optimizer, loss: Tensor) -> Map",
        "Backpropagates loss; updates every `accumulate` calls and returns grad_norm and learning_rate.",
        |o: &mut Optimizer, loss: Tensor| step(o, loss),
    );
    api.getter(
        "Optimizer",
        "steps",
        "int",
        "Optimizer updates so far.",
        |o: &mut Optimizer| o.0.borrow().trainer.steps() as i64,
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
    let dir = run
        .output(&format!("checkpoints/{name}"))
        .map_err(fail("checkpoint"))?;
    let state = TrainerState {
        global_step: o.trainer.steps(),
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
    checkpoint::save(
        &dir,
        o.policy.model(),
        Some(o.policy.tokenizer()),
        o.trainer.optimizer(),
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
        let o = &mut *o;
        let model = o.policy.model();
        let device = model.device().clone();
        // A LoRA policy's checkpoint holds its adapter only (as PEFT saves it).
        let saved = if model.lora().is_some() {
            model.with_adapter_dir(&dir)?
        } else {
            hf::load(&dir, &device, model.dtype(), false)?.0
        };
        model.assign(&saved)?;
        o.policy.mark_updated();
        o.trainer
            .optimizer_mut()
            .load(&dir.join(checkpoint::OPTIMIZER))?;
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

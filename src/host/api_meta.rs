//! meta: MetaAPO's meta-learner as scripts hold it (`meta_learner`, `weights`, `fit`) and the
//! meta-buffer of detached `(score, offline loss, online loss)` triples it is fitted on.

use super::api_tensor::numbers;
use super::opts::Opts;
use super::registry::{error, fail, Family, Res};
use super::run::Run;
use super::types::{Learner, MetaBuffer};
use crate::meta::{self, MetaConfig, MetaInit, MetaLearner};
use candle_core::DType;
use rhai::{Array, Dynamic, Map};
use std::cell::RefCell;
use std::rc::Rc;

fn build(run: &Run, opts: &Map) -> Res<Learner> {
    let o = Opts::new("meta_learner options", opts);
    let d = MetaConfig::default();
    let init = match o.string("init", "standard")?.as_str() {
        "standard" => MetaInit::Standard,
        "reference" => MetaInit::Reference,
        other => {
            return Err(error(format!(
                "meta_learner options: init {other:?} is not \"standard\" or \"reference\""
            )))
        }
    };
    let clip = o.f64("clip", d.max_grad_norm.unwrap_or(0.0))?;
    let config = MetaConfig {
        hidden: o.usize("hidden", d.hidden)?,
        init,
        seed: o.usize("seed", run.options.seed as usize)? as u64,
        lr: o.f64("lr", d.lr)?,
        weight_decay: o.f64("weight_decay", d.weight_decay)?,
        betas: d.betas,
        max_grad_norm: (clip > 0.0).then_some(clip),
    };
    o.finish()?;
    MetaLearner::new(config, &run.options.device, DType::F32)
        .map(|l| Learner(Rc::new(RefCell::new(l))))
        .map_err(fail("meta_learner"))
}

fn fit(learner: &Learner, buffer: &MetaBuffer) -> Res<Map> {
    let mut b = buffer.0.borrow_mut();
    let size = b.len();
    let mut m = Map::new();
    let Some(stats) = learner.0.borrow_mut().fit(&mut b).map_err(fail("fit"))? else {
        return Ok(m);
    };
    for (k, v) in [
        ("meta/loss", stats.loss),
        ("meta/grad_norm", stats.grad_norm),
        ("meta/mean_weight", stats.mean_weight),
    ] {
        m.insert(k.into(), Dynamic::from_float(v));
    }
    m.insert("meta/buffer".into(), Dynamic::from_int(size as i64));
    Ok(m)
}

fn column(v: &[f64]) -> Dynamic {
    v.iter()
        .map(|x| Dynamic::from_float(*x))
        .collect::<Array>()
        .into()
}

pub fn register(api: &mut Family, run: &Rc<Run>) {
    api.ty::<Learner>("MetaLearner");
    api.ty::<MetaBuffer>("MetaBuffer");
    let r = run.clone();
    api.func(
        "meta_learner",
        "(options: Map) -> MetaLearner",
        &{
            let d = MetaConfig::default();
            format!(
                "MetaAPO's 1 -> hidden -> 1 MLP (tanh, sigmoid). Options: hidden ({}), init (\"standard\": seeded | \"reference\": weights 0.1, biases 0), seed (--seed), lr ({}), weight_decay ({}, not biases), clip ({}; 0 = off).",
                d.hidden, d.lr, d.weight_decay, d.max_grad_norm.unwrap_or(0.0)
            )
        },
        move |opts: Map| build(&r, &opts),
    );
    api.func(
        "weights",
        "(learner: MetaLearner, scores: Array) -> Array",
        "w = h(s) in (0, 1) for preference scores s = log σ(β_in·Δ) (array or tensor); plain so no gradient reaches the learner.",
        |l: &mut Learner, scores: Dynamic| -> Res<rhai::Array> {
            let s = numbers(&scores, "weights: scores")?;
            let w = l.0.borrow().weights(&s).map_err(fail("weights"))?;
            Ok(w.into_iter().map(Dynamic::from_float).collect())
        },
    );
    api.func(
        "fit",
        "(learner: MetaLearner, buffer: MetaBuffer) -> Map",
        "One meta step on mean[h(s)·ℓ_off + (1 - h(s))·ℓ_on] over the buffer, which is then cleared; returns meta/loss, meta/grad_norm, meta/mean_weight, meta/buffer (an empty map, and no step, for an empty buffer).",
        |l: &mut Learner, b: MetaBuffer| fit(l, &b),
    );
    api.getter(
        "MetaLearner",
        "steps",
        "int",
        "Meta updates so far.",
        |l: &mut Learner| l.0.borrow().steps() as i64,
    );
    api.func(
        "meta_buffer",
        "() -> MetaBuffer",
        "An empty meta-buffer.",
        MetaBuffer::default,
    );
    api.func(
        "push",
        "(buffer: MetaBuffer, scores: Array, offline_losses: Array, online_losses: Array) -> ()",
        "Adds detached (s, ℓ_off, ℓ_on) per example (arrays or tensors of one length).",
        |b: &mut MetaBuffer, s: Dynamic, off: Dynamic, on: Dynamic| -> Res<()> {
            let s = numbers(&s, "push: scores")?;
            let off = numbers(&off, "push: offline_losses")?;
            let on = numbers(&on, "push: online_losses")?;
            b.0.borrow_mut().push(&s, &off, &on).map_err(fail("push"))
        },
    );
    api.getter(
        "MetaBuffer",
        "contents",
        "Map",
        "#{ scores, offline, online }: the buffered columns, for a checkpoint's state.",
        |b: &mut MetaBuffer| -> Map {
            let b = b.0.borrow();
            Map::from([
                ("scores".into(), column(&b.scores)),
                ("offline".into(), column(&b.offline)),
                ("online".into(), column(&b.online)),
            ])
        },
    );
    api.func(
        "meta_buffer",
        "(contents: Map) -> MetaBuffer",
        "A meta-buffer holding `contents` (from buffer.contents, as resume() returns it).",
        |m: Map| -> Res<MetaBuffer> {
            let col = |key: &str| -> Res<Vec<f64>> {
                let v = m
                    .get(key)
                    .ok_or_else(|| error(format!("meta_buffer: contents have no `{key}`")))?;
                numbers(v, &format!("meta_buffer: `{key}`"))
            };
            let b = meta::MetaBuffer {
                scores: col("scores")?,
                offline: col("offline")?,
                online: col("online")?,
            };
            b.validate().map_err(fail("meta_buffer"))?;
            Ok(MetaBuffer(Rc::new(RefCell::new(b))))
        },
    );
    api.getter(
        "MetaBuffer",
        "len",
        "int",
        "Examples in the buffer.",
        |b: &mut MetaBuffer| b.0.borrow().len() as i64,
    );
}

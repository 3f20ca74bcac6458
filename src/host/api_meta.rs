//! meta: MetaAPO's meta-learner as scripts hold it (`meta_learner`, `weights`, `fit`) and the
//! meta-buffer of detached `(score, offline loss, online loss)` triples it is fitted on.

use super::api_tensor::numbers;
use super::opts::Opts;
use super::registry::{error, fail, Family, Res};
use super::run::Run;
use crate::meta::{MetaConfig, MetaInit, MetaLearner};
use candle_core::DType;
use rhai::{Dynamic, Map};
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Clone)]
pub struct Learner(pub Rc<RefCell<MetaLearner>>);

impl std::fmt::Display for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = self.0.borrow();
        write!(
            f,
            "MetaLearner(1 -> {} -> 1, {:?} init, {} updates)",
            l.config.hidden,
            l.config.init,
            l.steps()
        )
    }
}

/// Detached `(s, ℓ_off, ℓ_on)` of the trained examples since the last meta update.
#[derive(Clone, Default)]
pub struct MetaBuffer(Rc<RefCell<[Vec<f64>; 3]>>);

impl std::fmt::Display for MetaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MetaBuffer({} examples)", self.0.borrow()[0].len())
    }
}

const COLUMNS: [&str; 3] = ["scores", "offline", "online"];

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
    let mut m = Map::new();
    if b[0].is_empty() {
        return Ok(m);
    }
    let stats = learner
        .0
        .borrow_mut()
        .step(&b[0], &b[1], &b[2])
        .map_err(fail("fit"))?;
    let size = b[0].len();
    b.iter_mut().for_each(Vec::clear);
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

pub fn register(api: &mut Family, run: &Rc<Run>) {
    api.ty::<Learner>("MetaLearner");
    api.ty::<MetaBuffer>("MetaBuffer");
    let r = run.clone();
    api.func(
        "meta_learner",
        "(options: Map) -> MetaLearner",
        "MetaAPO's 1 -> hidden -> 1 MLP (tanh, sigmoid): hidden (100), init (\"standard\" seeded | \"reference\": weights 0.1, biases 0), seed (--seed), lr (5e-3), weight_decay (1e-4, not biases), clip (1.0; 0 = off).",
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
            let cols = [
                numbers(&s, "push: scores")?,
                numbers(&off, "push: offline_losses")?,
                numbers(&on, "push: online_losses")?,
            ];
            if cols[1].len() != cols[0].len() || cols[2].len() != cols[0].len() {
                return Err(error(format!(
                    "push: {} scores, {} offline and {} online losses (need one each)",
                    cols[0].len(),
                    cols[1].len(),
                    cols[2].len()
                )));
            }
            let mut inner = b.0.borrow_mut();
            for (dst, src) in inner.iter_mut().zip(cols) {
                dst.extend(src);
            }
            Ok(())
        },
    );
    api.getter(
        "MetaBuffer",
        "contents",
        "Map",
        "#{ scores, offline, online }: the buffered columns, for a checkpoint's state.",
        |b: &mut MetaBuffer| -> Map {
            let inner = b.0.borrow();
            COLUMNS
                .iter()
                .zip(inner.iter())
                .map(|(k, v)| {
                    (
                        (*k).into(),
                        v.iter()
                            .map(|x| Dynamic::from_float(*x))
                            .collect::<rhai::Array>()
                            .into(),
                    )
                })
                .collect()
        },
    );
    api.func(
        "meta_buffer",
        "(contents: Map) -> MetaBuffer",
        "A meta-buffer holding `contents` (from buffer.contents, as resume() returns it).",
        |m: Map| -> Res<MetaBuffer> {
            let b = MetaBuffer::default();
            for (dst, key) in b.0.borrow_mut().iter_mut().zip(COLUMNS) {
                let col = m
                    .get(key)
                    .ok_or_else(|| error(format!("meta_buffer: contents have no `{key}`")))?;
                *dst = numbers(col, &format!("meta_buffer: `{key}`"))?;
            }
            let lens: Vec<usize> = b.0.borrow().iter().map(Vec::len).collect();
            if lens[1] != lens[0] || lens[2] != lens[0] {
                return Err(error(format!("meta_buffer: columns of lengths {lens:?}")));
            }
            Ok(b)
        },
    );
    api.getter(
        "MetaBuffer",
        "len",
        "int",
        "Examples in the buffer.",
        |b: &mut MetaBuffer| b.0.borrow()[0].len() as i64,
    );
}

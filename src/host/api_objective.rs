//! objective: the built-in preference losses over a `score(...)` map. Each accepts per-pair
//! `weights` (a tensor or an array; the loss is sum(w·l)/N) and returns `#{ loss, losses,
//! metrics }`: the scalar loss, the per-pair losses and TRL-named metrics for `log`.

use super::api_tensor::{numbers, Tensor};
use super::opts::Opts;
use super::registry::{error, fail, Family, Res};
use crate::objective::{self, DpoConfig, KtoConfig, LossOutput, SelmConfig, SimpoConfig};
use crate::score::{PairLogps, SeqLogps};
use rhai::{Dynamic, Map};

fn tensor(s: &Map, key: &str, what: &str) -> Res<candle_core::Tensor> {
    s.get(key)
        .and_then(|v| v.clone().try_cast::<Tensor>())
        .map(|t| t.0)
        .ok_or_else(|| {
            error(format!(
                "{what}: the scores map has no tensor `{key}` (pass the result of score())"
            ))
        })
}

fn pair(s: &Map, prefix: &str, what: &str) -> Res<PairLogps> {
    let seq = |side: &str| -> Res<SeqLogps> {
        Ok(SeqLogps {
            sum: tensor(s, &format!("{prefix}{side}"), what)?,
            mean: tensor(s, &format!("{prefix}{side}_mean"), what)?,
            lengths: vec![],
        })
    };
    Ok(PairLogps {
        chosen: seq("chosen")?,
        rejected: seq("rejected")?,
    })
}

fn weights(o: &Opts) -> Res<Option<candle_core::Tensor>> {
    match o.get("weights") {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) => {
            if let Some(t) = v.clone().try_cast::<Tensor>() {
                return Ok(Some(t.0));
            }
            let vals = numbers(v, "`weights`")?;
            Tensor::from_values(&vals, &candle_core::Device::Cpu)
                .map(|t| Some(t.0))
                .map_err(fail("weights"))
        }
    }
}

fn output(out: LossOutput) -> Res<Map> {
    let mut m = Map::new();
    m.insert("loss".into(), Dynamic::from(Tensor(out.loss)));
    m.insert("losses".into(), Dynamic::from(Tensor(out.per_example)));
    let metrics: Map = out
        .metrics
        .into_iter()
        .map(|(k, v)| (k.into(), Dynamic::from_float(v)))
        .collect();
    m.insert("metrics".into(), metrics.into());
    Ok(m)
}

/// Moves weights to the scores' device.
fn on_device(
    w: Option<candle_core::Tensor>,
    like: &candle_core::Tensor,
) -> Res<Option<candle_core::Tensor>> {
    w.map(|w| {
        w.to_device(like.device())
            .map_err(|e| fail("weights")(e.into()))
    })
    .transpose()
}

fn pairwise(name: &'static str, s: &Map, opts: &Map) -> Res<Map> {
    let what = format!("{name} options");
    let o = Opts::new(&what, opts);
    let w = weights(&o)?;
    let out = match name {
        "dpo" | "cdpo" => {
            let cfg = DpoConfig {
                beta: o.f64("beta", 0.1)?,
                label_smoothing: o.f64("label_smoothing", 0.0)?,
                rpo_alpha: o.opt_f64("rpo_alpha")?,
            };
            o.finish()?;
            let pol = pair(s, "", name)?;
            let w = on_device(w, &pol.chosen.sum)?;
            objective::dpo(&pol, &pair(s, "ref_", name)?, &cfg, w.as_ref())
        }
        "ipo" => {
            let beta = o.f64("beta", 0.1)?;
            o.finish()?;
            let pol = pair(s, "", name)?;
            let w = on_device(w, &pol.chosen.sum)?;
            objective::ipo(&pol, &pair(s, "ref_", name)?, beta, w.as_ref())
        }
        "simpo" => {
            let cfg = SimpoConfig {
                beta: o.f64("beta", 2.5)?,
                gamma: o.f64("gamma", 0.6)?,
            };
            o.finish()?;
            let pol = pair(s, "", name)?;
            let w = on_device(w, &pol.chosen.sum)?;
            objective::simpo(&pol, &cfg, w.as_ref())
        }
        other => return Err(error(format!("unknown pairwise objective {other:?}"))),
    };
    output(out.map_err(fail(name))?)
}

fn selm(s: &Map, policy_yref: &Tensor, reference_yref: &Tensor, opts: &Map) -> Res<Map> {
    let o = Opts::new("selm options", opts);
    let w = weights(&o)?;
    let d = SelmConfig::default();
    let cfg = SelmConfig {
        beta: o.f64("beta", d.beta)?,
        alpha: o.f64("alpha", d.alpha)?,
    };
    o.finish()?;
    let pol = pair(s, "", "selm")?;
    let w = on_device(w, &pol.chosen.sum)?;
    let reference_yref = reference_yref
        .0
        .to_dtype(policy_yref.0.dtype())
        .map_err(|e| fail("selm")(e.into()))?;
    let out = objective::selm(
        &pol,
        &pair(s, "ref_", "selm")?,
        &policy_yref.0,
        &reference_yref,
        &cfg,
        w.as_ref(),
    );
    output(out.map_err(fail("selm"))?)
}

/// KTO over pairs: each pair gives a desirable (chosen) and an undesirable (rejected) example;
/// `kl` scores the mismatched pairs for z0. A pair's loss (and weight) covers both its examples.
fn kto(s: &Map, kl: &Map, opts: &Map) -> Res<Map> {
    let o = Opts::new("kto options", opts);
    let w = weights(&o)?;
    let d = KtoConfig::default();
    let cfg = KtoConfig {
        beta: o.f64("beta", d.beta)?,
        desirable_weight: o.f64("desirable_weight", d.desirable_weight)?,
        undesirable_weight: o.f64("undesirable_weight", d.undesirable_weight)?,
    };
    o.finish()?;
    let both = |m: &Map, prefix: &str| -> Res<candle_core::Tensor> {
        let c = tensor(m, &format!("{prefix}chosen"), "kto")?;
        let r = tensor(m, &format!("{prefix}rejected"), "kto")?;
        let r = r.to_dtype(c.dtype()).map_err(|e| fail("kto")(e.into()))?;
        candle_core::Tensor::cat(&[&c, &r], 0).map_err(|e| fail("kto")(e.into()))
    };
    let policy = both(s, "")?;
    let n = policy.dim(0).map_err(|e| fail("kto")(e.into()))? / 2;
    let desirable: Vec<bool> = (0..2 * n).map(|i| i < n).collect();
    let w = on_device(w, &policy)?
        .map(|w| candle_core::Tensor::cat(&[&w, &w], 0))
        .transpose()
        .map_err(|e| fail("kto")(e.into()))?;
    let (reference, kl_policy, kl_reference) = (both(s, "ref_")?, both(kl, "")?, both(kl, "ref_")?);
    let run = || -> anyhow::Result<LossOutput> {
        let mut out = objective::kto(
            &policy,
            &reference.to_dtype(policy.dtype())?,
            &desirable,
            &kl_policy,
            &kl_reference.to_dtype(policy.dtype())?,
            &cfg,
            w.as_ref(),
        )?;
        let per = &out.per_example;
        out.per_example = ((per.narrow(0, 0, n)? + per.narrow(0, n, n)?)? * 0.5)?;
        Ok(out)
    };
    output(run().map_err(fail("kto"))?)
}

pub fn register(api: &mut Family) {
    api.func(
        "selm",
        "(scores: Map, policy_yref: Tensor, reference_yref: Tensor, options: Map) -> Map",
        "SELM: DPO plus α·β·[π(y_ref) - ref(y_ref)] (summed log-probs of the reference's greedy response); options beta (0.01), alpha (1e-4), weights.",
        |s: Map, p: Tensor, r: Tensor, o: Map| selm(&s, &p, &r, &o),
    );
    api.func(
        "kto",
        "(scores: Map, kl_scores: Map, options: Map) -> Map",
        "KTO on pairs (chosen desirable, rejected undesirable); kl_scores = score(policy, reference, pairs.mismatched()) for z0; options beta (0.1), desirable_weight, undesirable_weight, weights (per pair). losses are per pair (mean of its two).",
        |s: Map, kl: Map, o: Map| kto(&s, &kl, &o),
    );
    let docs: [(&'static str, &str); 4] = [
        ("dpo", "DPO -log σ(βΔ); options beta (0.1), label_smoothing (cDPO ε), rpo_alpha (RPO: adds α·NLL(chosen)/|chosen| per pair; off), weights (per pair: loss = mean(w·ℓ) over the batch, not a weighted mean)."),
        ("cdpo", "Conservative DPO: dpo with label_smoothing ε (options beta, label_smoothing, weights)."),
        ("ipo", "IPO (Δ - 1/(2β))²; options beta (0.1), weights."),
        ("simpo", "SimPO on mean log-probs, no reference; options beta (2.5), gamma (0.6), weights."),
    ];
    for (name, doc) in docs {
        api.func(
            name,
            "(scores: Map, options: Map) -> Map",
            doc,
            move |s: Map, o: Map| pairwise(name, &s, &o),
        );
        api.func(name, "(scores: Map) -> Map", doc, move |s: Map| {
            pairwise(name, &s, &Map::new())
        });
    }
}

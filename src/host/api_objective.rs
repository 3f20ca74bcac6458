//! objective: the built-in preference losses over `score(...)`. Each accepts per-pair
//! `weights` (a tensor or an array; the loss is sum(w·ℓ)/N) and returns `#{ loss, losses,
//! metrics }`: the scalar loss, the per-pair losses and TRL-named metrics for `log`. Options are
//! the engine configs' fields, with the defaults those configs state.

use super::api_tensor::{numbers, Tensor};
use super::opts::{defaults, Opts};
use super::registry::{fail, Family, Res};
use super::types::ScoresValue;
use crate::objective::{
    self, DpoConfig, IpoConfig, KtoConfig, LossOutput, SelmConfig, SimpoConfig,
};
use rhai::{Dynamic, Map};

/// `weights` of an options map: a tensor, an array of numbers, or absent.
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

fn output(out: LossOutput) -> Map {
    let mut m = Map::new();
    m.insert("loss".into(), Dynamic::from(Tensor(out.loss)));
    m.insert("losses".into(), Dynamic::from(Tensor(out.per_example)));
    let metrics: Map = out
        .metrics
        .into_iter()
        .map(|(k, v)| (k.into(), Dynamic::from_float(v)))
        .collect();
    m.insert("metrics".into(), metrics.into());
    m
}

/// Reads `weights` and the config `C` from `opts`, refusing any other key, then computes.
fn with_options<C: Default + serde::Serialize + serde::de::DeserializeOwned>(
    name: &'static str,
    opts: &Map,
    loss: impl FnOnce(&C, Option<&candle_core::Tensor>) -> anyhow::Result<LossOutput>,
) -> Res<Map> {
    let what = format!("{name} options");
    let o = Opts::new(&what, opts);
    let w = weights(&o)?;
    let cfg: C = o.config()?;
    o.finish()?;
    loss(&cfg, w.as_ref()).map(output).map_err(fail(name))
}

/// One pairwise objective: its name, what it computes, and how (from scores, options).
type Pairwise = (&'static str, String, fn(&ScoresValue, &Map) -> Res<Map>);

fn pairwise() -> [Pairwise; 4] {
    const WEIGHTS: &str =
        "weights (per pair: loss = mean(w·ℓ) over the batch, not a weighted mean)";
    [
        (
            "dpo",
            format!("DPO -log σ(βΔ); label_smoothing is cDPO's ε, rpo_alpha adds α·NLL(chosen)/|chosen| per pair (RPO). Options: {}, {WEIGHTS}.", defaults::<DpoConfig>()),
            |s, o| with_options("dpo", o, |c: &DpoConfig, w| objective::dpo(&s.0.policy, &s.0.reference, c, w)),
        ),
        (
            "cdpo",
            format!("Conservative DPO: dpo with label_smoothing ε. Options: {}, {WEIGHTS}.", defaults::<DpoConfig>()),
            |s, o| with_options("cdpo", o, |c: &DpoConfig, w| objective::dpo(&s.0.policy, &s.0.reference, c, w)),
        ),
        (
            "ipo",
            format!("IPO (Δ - 1/(2β))². Options: {}, {WEIGHTS}.", defaults::<IpoConfig>()),
            |s, o| with_options("ipo", o, |c: &IpoConfig, w| objective::ipo(&s.0.policy, &s.0.reference, c, w)),
        ),
        (
            "simpo",
            format!("SimPO on mean log-probs, no reference; gamma is the target margin γ. Options: {}, {WEIGHTS}.", defaults::<SimpoConfig>()),
            |s, o| with_options("simpo", o, |c: &SimpoConfig, w| objective::simpo(&s.0.policy, c, w)),
        ),
    ]
}

pub fn register(api: &mut Family) {
    api.func(
        "selm",
        "(scores: Scores, policy_yref: Tensor, reference_yref: Tensor, options: Map) -> Map",
        &format!("SELM: DPO plus α·β·[π(y_ref) - ref(y_ref)] (summed log-probs of the reference's greedy response). Options: {}, weights.", defaults::<SelmConfig>()),
        |s: ScoresValue, p: Tensor, r: Tensor, o: Map| {
            with_options("selm", &o, |c: &SelmConfig, w| {
                let r = r.0.to_dtype(p.0.dtype())?;
                objective::selm(&s.0.policy, &s.0.reference, &p.0, &r, c, w)
            })
        },
    );
    api.func(
        "kto",
        "(scores: Scores, kl_scores: Scores, options: Map) -> Map",
        &format!("KTO on pairs (chosen desirable, rejected undesirable); kl_scores = score(policy, reference, pairs.mismatched()) for z0; losses are per pair (mean of its two). Options: {}, weights (per pair).", defaults::<KtoConfig>()),
        |s: ScoresValue, kl: ScoresValue, o: Map| {
            with_options("kto", &o, |c: &KtoConfig, w| objective::kto_pairs(&s.0, &kl.0, c, w))
        },
    );
    for (name, doc, loss) in pairwise() {
        api.func(
            name,
            "(scores: Scores, options: Map) -> Map",
            &doc,
            move |s: ScoresValue, o: Map| loss(&s, &o),
        );
        api.func(
            name,
            "(scores: Scores) -> Map",
            &doc,
            move |s: ScoresValue| loss(&s, &Map::new()),
        );
    }
}

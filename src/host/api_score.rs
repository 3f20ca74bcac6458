//! score: response log-probs of pairs under the policy (differentiable) and the reference
//! (cached per sequence, computed once), and the implicit-reward margin Δ, as a `Scores` value
//! the objectives read.

use super::api_tensor::Tensor;
use super::registry::{fail, Family, Res};
use super::types::{Pairs, ScoresValue};
use super::values::dynamic_to_text;
use crate::policy::{self, Policy};
use crate::score::{PairLogps, Scores, SeqLogps};
use rhai::{Array, Map};

fn seq_map(lp: SeqLogps) -> Map {
    let mut m = Map::new();
    m.insert("sum".into(), rhai::Dynamic::from(Tensor(lp.sum)));
    m.insert("mean".into(), rhai::Dynamic::from(Tensor(lp.mean)));
    m
}

pub fn register(api: &mut Family) {
    api.ty::<ScoresValue>("Scores");
    api.func(
        "score",
        "(policy: Policy, reference: Policy, pairs: Pairs) -> Scores",
        "Summed and mean log-probs of chosen and rejected under both models and Δ; read them as s.chosen, s.rejected, s.chosen_mean, s.rejected_mean, s.ref_chosen, ..., s.delta, s.n.",
        |policy: Policy, reference: Policy, pairs: Pairs| {
            policy::score(&policy, &reference, &pairs.0)
                .map(|s| ScoresValue(std::rc::Rc::new(s)))
                .map_err(fail("score"))
        },
    );
    type Model = fn(&Scores) -> &PairLogps;
    type Side = fn(&PairLogps) -> &SeqLogps;
    let models: [(&str, &str, Model); 2] = [
        ("", "policy", |s| &s.policy),
        ("ref_", "reference", |s| &s.reference),
    ];
    let sides: [(&str, Side); 2] = [("chosen", |p| &p.chosen), ("rejected", |p| &p.rejected)];
    for (prefix, model, pick) in models {
        for (side, get) in sides {
            for (suffix, what, mean) in [("", "Summed", false), ("_mean", "Per-token mean", true)] {
                let doc = format!("{what} log-probs of the {side} responses under the {model}.");
                let name = format!("{prefix}{side}{suffix}");
                api.getter(
                    "Scores",
                    &name,
                    "Tensor",
                    &doc,
                    move |s: &mut ScoresValue| {
                        let lp = get(pick(&s.0));
                        Tensor(if mean {
                            lp.mean.clone()
                        } else {
                            lp.sum.clone()
                        })
                    },
                );
            }
        }
    }
    api.getter(
        "Scores",
        "delta",
        "Tensor",
        "Δ = [π(y_w) - ref(y_w)] - [π(y_l) - ref(y_l)] on summed log-probs.",
        |s: &mut ScoresValue| Tensor(s.0.delta.clone()),
    );
    api.getter(
        "Scores",
        "n",
        "int",
        "The number of pairs.",
        |s: &mut ScoresValue| s.0.n as i64,
    );
    api.func(
        "logps",
        "(policy: Policy, prompts: Array, responses: Array) -> Map",
        "Summed and mean response log-probs (sum, mean) of prompt/response pairs.",
        |policy: Policy, prompts: Array, responses: Array| -> Res<Map> {
            let texts = |a: &Array, what| {
                a.iter()
                    .map(|v| dynamic_to_text(v, what))
                    .collect::<Res<Vec<_>>>()
            };
            let (x, y) = (
                texts(&prompts, "logps prompt")?,
                texts(&responses, "logps response")?,
            );
            policy.logps(&x, &y).map(seq_map).map_err(fail("logps"))
        },
    );
}

//! score: response log-probs of pairs under the policy (differentiable) and the reference
//! (cached per sequence, computed once), and the implicit-reward margin Δ.

use super::api_data::{dynamic_to_text, Pairs};
use super::api_model::Policy;
use super::api_tensor::Tensor;
use super::registry::{error, fail, Family, Res};
use crate::data::encode::{encode, EncodedSeq, Text};
use crate::score::{sequence_logps, SeqLogps};
use anyhow::Result;
use rhai::{Array, Map};

fn encode_all(p: &Policy, prompts: &[&Text], responses: &[&Text]) -> Result<Vec<EncodedSeq>> {
    prompts
        .iter()
        .zip(responses)
        .map(|(x, y)| encode(&p.0.tokenizer, x, y, &p.0.encode))
        .collect()
}

/// Log-probs of `seqs`: one differentiable forward for a trainable model; for a frozen one,
/// cached values, computing only the sequences not seen before.
pub fn seq_logps(p: &Policy, seqs: &[EncodedSeq]) -> Result<SeqLogps> {
    let model = &p.0.model;
    let pad = p.0.tokenizer.pad_token_id;
    if model.is_trainable() {
        return sequence_logps(model, seqs, pad);
    }
    let key = |s: &EncodedSeq| (s.ids.clone(), s.prompt_len);
    let missing: Vec<EncodedSeq> = {
        let cache = p.0.cache.borrow();
        let mut seen = std::collections::HashSet::new();
        seqs.iter()
            .filter(|s| !cache.contains_key(&key(s)) && seen.insert(key(s)))
            .cloned()
            .collect()
    };
    for chunk in missing.chunks(64) {
        let lp = sequence_logps(model, chunk, pad)?;
        let sums = Tensor(lp.sum).values()?;
        let means = Tensor(lp.mean).values()?;
        let mut cache = p.0.cache.borrow_mut();
        for (i, s) in chunk.iter().enumerate() {
            cache.insert(key(s), (sums[i], means[i]));
        }
    }
    let cache = p.0.cache.borrow();
    let (sums, means): (Vec<f64>, Vec<f64>) = seqs.iter().map(|s| cache[&key(s)]).unzip();
    let dev = model.device();
    Ok(SeqLogps {
        sum: Tensor::from_values(&sums, dev)?.0,
        mean: Tensor::from_values(&means, dev)?.0,
        lengths: seqs.iter().map(|s| s.response_len()).collect(),
    })
}

fn put(m: &mut Map, key: &str, t: candle_core::Tensor) {
    m.insert(key.into(), rhai::Dynamic::from(Tensor(t)));
}

fn score(policy: &Policy, reference: &Policy, pairs: &Pairs) -> Result<Map> {
    if pairs.0.is_empty() {
        anyhow::bail!("no pairs to score");
    }
    let prompts: Vec<&Text> = pairs.0.iter().map(|p| &p.prompt).collect();
    let chosen: Vec<&Text> = pairs.0.iter().map(|p| &p.chosen).collect();
    let rejected: Vec<&Text> = pairs.0.iter().map(|p| &p.rejected).collect();
    let n = pairs.0.len();
    let all = |p: &Policy| -> Result<SeqLogps> {
        let c = encode_all(p, &prompts, &chosen)?;
        let r = encode_all(p, &prompts, &rejected)?;
        seq_logps(p, &[c, r].concat())
    };
    let pol = all(policy)?;
    let rf = all(reference)?;
    let half = |t: &candle_core::Tensor, i: usize| t.narrow(0, i * n, n);
    let mut m = Map::new();
    for (prefix, lp) in [("", &pol), ("ref_", &rf)] {
        put(&mut m, &format!("{prefix}chosen"), half(&lp.sum, 0)?);
        put(&mut m, &format!("{prefix}rejected"), half(&lp.sum, 1)?);
        put(&mut m, &format!("{prefix}chosen_mean"), half(&lp.mean, 0)?);
        put(
            &mut m,
            &format!("{prefix}rejected_mean"),
            half(&lp.mean, 1)?,
        );
    }
    let ratio = |i| -> Result<candle_core::Tensor> {
        Ok((half(&pol.sum, i)? - half(&rf.sum, i)?.to_dtype(pol.sum.dtype())?)?)
    };
    put(&mut m, "delta", (ratio(0)? - ratio(1)?)?);
    m.insert("n".into(), (n as i64).into());
    Ok(m)
}

pub fn register(api: &mut Family) {
    api.func(
        "score",
        "(policy: Policy, reference: Policy, pairs: Pairs) -> Map",
        "Summed/mean log-probs of chosen and rejected under both models (chosen, rejected, *_mean, ref_*), Δ (delta) and the number of pairs (n).",
        |policy: Policy, reference: Policy, pairs: Pairs| {
            score(&policy, &reference, &pairs).map_err(fail("score"))
        },
    );
    api.func(
        "logps",
        "(policy: Policy, prompts: Array, responses: Array) -> Map",
        "Summed and mean response log-probs (sum, mean) of prompt/response pairs.",
        |policy: Policy, prompts: Array, responses: Array| -> Res<Map> {
            if prompts.len() != responses.len() || prompts.is_empty() {
                return Err(error(format!(
                    "logps: {} prompts but {} responses (need the same, at least one)",
                    prompts.len(),
                    responses.len()
                )));
            }
            let x = prompts
                .iter()
                .map(|v| dynamic_to_text(v, "logps prompt"))
                .collect::<Res<Vec<_>>>()?;
            let y = responses
                .iter()
                .map(|v| dynamic_to_text(v, "logps response"))
                .collect::<Res<Vec<_>>>()?;
            let run = || -> Result<Map> {
                let seqs = encode_all(
                    &policy,
                    &x.iter().collect::<Vec<_>>(),
                    &y.iter().collect::<Vec<_>>(),
                )?;
                let lp = seq_logps(&policy, &seqs)?;
                let mut m = Map::new();
                put(&mut m, "sum", lp.sum);
                put(&mut m, "mean", lp.mean);
                Ok(m)
            };
            run().map_err(fail("logps"))
        },
    );
}

//! data: preference pairs and prompts. Pair sets are immutable handles; `slice`, `shuffle`,
//! `batches` and `part` make new ones. A text is a string, or an array of `#{role, content}`
//! messages for conversational data (TRL's layout).

use super::registry::{error, fail, Family, Res};
use super::types::Pairs;
use super::values::{dynamic_to_text, text_to_dynamic};
use crate::data::pairs::{load_pairs, load_prompts, Pair};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rhai::{Array, Dynamic, Map};
use std::path::Path;

fn pair_to_map(p: &Pair) -> Map {
    let mut m = Map::new();
    m.insert("prompt".into(), text_to_dynamic(&p.prompt));
    m.insert("chosen".into(), text_to_dynamic(&p.chosen));
    m.insert("rejected".into(), text_to_dynamic(&p.rejected));
    m
}

fn bounds(n: usize, a: i64, b: i64) -> Res<(usize, usize)> {
    if a < 0 || b < a || b as usize > n {
        return Err(error(format!(
            "slice({a}, {b}) is out of range for {n} pairs"
        )));
    }
    Ok((a as usize, b as usize))
}

pub fn register(api: &mut Family) {
    api.ty::<Pairs>("Pairs");
    api.engine()
        .register_fn("+", |a: Pairs, b: Pairs| {
            Pairs::new(a.0.iter().chain(b.0.iter()).cloned().collect())
        })
        .register_indexer_get(|p: &mut Pairs, i: i64| -> Res<Map> {
            let n = p.0.len() as i64;
            let j = if i < 0 { n + i } else { i };
            if !(0..n).contains(&j) {
                return Err(error(format!("index {i} is out of range for {n} pairs")));
            }
            Ok(pair_to_map(&p.0[j as usize]))
        });
    api.operator(
        "+",
        "(a: Pairs, b: Pairs) -> Pairs",
        "The pairs of a, then those of b.",
    );
    api.operator(
        "[]",
        "(pairs: Pairs, i: int) -> Map",
        "Pair i as #{prompt, chosen, rejected}; negative i counts from the end.",
    );
    api.func(
        "load_pairs",
        "(path: String) -> Pairs",
        "Preference pairs from JSONL/JSON with prompt/chosen/rejected (text or messages).",
        |path: &str| {
            load_pairs(Path::new(path))
                .map(Pairs::new)
                .map_err(fail("load_pairs"))
        },
    );
    api.func(
        "load_prompts",
        "(path: String) -> Array",
        "Prompts (the `prompt` field) from JSONL/JSON.",
        |path: &str| -> Res<Array> {
            let p = load_prompts(Path::new(path)).map_err(fail("load_prompts"))?;
            Ok(p.iter().map(text_to_dynamic).collect())
        },
    );
    api.func(
        "pairs",
        "(records: Array) -> Pairs",
        "A pair set from #{prompt, chosen, rejected} maps.",
        |records: Array| -> Res<Pairs> {
            records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let m = r
                        .read_lock::<Map>()
                        .ok_or_else(|| error(format!("pairs: record {i} is not a map")))?;
                    let field = |k: &str| {
                        let what = format!("pairs: record {i} `{k}`");
                        m.get(k)
                            .ok_or_else(|| error(format!("{what} is missing")))
                            .and_then(|v| dynamic_to_text(v, &what))
                    };
                    Ok(Pair {
                        prompt: field("prompt")?,
                        chosen: field("chosen")?,
                        rejected: field("rejected")?,
                    })
                })
                .collect::<Res<Vec<_>>>()
                .map(Pairs::new)
        },
    );
    api.func(
        "len",
        "(pairs: Pairs) -> int",
        "Number of pairs.",
        |p: &mut Pairs| p.0.len() as i64,
    );
    api.func(
        "slice",
        "(pairs: Pairs, start: int, end: int) -> Pairs",
        "Pairs start..end.",
        |p: &mut Pairs, a: i64, b: i64| -> Res<Pairs> {
            let (a, b) = bounds(p.0.len(), a, b)?;
            Ok(Pairs::new(p.0[a..b].to_vec()))
        },
    );
    api.func(
        "shuffle",
        "(pairs: Pairs, seed: int) -> Pairs",
        "A seeded random permutation.",
        |p: &mut Pairs, seed: i64| {
            let mut v = p.0.to_vec();
            v.shuffle(&mut ChaCha8Rng::seed_from_u64(seed as u64));
            Pairs::new(v)
        },
    );
    api.func(
        "batches",
        "(pairs: Pairs, size: int) -> Array",
        "Consecutive batches of `size` pairs (the last may be smaller).",
        |p: &mut Pairs, size: i64| -> Res<Array> {
            if size < 1 {
                return Err(error(format!(
                    "batches: size must be at least 1, got {size}"
                )));
            }
            Ok(p.0
                .chunks(size as usize)
                .map(|c| Dynamic::from(Pairs::new(c.to_vec())))
                .collect())
        },
    );
    api.func(
        "part",
        "(pairs: Pairs, i: int, k: int) -> Pairs",
        "The i-th of k contiguous, near-equal parts (MetaAPO's per-iteration slices).",
        |p: &mut Pairs, i: i64, k: i64| -> Res<Pairs> {
            if k < 1 || i < 0 || i >= k {
                return Err(error(format!("part({i}, {k}): need 0 <= i < k")));
            }
            let n = p.0.len();
            let (a, b) = (
                n * i as usize / k as usize,
                n * (i as usize + 1) / k as usize,
            );
            Ok(Pairs::new(p.0[a..b].to_vec()))
        },
    );
    api.func(
        "select",
        "(pairs: Pairs, indices: Array) -> Pairs",
        "The pairs at `indices`, in that order (repeats allowed).",
        |p: &mut Pairs, indices: Array| -> Res<Pairs> {
            let n = p.0.len();
            indices
                .iter()
                .map(|i| match i.as_int() {
                    Ok(i) if (0..n as i64).contains(&i) => Ok(p.0[i as usize].clone()),
                    _ => Err(error(format!("select: {i} is not an index of {n} pairs"))),
                })
                .collect::<Res<Vec<_>>>()
                .map(Pairs::new)
        },
    );
    api.func(
        "mismatched",
        "(pairs: Pairs) -> Pairs",
        "Prompt i with the responses of pair i+1 (cyclic): KTO's mismatched pairs for its reference point z0.",
        |p: &mut Pairs| -> Pairs {
            let n = p.0.len();
            Pairs::new(
                (0..n)
                    .map(|i| Pair {
                        prompt: p.0[i].prompt.clone(),
                        ..p.0[(i + 1) % n].clone()
                    })
                    .collect(),
            )
        },
    );
    api.getter(
        "Pairs",
        "chosen",
        "Array",
        "The chosen responses, in order.",
        |p: &mut Pairs| -> Array { p.0.iter().map(|x| text_to_dynamic(&x.chosen)).collect() },
    );
    api.getter(
        "Pairs",
        "rejected",
        "Array",
        "The rejected responses, in order.",
        |p: &mut Pairs| -> Array { p.0.iter().map(|x| text_to_dynamic(&x.rejected)).collect() },
    );
    api.getter(
        "Pairs",
        "prompts",
        "Array",
        "The prompts, in order.",
        |p: &mut Pairs| -> Array { p.0.iter().map(|x| text_to_dynamic(&x.prompt)).collect() },
    );
}

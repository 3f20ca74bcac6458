//! reward: one `annotate` over every reward backend (the world's annotator, a script closure, a
//! Llama-family sequence classifier, a BERT encoder with a Bradley-Terry head), each call
//! counted as the run's `online/annotations`.

use super::api_tensor::number;
use super::opts::{defaults, replace_rule, Opts, OVERWRITE_HINT};
use super::registry::{error, fail, Family, Res};
use super::run::Run;
use super::types::{Pairs, RewardModel, WorldHandle};
use super::values::{dynamic_to_text, text_to_dynamic};
use crate::data::encode::Text;
use crate::reward::bradley_terry::FitConfig;
use crate::reward::{self, HeadReward};
use rhai::{Array, Dynamic, FnPtr, Map, NativeCallContext};
use std::rc::Rc;

fn texts(items: &Array, what: &str) -> Res<Vec<Text>> {
    items.iter().map(|v| dynamic_to_text(v, what)).collect()
}

/// Prompts and responses of `generate(...)` samples.
fn sample_texts(samples: &Array) -> Res<(Vec<Text>, Vec<Text>)> {
    samples
        .iter()
        .map(|s| {
            let m = s.read_lock::<Map>().ok_or_else(|| {
                error("annotate: samples must be maps with `prompt` and `response` (from generate)")
            })?;
            let field = |k: &str| {
                m.get(k)
                    .ok_or_else(|| error(format!("annotate: a sample has no `{k}`")))
                    .and_then(|v| dynamic_to_text(v, k))
            };
            Ok((field("prompt")?, field("response")?))
        })
        .collect::<Res<Vec<_>>>()
        .map(|v| v.into_iter().unzip())
}

/// Rewards of parallel prompt and response arrays from `score`, counted as annotations.
fn annotate_texts(
    run: &Run,
    prompts: &Array,
    responses: &Array,
    score: impl FnOnce(&[Text], &[Text]) -> Res<Vec<f64>>,
) -> Res<Array> {
    if prompts.len() != responses.len() {
        return Err(error(format!(
            "annotate: {} prompts but {} responses",
            prompts.len(),
            responses.len()
        )));
    }
    let v = score(&texts(prompts, "prompt")?, &texts(responses, "response")?)?;
    run.count_annotations(v.len());
    Ok(v.into_iter().map(Dynamic::from_float).collect())
}

/// `generate(...)` samples, each with its `reward` from `score` added, counted as annotations.
fn annotate_samples(
    run: &Run,
    samples: &Array,
    score: impl FnOnce(&[Text], &[Text]) -> Res<Vec<f64>>,
) -> Res<Array> {
    let (prompts, responses) = sample_texts(samples)?;
    let v = score(&prompts, &responses)?;
    run.count_annotations(v.len());
    Ok(samples
        .iter()
        .zip(v)
        .map(|(s, r)| {
            let mut m = s.read_lock::<Map>().map(|m| m.clone()).unwrap_or_default();
            m.insert("reward".into(), Dynamic::from_float(r));
            m.into()
        })
        .collect())
}

fn call_closure(ctx: &NativeCallContext, f: &FnPtr, p: &[Text], r: &[Text]) -> Res<Vec<f64>> {
    p.iter()
        .zip(r)
        .map(|(p, r)| {
            let v: Dynamic =
                f.call_within_context(ctx, (text_to_dynamic(p), text_to_dynamic(r)))?;
            number(&v).ok_or_else(|| {
                error(format!(
                    "annotate: the reward function returned {} (a {}), not a number",
                    v,
                    v.type_name()
                ))
            })
        })
        .collect()
}

fn train_reward(run: &Run, encoder: &str, pairs: &Pairs, opts: &Map) -> Res<RewardModel> {
    // The seed defaults to the run's (--seed), not to the config's.
    let mut seeded = opts.clone();
    seeded
        .entry("seed".into())
        .or_insert_with(|| Dynamic::from_int(run.options.seed as i64));
    let o = Opts::new("train_reward options", &seeded);
    let cfg: FitConfig = o.config()?;
    o.finish()?;
    let (rm, report) = HeadReward::fit(encoder, &pairs.0, &cfg, &run.options.device)
        .map_err(fail("train_reward"))?;
    run.print(&format!(
        "train_reward: {} pairs, Bradley-Terry loss {:.4} -> {:.4}, training accuracy {:.3} -> {:.3}",
        pairs.0.len(),
        report.loss_before,
        report.loss_after,
        report.accuracy_before,
        report.accuracy_after
    ));
    Ok(RewardModel(Rc::new(rm)))
}

fn save_head(run: &Run, rm: &RewardModel, dir: &str, opts: &Map) -> Res<String> {
    let replace = replace_rule("save options", opts)?;
    let dir = run.output(dir).map_err(fail("save"))?;
    crate::atomic::write_dir(&dir, "reward head", replace, OVERWRITE_HINT, |tmp| {
        rm.0.save(tmp)
    })
    .map_err(fail("save"))?;
    Ok(dir.display().to_string())
}

pub fn register(api: &mut Family, run: &Rc<Run>) {
    api.ty::<RewardModel>("RewardModel");
    api.getter(
        "World",
        "reward",
        "RewardModel",
        "The world's reward model: for a built-in world its annotator (gold reward plus fixed per-text noise); for a world from files its `reward`.",
        |w: &mut WorldHandle| RewardModel(w.0.reward()),
    );
    let r = run.clone();
    api.func(
        "load_reward",
        "(path: String) -> RewardModel",
        "A reward model directory: one written by rm.save(dir) (a Bradley-Terry head and its encoder), or a HF *ForSequenceClassification model (Llama family; score head at the last token).",
        move |path: &str| {
            reward::load(path, &r.options.device)
                .map(|rm| RewardModel(rm.into()))
                .map_err(fail("load_reward"))
        },
    );
    let r = run.clone();
    api.func(
        "save",
        "(rm: RewardModel, dir: String) -> String",
        "Writes a train_reward model's head to dir/reward_head.safetensors (relative to the run directory), naming its encoder; load_reward(dir) reads it back. Refuses a non-empty folder that holds no head saved earlier. Returns the directory.",
        move |rm: &mut RewardModel, dir: &str| save_head(&r, rm, dir, &Map::new()),
    );
    let r = run.clone();
    api.func(
        "save",
        "(rm: RewardModel, dir: String, options: Map) -> String",
        "save(dir) with options: overwrite (false): replace a head saved there earlier.",
        move |rm: &mut RewardModel, dir: &str, opts: Map| save_head(&r, rm, dir, &opts),
    );
    let r = run.clone();
    api.func(
        "train_reward",
        "(encoder: String, pairs: Pairs, options: Map) -> RewardModel",
        &format!(
            "Fits a linear Bradley-Terry head on a BERT sentence encoder's features of the pairs (encoder: a directory, or \"minilm\", fetched). Options: {} (seed defaults to --seed).",
            defaults::<FitConfig>()
        ),
        move |enc: &str, pairs: Pairs, opts: Map| train_reward(&r, enc, &pairs, &opts),
    );
    api.func(
        "accuracy",
        "(rm: RewardModel, pairs: Pairs) -> float",
        "Fraction of pairs the reward model orders chosen above rejected (ties count half); not counted as annotations.",
        |rm: RewardModel, pairs: Pairs| {
            reward::accuracy(rm.0.as_ref(), &pairs.0).map_err(fail("accuracy"))
        },
    );
    let r = run.clone();
    api.func(
        "annotate",
        "(rm: RewardModel, prompts: Array, responses: Array) -> Array",
        "The reward of each prompt/response pair; counted in online/annotations.",
        move |rm: RewardModel, p: Array, y: Array| {
            annotate_texts(&r, &p, &y, |p, y| {
                rm.0.rewards(p, y).map_err(fail("annotate"))
            })
        },
    );
    let r = run.clone();
    api.func(
        "annotate",
        "(rm: RewardModel, samples: Array) -> Array",
        "generate(...) samples, each with its `reward` added; counted in online/annotations.",
        move |rm: RewardModel, samples: Array| {
            annotate_samples(&r, &samples, |p, y| {
                rm.0.rewards(p, y).map_err(fail("annotate"))
            })
        },
    );
    let r = run.clone();
    api.func(
        "annotate",
        "(reward: FnPtr, prompts: Array, responses: Array) -> Array",
        "Rewards from a script function |prompt, response| -> number (verifiable rewards); counted.",
        move |ctx: NativeCallContext, f: FnPtr, p: Array, y: Array| {
            annotate_texts(&r, &p, &y, |p, y| call_closure(&ctx, &f, p, y))
        },
    );
    let r = run.clone();
    api.func(
        "annotate",
        "(reward: FnPtr, samples: Array) -> Array",
        "generate(...) samples with `reward` from a script function |prompt, response|; counted.",
        move |ctx: NativeCallContext, f: FnPtr, samples: Array| {
            annotate_samples(&r, &samples, |p, y| call_closure(&ctx, &f, p, y))
        },
    );
    let r = run.clone();
    api.func(
        "annotations",
        "() -> int",
        "How many rewards annotate() has computed in this run.",
        move || r.annotations.get() as i64,
    );
}

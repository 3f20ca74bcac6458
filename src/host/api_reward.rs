//! reward: one `annotate` over every reward backend (the world's annotator, a script closure, a
//! Llama-family sequence classifier, a BERT encoder with a Bradley-Terry head), each call
//! counted as the run's `online/annotations`.

use super::api_data::{dynamic_to_text, Pairs};
use super::api_model::{in_run, replace_rule, OVERWRITE_HINT};
use super::api_world::WorldHandle;
use super::opts::{number, Opts};
use super::registry::{error, fail, Family, Res};
use super::run::Run;
use crate::data::encode::{encode, EncodeConfig, Text};
use crate::model::tokenizer::TextTokenizer;
use crate::reward::bert::TextEncoder;
use crate::reward::bradley_terry::{FitConfig, LinearHead, HEAD_FILE};
use crate::reward::classifier::SequenceClassifier;
use crate::world::World;
use anyhow::{Context, Result};
use rhai::{Array, Dynamic, FnPtr, Map, NativeCallContext};
use std::path::Path;
use std::rc::Rc;

pub struct Classifier {
    model: SequenceClassifier,
    tokenizer: TextTokenizer,
    path: String,
}

pub struct Embedding {
    encoder: TextEncoder,
    head: LinearHead,
    path: String,
}

#[derive(Clone)]
pub enum RewardModel {
    World(Rc<World>),
    Classifier(Rc<Classifier>),
    Embedding(Rc<Embedding>),
}

impl std::fmt::Display for RewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RewardModel::World(w) => write!(f, "RewardModel({} world's annotator)", w.config.name),
            RewardModel::Classifier(c) => write!(f, "RewardModel(sequence classifier {})", c.path),
            RewardModel::Embedding(e) => write!(
                f,
                "RewardModel(Bradley-Terry head on {}, {} features)",
                e.path, e.encoder.bert.config.hidden_size
            ),
        }
    }
}

impl RewardModel {
    /// One reward per prompt/response pair.
    pub fn rewards(&self, prompts: &[Text], responses: &[Text]) -> Result<Vec<f64>> {
        match self {
            RewardModel::World(w) => prompts
                .iter()
                .zip(responses)
                .map(|(p, r)| w.annotator(&p.display(), &r.display()))
                .collect(),
            RewardModel::Classifier(c) => {
                let cfg = EncodeConfig::for_context(c.model.body.config.max_position_embeddings);
                let seqs = prompts
                    .iter()
                    .zip(responses)
                    .map(|(p, r)| Ok(encode(&c.tokenizer, p, r, &cfg)?.ids))
                    .collect::<Result<Vec<_>>>()?;
                c.model.rewards(&seqs, c.tokenizer.pad_token_id)
            }
            RewardModel::Embedding(e) => {
                let text = |t: &[Text]| t.iter().map(Text::display).collect::<Vec<_>>();
                let features = e.encoder.embed_pairs(&text(prompts), &text(responses))?;
                Ok(e.head
                    .rewards(&features)?
                    .to_dtype(candle_core::DType::F64)?
                    .to_vec1::<f64>()?)
            }
        }
    }
}

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
            let v: Dynamic = f.call_within_context(
                ctx,
                (
                    super::api_data::text_to_dynamic(p),
                    super::api_data::text_to_dynamic(r),
                ),
            )?;
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

fn accuracy(rm: &RewardModel, pairs: &Pairs) -> Result<f64> {
    if pairs.0.is_empty() {
        anyhow::bail!("no pairs");
    }
    let prompts: Vec<Text> = pairs.0.iter().map(|p| p.prompt.clone()).collect();
    let chosen: Vec<Text> = pairs.0.iter().map(|p| p.chosen.clone()).collect();
    let rejected: Vec<Text> = pairs.0.iter().map(|p| p.rejected.clone()).collect();
    Ok(crate::reward::win_rate(
        &rm.rewards(&prompts, &chosen)?,
        &rm.rewards(&prompts, &rejected)?,
    ))
}

/// A BERT directory, or "minilm": all-MiniLM-L6-v2, fetched (`metaapo fetch minilm`).
fn encoder_dir(encoder: &str) -> Result<std::path::PathBuf> {
    match encoder {
        "minilm" => crate::fetch::ensure(&crate::fetch::MINILM),
        dir => Ok(Path::new(dir).to_path_buf()),
    }
}

/// A reward model from a directory: a head saved by `rm.save(dir)` (with the encoder its
/// metadata names), else a HF sequence classifier.
pub fn load_reward(run: &Run, path: &str) -> Result<RewardModel> {
    let dir = Path::new(path);
    if dir.join(HEAD_FILE).is_file() {
        let (head, encoder) = LinearHead::load(dir, &run.options.device)?;
        let enc =
            TextEncoder::load(&encoder_dir(&encoder)?, &run.options.device).with_context(|| {
                format!(
                    "the encoder {encoder:?} named by {}",
                    dir.join(HEAD_FILE).display()
                )
            })?;
        if head.weight.dims() != [enc.bert.config.hidden_size] {
            anyhow::bail!(
                "{}: the head has {:?} features, the encoder {encoder:?} {}",
                dir.join(HEAD_FILE).display(),
                head.weight.dims(),
                enc.bert.config.hidden_size
            );
        }
        return Ok(RewardModel::Embedding(Rc::new(Embedding {
            encoder: enc,
            head,
            path: encoder,
        })));
    }
    let (model, tokenizer) = SequenceClassifier::load(dir, &run.options.device)?;
    Ok(RewardModel::Classifier(Rc::new(Classifier {
        model,
        tokenizer,
        path: path.to_string(),
    })))
}

fn train_reward(run: &Run, encoder: &str, pairs: &Pairs, opts: &Map) -> Res<RewardModel> {
    let o = Opts::new("train_reward options", opts);
    let d = FitConfig::default();
    let cfg = FitConfig {
        epochs: o.usize("epochs", d.epochs)?,
        lr: o.f64("lr", d.lr)?,
        weight_decay: o.f64("weight_decay", d.weight_decay)?,
        seed: o.usize("seed", run.options.seed as usize)? as u64,
    };
    o.finish()?;
    let fit = || -> Result<RewardModel> {
        if pairs.0.is_empty() {
            anyhow::bail!("no pairs to fit on");
        }
        let enc = TextEncoder::load(&encoder_dir(encoder)?, &run.options.device)?;
        let prompts: Vec<String> = pairs.0.iter().map(|p| p.prompt.display()).collect();
        let side = |f: fn(&crate::data::pairs::Pair) -> &Text| {
            let r: Vec<String> = pairs.0.iter().map(|p| f(p).display()).collect();
            enc.embed_pairs(&prompts, &r)
        };
        let (head, report) = LinearHead::fit(&side(|p| &p.chosen)?, &side(|p| &p.rejected)?, &cfg)?;
        run.print(&format!(
            "train_reward: {} pairs, Bradley-Terry loss {:.4} -> {:.4}, training accuracy {:.3} -> {:.3}",
            pairs.0.len(),
            report.loss_before,
            report.loss_after,
            report.accuracy_before,
            report.accuracy_after
        ));
        Ok(RewardModel::Embedding(Rc::new(Embedding {
            encoder: enc,
            head,
            path: encoder.to_string(),
        })))
    };
    fit().map_err(fail("train_reward"))
}

fn save_head(run: &Run, rm: &RewardModel, dir: &str, opts: &Map) -> Res<String> {
    let RewardModel::Embedding(e) = rm else {
        return Err(error(format!(
            "save: only a train_reward model can be saved, not {rm}"
        )));
    };
    let replace = replace_rule("save options", opts)?;
    let dir = in_run(run, dir).map_err(fail("save"))?;
    crate::atomic::write_dir(&dir, "reward head", replace, OVERWRITE_HINT, |tmp| {
        e.head.save(tmp, &e.path)
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
        "The world's reward model: for a built-in world its annotator (gold reward plus fixed per-text noise).",
        |w: &mut WorldHandle| match w {
            WorldHandle::Builtin(b) => RewardModel::World(b.clone()),
            WorldHandle::Files(f) => f.reward.clone(),
        },
    );
    let r = run.clone();
    api.func(
        "load_reward",
        "(path: String) -> RewardModel",
        "A reward model directory: one written by rm.save(dir) (a Bradley-Terry head and its encoder), or a HF *ForSequenceClassification model (Llama family; score head at the last token).",
        move |path: &str| load_reward(&r, path).map_err(fail("load_reward")),
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
        "Fits a linear Bradley-Terry head on a BERT sentence encoder's features of the pairs (encoder: a directory, or \"minilm\", fetched): epochs (200), lr (0.05), weight_decay, seed.",
        move |enc: &str, pairs: Pairs, opts: Map| train_reward(&r, enc, &pairs, &opts),
    );
    api.func(
        "accuracy",
        "(rm: RewardModel, pairs: Pairs) -> float",
        "Fraction of pairs the reward model orders chosen above rejected (ties count half); not counted as annotations.",
        |rm: RewardModel, pairs: Pairs| accuracy(&rm, &pairs).map_err(fail("accuracy")),
    );
    let r = run.clone();
    api.func(
        "annotate",
        "(rm: RewardModel, prompts: Array, responses: Array) -> Array",
        "The reward of each prompt/response pair; counted in online/annotations.",
        move |rm: RewardModel, p: Array, y: Array| {
            annotate_texts(&r, &p, &y, |p, y| {
                rm.rewards(p, y).map_err(fail("annotate"))
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
                rm.rewards(p, y).map_err(fail("annotate"))
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

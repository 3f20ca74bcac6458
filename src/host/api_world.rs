//! world: the built-in default world (a verifiable arithmetic task with a warmed-up policy,
//! gold and annotator rewards, noisy off-policy pairs and an evaluation set), worlds from files
//! (`file_world`), and `evaluate`.

use super::opts::Opts;
use super::registry::{error, fail, Family, Res};
use super::run::{interrupted, Run};
use super::types::{Pairs, ServerHandle, WorldHandle};
use super::values::{text_to_dynamic, to_json};
use crate::data::encode::Text;
use crate::policy::Policy;
use crate::world::{self, BuiltinWorld, FileWorld, Split, WorldConfig, WorldSpec};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rhai::{Array, Dynamic, Map};
use std::rc::Rc;

/// A world opened once per run: later calls with the same key get the same world.
fn cached(
    run: &Run,
    key: String,
    open: impl FnOnce() -> anyhow::Result<Rc<dyn world::World>>,
) -> Res<WorldHandle> {
    if let Some(w) = run.worlds.borrow().get(&key) {
        return Ok(WorldHandle(w.clone()));
    }
    let w = open().map_err(fail("world"))?;
    run.worlds.borrow_mut().insert(key, w.clone());
    Ok(WorldHandle(w))
}

fn open_files(run: &Run, name: &str, spec: WorldSpec) -> Res<WorldHandle> {
    cached(run, format!("files:{name}"), || {
        Ok(Rc::new(FileWorld::open(name, spec, &run.options.device)?))
    })
}

fn open_builtin(run: &Run, config: WorldConfig) -> Res<WorldHandle> {
    let key = serde_json::to_string(&config).unwrap_or_default();
    cached(run, key, || {
        let bar = ProgressBar::new(config.warmup.steps).with_prefix(format!(
            "warming up the {} world's policy (cached afterwards)",
            config.name
        ));
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} loss {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        let world = BuiltinWorld::build(config, &run.options.device, &mut |step, _, loss| {
            if interrupted() {
                anyhow::bail!("interrupted during the warm-up (nothing was cached)");
            }
            bar.set_position(step);
            bar.set_message(format!("{loss:.3}"));
            Ok(())
        });
        bar.finish_and_clear();
        Ok(Rc::new(world?))
    })
}

fn strings(texts: Vec<Text>) -> Array {
    texts.iter().map(text_to_dynamic).collect()
}

/// The reward a world knows only where it has a gold one, for one prompt and response.
fn known(w: &WorldHandle, what: &str, gold: bool, prompt: &str, response: &str) -> Res<f64> {
    let Some(g) = w.0.gold() else {
        return Err(error(format!(
            "{what}: the world {} (from files) has no gold reward; check `w.has_gold`",
            w.0.name()
        )));
    };
    let rm = if gold { g } else { w.0.reward() };
    let (p, y) = (Text::Plain(prompt.into()), Text::Plain(response.into()));
    rm.rewards(&[p], &[y]).map(|v| v[0]).map_err(fail("world"))
}

fn evaluate(p: &Policy, w: &WorldHandle, split: Split) -> Res<Map> {
    let metrics = w.0.evaluate(p, split).map_err(fail("evaluate"))?;
    Ok(metrics
        .into_iter()
        .map(|(k, v)| (k.into(), Dynamic::from_float(v)))
        .collect())
}

pub fn register(api: &mut Family, run: &Rc<Run>) {
    api.ty::<WorldHandle>("World");
    let r = run.clone();
    api.func(
        "world",
        "(name: String) -> World",
        "A built-in world: \"default\" (built to hold the paper's premise; `metaapo world default` measures it), its variants \"noisy-labels\", \"unbiased-annotator\", \"capable-policy\", \"on-policy\" (each flips one property), \"legacy\" (the earlier default, which inverts the premise), \"tiny\" (seconds to build; for tests and the REPL), or a world from files: a path to a world .json (policy, reward, pairs, prompts, eval, lr, max_new_tokens, eval_temperature, server).",
        move |name: &str| match world::files::spec_path(name) {
            Some(path) => {
                let spec = WorldSpec::from_file(&path).map_err(fail("world"))?;
                open_files(&r, name, spec)
            }
            None => open_builtin(&r, WorldConfig::preset(name).map_err(fail("world"))?),
        },
    );
    let r = run.clone();
    api.func(
        "world",
        "(options: Map) -> World",
        "A built-in world with changes (name, seed, pairs, label_noise, annotator_noise, annotator_bias, eval_temperature, greedy_eval, validation_size, warmup_steps), or with `policy` a world from files (keys as in a world .json).",
        move |opts: Map| -> Res<WorldHandle> {
            if opts.contains_key("policy") {
                let json = to_json(&Dynamic::from_map(opts.clone()));
                let spec = WorldSpec::from_value(json)
                    .context("world options")
                    .map_err(fail("world"))?;
                return open_files(&r, &spec.policy.clone(), spec);
            }
            let o = Opts::new("world options", &opts);
            let mut c = WorldConfig::preset(&o.string("name", "default")?).map_err(fail("world"))?;
            c.seed = o.usize("seed", c.seed as usize)? as u64;
            c.pairs = o.usize("pairs", c.pairs)?;
            c.label_noise = o.f64("label_noise", c.label_noise)?;
            c.annotator_noise = o.f64("annotator_noise", c.annotator_noise)?;
            c.annotator_bias = o.f64("annotator_bias", c.annotator_bias)?;
            c.eval_temperature = o.f64("eval_temperature", c.eval_temperature)?;
            c.greedy_eval = o.bool("greedy_eval", c.greedy_eval)?;
            c.validation_size = o.usize("validation_size", c.validation_size)?;
            c.warmup.steps = o.usize("warmup_steps", c.warmup.steps as usize)? as u64;
            o.finish()?;
            open_builtin(&r, c)
        },
    );
    let r = run.clone();
    api.func(
        "policy",
        "(world: World) -> Policy",
        "A fresh trainable copy of the world's initial (for the built-in worlds, warmed-up) policy.",
        move |w: &mut WorldHandle| -> Res<Policy> {
            let policy = w.0.policy().and_then(|p| r.options.precision(p));
            policy.map_err(fail("policy"))
        },
    );
    api.getter(
        "World",
        "pairs",
        "Pairs",
        "The offline preference pairs.",
        |w: &mut WorldHandle| Pairs::new(w.0.pairs().to_vec()),
    );
    api.getter(
        "World",
        "prompts",
        "Array",
        "The training prompts.",
        |w: &mut WorldHandle| strings(w.0.train_prompts()),
    );
    api.getter(
        "World",
        "eval_prompts",
        "Array",
        "The held-out evaluation prompts.",
        |w: &mut WorldHandle| strings(w.0.eval_prompts()),
    );
    api.getter(
        "World",
        "lr",
        "float",
        "The learning rate offline DPO uses on this world; the online scripts set their own, as their online part is unstable at this one.",
        |w: &mut WorldHandle| w.0.lr(),
    );
    api.getter(
        "World",
        "max_new_tokens",
        "int",
        "New tokens to generate: enough for any answer of a built-in task; a file world's setting.",
        |w: &mut WorldHandle| w.0.max_new_tokens() as i64,
    );
    api.getter(
        "World",
        "name",
        "String",
        "The world's name.",
        |w: &mut WorldHandle| w.0.name().to_string(),
    );
    api.getter(
        "World",
        "server",
        "Server or ()",
        "The serving engine the world's file names (its `server`: server()'s options); () samples here. pipeline::sampling syncs to it.",
        |w: &mut WorldHandle| match w.0.server() {
            Some(s) => Dynamic::from(ServerHandle(s)),
            None => Dynamic::UNIT,
        },
    );
    api.getter(
        "World",
        "has_gold",
        "bool",
        "Whether the world has a gold reward (the built-in ones do; worlds from files do not).",
        |w: &mut WorldHandle| w.0.gold().is_some(),
    );
    api.func(
        "gold",
        "(world: World, prompt: String, response: String) -> float",
        "The gold (true) reward of a response (built-in worlds). Not counted in annotations(): only annotate() is.",
        |w: &mut WorldHandle, p: &str, y: &str| known(w, "gold", true, p, y),
    );
    api.func(
        "annotator",
        "(world: World, prompt: String, response: String) -> float",
        "The annotator's reward: the gold reward plus fixed, per-text noise (built-in worlds). Not counted in annotations(): only annotate() is.",
        |w: &mut WorldHandle, p: &str, y: &str| known(w, "annotator", false, p, y),
    );
    api.func(
        "evaluate",
        "(policy: Policy, world: World) -> Map",
        "evaluate(policy, world, \"test\"): the numbers to report. Built-in worlds: eval/gold_reward, eval/success and eval/win_rate (vs the warm-up policy), and eval/greedy_gold_reward and eval/greedy_success where the world also decodes greedily (default and its variants); worlds from files: eval/reward (the reward model's mean) and eval/win_rate (vs the initial policy).",
        |p: Policy, w: WorldHandle| evaluate(&p, &w, Split::Test),
    );
    api.func(
        "evaluate",
        "(policy: Policy, world: World, split: String) -> Map",
        "The same metrics on a held-out split: \"test\" (eval/...) or \"validation\" (validation/..., for choosing settings; built-in worlds with a validation split: default and its variants).",
        |p: Policy, w: WorldHandle, split: &str| {
            evaluate(&p, &w, Split::parse(split).map_err(fail("evaluate"))?)
        },
    );
}

//! world: the built-in default world (a verifiable arithmetic task with a warmed-up policy,
//! gold and annotator rewards, noisy off-policy pairs and an evaluation set), worlds from files
//! (`file_world`), and `evaluate`.

use super::api_data::Pairs;
use super::api_model::Policy;
use super::file_world::{spec_path, FileWorld, WorldSpec};
use super::opts::Opts;
use super::registry::{error, fail, Family, Res};
use super::run::{interrupted, Run};
use crate::world::{World, WorldConfig};
use indicatif::{ProgressBar, ProgressStyle};
use rhai::{Array, Dynamic, Map};
use std::rc::Rc;

#[derive(Clone)]
pub enum WorldHandle {
    Builtin(Rc<World>),
    Files(Rc<FileWorld>),
}

impl std::fmt::Display for WorldHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorldHandle::Builtin(w) => write!(
                f,
                "World({}: {}-digit addition, {} offline pairs, {} eval prompts)",
                w.config.name,
                w.config.digits,
                w.pairs.len(),
                w.eval.len()
            ),
            WorldHandle::Files(w) => write!(
                f,
                "World({}: policy {}, {} offline pairs, {} prompts, {} eval prompts)",
                w.name,
                w.spec.policy,
                w.pairs.len(),
                w.prompts.len(),
                w.eval.len()
            ),
        }
    }
}

/// The built-in world, or an error naming what a world from files lacks.
fn builtin<'a>(w: &'a WorldHandle, what: &str) -> Res<&'a Rc<World>> {
    match w {
        WorldHandle::Builtin(b) => Ok(b),
        WorldHandle::Files(f) => Err(error(format!(
            "{what}: the world {} (from files) has no gold reward; check `w.has_gold`",
            f.name
        ))),
    }
}

/// A world from a spec, opened once per run.
fn open_files(run: &Run, name: &str, spec: WorldSpec) -> Res<WorldHandle> {
    let key = format!("files:{name}");
    if let Some(w) = run.file_worlds.borrow().get(&key) {
        return Ok(WorldHandle::Files(w.clone()));
    }
    let w = Rc::new(FileWorld::open(run, name, spec).map_err(fail("world"))?);
    run.file_worlds.borrow_mut().insert(key, w.clone());
    Ok(WorldHandle::Files(w))
}

fn open(run: &Run, config: WorldConfig) -> Res<WorldHandle> {
    let key = serde_json::to_string(&config).unwrap_or_default();
    if let Some(w) = run.worlds.borrow().get(&key) {
        return Ok(WorldHandle::Builtin(w.clone()));
    }
    let bar = ProgressBar::new(config.warmup.steps).with_prefix(format!(
        "warming up the {} world's policy (cached afterwards)",
        config.name
    ));
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed} loss {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let world = World::build(config, &run.options.device, &mut |step, _, loss| {
        if interrupted() {
            anyhow::bail!("interrupted during the warm-up (nothing was cached)");
        }
        bar.set_position(step);
        bar.set_message(format!("{loss:.3}"));
        Ok(())
    });
    bar.finish_and_clear();
    let world = Rc::new(world.map_err(fail("world"))?);
    run.worlds.borrow_mut().insert(key, world.clone());
    Ok(WorldHandle::Builtin(world))
}

fn strings(texts: Vec<crate::data::encode::Text>) -> Array {
    texts.iter().map(super::api_data::text_to_dynamic).collect()
}

pub fn register(api: &mut Family, run: &Rc<Run>) {
    api.ty::<WorldHandle>("World");
    let r = run.clone();
    api.func(
        "world",
        "(name: String) -> World",
        "A built-in world, \"default\" or \"tiny\" (seconds to build; for tests and the REPL), or a world from files: a path to a world .json (policy, reward, pairs, prompts, eval, lr, max_new_tokens, eval_temperature).",
        move |name: &str| match spec_path(name) {
            Some(path) => {
                let spec = WorldSpec::from_file(&path).map_err(fail("world"))?;
                open_files(&r, name, spec)
            }
            None => open(&r, WorldConfig::preset(name).map_err(fail("world"))?),
        },
    );
    let r = run.clone();
    api.func(
        "world",
        "(options: Map) -> World",
        "A built-in world with changes (name, seed, pairs, label_noise, annotator_noise, eval_temperature, warmup_steps), or with `policy` a world from files (keys as in a world .json).",
        move |opts: Map| -> Res<WorldHandle> {
            if opts.contains_key("policy") {
                let spec = WorldSpec::from_map(&opts).map_err(fail("world"))?;
                return open_files(&r, &spec.policy.clone(), spec);
            }
            let o = Opts::new("world options", &opts);
            let mut c = WorldConfig::preset(&o.string("name", "default")?).map_err(fail("world"))?;
            c.seed = o.usize("seed", c.seed as usize)? as u64;
            c.pairs = o.usize("pairs", c.pairs)?;
            c.label_noise = o.f64("label_noise", c.label_noise)?;
            c.annotator_noise = o.f64("annotator_noise", c.annotator_noise)?;
            c.eval_temperature = o.f64("eval_temperature", c.eval_temperature)?;
            c.warmup.steps = o.usize("warmup_steps", c.warmup.steps as usize)? as u64;
            o.finish()?;
            open(&r, c)
        },
    );
    let r = run.clone();
    api.func(
        "policy",
        "(world: World) -> Policy",
        "A fresh trainable copy of the world's initial (for the built-in worlds, warmed-up) policy.",
        move |w: &mut WorldHandle| -> Res<Policy> {
            match w {
                WorldHandle::Builtin(b) => {
                    let m = b.policy(true).map_err(fail("policy"))?;
                    Ok(Policy::new(m, b.tokenizer.clone(), &format!("{} world", b.config.name)))
                }
                WorldHandle::Files(f) => f.policy(&r).map_err(fail("policy")),
            }
        },
    );
    api.getter(
        "World",
        "pairs",
        "Pairs",
        "The offline preference pairs.",
        |w: &mut WorldHandle| match w {
            WorldHandle::Builtin(b) => Pairs::new(b.pairs.clone()),
            WorldHandle::Files(f) => Pairs::new(f.pairs.clone()),
        },
    );
    api.getter(
        "World",
        "prompts",
        "Array",
        "The training prompts.",
        |w: &mut WorldHandle| match w {
            WorldHandle::Builtin(b) => strings(b.train_prompts()),
            WorldHandle::Files(f) => strings(f.prompts.clone()),
        },
    );
    api.getter(
        "World",
        "eval_prompts",
        "Array",
        "The held-out evaluation prompts.",
        |w: &mut WorldHandle| match w {
            WorldHandle::Builtin(b) => strings(b.eval_prompts()),
            WorldHandle::Files(f) => strings(f.eval.clone()),
        },
    );
    api.getter(
        "World",
        "lr",
        "float",
        "The learning rate offline DPO uses on this world; the online scripts set their own (1e-5 by default), as their online part is unstable at this one.",
        |w: &mut WorldHandle| match w {
            WorldHandle::Builtin(b) => b.config.lr,
            WorldHandle::Files(f) => f.spec.lr,
        },
    );
    api.getter(
        "World",
        "max_new_tokens",
        "int",
        "New tokens to generate: enough for any answer of a built-in task; a file world's setting.",
        |w: &mut WorldHandle| match w {
            WorldHandle::Builtin(b) => b.max_new_tokens() as i64,
            WorldHandle::Files(f) => f.spec.max_new_tokens as i64,
        },
    );
    api.getter(
        "World",
        "name",
        "String",
        "The world's name.",
        |w: &mut WorldHandle| match w {
            WorldHandle::Builtin(b) => b.config.name.clone(),
            WorldHandle::Files(f) => f.name.clone(),
        },
    );
    api.getter(
        "World",
        "has_gold",
        "bool",
        "Whether the world has a gold reward (the built-in ones do; worlds from files do not).",
        |w: &mut WorldHandle| matches!(w, WorldHandle::Builtin(_)),
    );
    api.func(
        "gold",
        "(world: World, prompt: String, response: String) -> float",
        "The gold (true) reward of a response (built-in worlds). Not counted in annotations(): only annotate() is.",
        |w: &mut WorldHandle, p: &str, y: &str| {
            builtin(w, "gold")?.gold(p, y).map_err(fail("gold"))
        },
    );
    api.func(
        "annotator",
        "(world: World, prompt: String, response: String) -> float",
        "The annotator's reward: the gold reward plus fixed, per-text noise (built-in worlds). Not counted in annotations(): only annotate() is.",
        |w: &mut WorldHandle, p: &str, y: &str| {
            builtin(w, "annotator")?
                .annotator(p, y)
                .map_err(fail("annotator"))
        },
    );
    api.func(
        "evaluate",
        "(policy: Policy, world: World) -> Map",
        "Built-in worlds: eval/gold_reward, eval/success and eval/win_rate (vs the warm-up policy) on the held-out prompts; worlds from files: eval/reward (the reward model's mean) and eval/win_rate (vs the initial policy).",
        |p: Policy, w: WorldHandle| -> Res<Map> {
            let b = match &w {
                WorldHandle::Builtin(b) => b,
                WorldHandle::Files(f) => return f.evaluate(&p).map_err(fail("evaluate")),
            };
            let e = b.evaluate(&p.0.model).map_err(fail("evaluate"))?;
            let mut m = Map::new();
            m.insert("eval/gold_reward".into(), Dynamic::from_float(e.gold_reward));
            m.insert("eval/success".into(), Dynamic::from_float(e.success));
            m.insert("eval/win_rate".into(), Dynamic::from_float(e.win_rate));
            Ok(m)
        },
    );
}

//! world: the built-in default world (a verifiable arithmetic task with a warmed-up policy,
//! gold and annotator rewards, noisy off-policy pairs and an evaluation set) and `evaluate`.

use super::api_data::Pairs;
use super::api_model::Policy;
use super::opts::Opts;
use super::registry::{fail, Family, Res};
use super::run::{interrupted, Run};
use crate::world::{World, WorldConfig};
use indicatif::{ProgressBar, ProgressStyle};
use rhai::{Array, Dynamic, Map};
use std::rc::Rc;

#[derive(Clone)]
pub struct WorldHandle(pub Rc<World>);

impl std::fmt::Display for WorldHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.0.config;
        write!(
            f,
            "World({}: {}-digit addition, {} offline pairs, {} eval prompts)",
            c.name,
            c.digits,
            self.0.pairs.len(),
            self.0.eval.len()
        )
    }
}

fn open(run: &Run, config: WorldConfig) -> Res<WorldHandle> {
    let key = serde_json::to_string(&config).unwrap_or_default();
    if let Some(w) = run.worlds.borrow().get(&key) {
        return Ok(WorldHandle(w.clone()));
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
    Ok(WorldHandle(world))
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
        "A built-in world: \"default\" or \"tiny\" (seconds to build; for tests and the REPL).",
        move |name: &str| open(&r, WorldConfig::preset(name).map_err(fail("world"))?),
    );
    let r = run.clone();
    api.func(
        "world",
        "(options: Map) -> World",
        "A built-in world with changes: name, seed, pairs, label_noise, annotator_noise, eval_temperature, warmup_steps.",
        move |opts: Map| -> Res<WorldHandle> {
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
    api.func(
        "policy",
        "(world: World) -> Policy",
        "A fresh trainable copy of the world's warmed-up policy.",
        |w: &mut WorldHandle| -> Res<Policy> {
            let m = w.0.policy(true).map_err(fail("policy"))?;
            Ok(Policy::new(
                m,
                w.0.tokenizer.clone(),
                &format!("{} world", w.0.config.name),
            ))
        },
    );
    api.getter(
        "World",
        "pairs",
        "Pairs",
        "The offline preference pairs (off-policy, label noise).",
        |w: &mut WorldHandle| Pairs::new(w.0.pairs.clone()),
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
        "A learning rate that suits preference training here.",
        |w: &mut WorldHandle| w.0.config.lr,
    );
    api.getter(
        "World",
        "max_new_tokens",
        "int",
        "Enough new tokens for any answer of the world's task.",
        |w: &mut WorldHandle| w.0.max_new_tokens() as i64,
    );
    api.getter(
        "World",
        "name",
        "String",
        "The world's name.",
        |w: &mut WorldHandle| w.0.config.name.clone(),
    );
    api.func(
        "gold",
        "(world: World, prompt: String, response: String) -> float",
        "The gold (true) reward of a response.",
        |w: &mut WorldHandle, p: &str, y: &str| w.0.gold(p, y).map_err(fail("gold")),
    );
    api.func(
        "annotator",
        "(world: World, prompt: String, response: String) -> float",
        "The annotator's reward: the gold reward plus fixed, per-text noise.",
        |w: &mut WorldHandle, p: &str, y: &str| w.0.annotator(p, y).map_err(fail("annotator")),
    );
    api.func(
        "evaluate",
        "(policy: Policy, world: World) -> Map",
        "eval/gold_reward, eval/success and eval/win_rate (vs the warm-up policy) on the held-out prompts.",
        |p: Policy, w: WorldHandle| -> Res<Map> {
            let e = w.0.evaluate(&p.0.model).map_err(fail("evaluate"))?;
            let mut m = Map::new();
            m.insert("eval/gold_reward".into(), Dynamic::from_float(e.gold_reward));
            m.insert("eval/success".into(), Dynamic::from_float(e.success));
            m.insert("eval/win_rate".into(), Dynamic::from_float(e.win_rate));
            Ok(m)
        },
    );
}

//! model: policies (the engine's `Policy`): `load_policy` reads HF directories and GGUF files;
//! `frozen()` makes a reference copy that shares nothing mutable and caches its log-probs per
//! sequence.

use super::opts::{replace_rule, OVERWRITE_HINT};
use super::registry::{fail, Family, Res};
use super::run::Run;
use crate::model::hf;
use crate::policy::Policy;
use rhai::Map;
use std::rc::Rc;

fn save(run: &Run, p: &Policy, dir: &str, opts: &Map) -> Res<String> {
    let replace = replace_rule("save options", opts)?;
    let path = run.output(dir).map_err(fail("save"))?;
    hf::save_as(
        &path,
        p.model(),
        Some(p.tokenizer()),
        replace,
        OVERWRITE_HINT,
    )
    .map_err(fail("save"))?;
    Ok(path.display().to_string())
}

pub fn register(api: &mut Family, run: &Rc<Run>) {
    api.ty::<Policy>("Policy");
    let r = run.clone();
    api.func(
        "load_policy",
        "(path: String) -> Policy",
        "A trainable policy from a HF directory or .gguf file (\"smollm2\" fetches SmolLM2-135M).",
        move |path: &str| Policy::load(path, &r.options.device, true).map_err(fail("load_policy")),
    );
    api.func(
        "frozen",
        "(policy: Policy) -> Policy",
        "A frozen reference copy: shares nothing with the policy; log-probs cached per sequence.",
        |p: &mut Policy| p.frozen().map_err(fail("frozen")),
    );
    let r = run.clone();
    api.func(
        "save",
        "(policy: Policy, dir: String) -> String",
        "Saves a HF directory (atomically); a relative dir is inside the run directory. Refuses a folder that is not empty, unless it holds a model saved earlier and overwrite is set (save(dir, #{ overwrite: true })). Returns the path.",
        move |p: &mut Policy, dir: &str| save(&r, p, dir, &Map::new()),
    );
    let r = run.clone();
    api.func(
        "save",
        "(policy: Policy, dir: String, options: Map) -> String",
        "save(dir) with options: overwrite (false): replace a model saved there earlier (files metaapo did not write stay).",
        move |p: &mut Policy, dir: &str, opts: Map| save(&r, p, dir, &opts),
    );
    api.getter(
        "Policy",
        "parameters",
        "int",
        "Number of parameters.",
        |p: &mut Policy| p.model().num_parameters() as i64,
    );
    api.getter(
        "Policy",
        "trainable",
        "bool",
        "Whether the optimizer can train it (false for frozen copies).",
        |p: &mut Policy| p.model().is_trainable(),
    );
}

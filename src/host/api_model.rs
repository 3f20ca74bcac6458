//! model: policies (the engine's `Policy`): `load_policy` reads HF directories and GGUF files;
//! `frozen()` makes a reference copy that shares nothing mutable and caches its log-probs per
//! sequence; `lora` puts PEFT-compatible LoRA adapters on a policy.

use super::opts::{defaults, replace_rule, Opts, OVERWRITE_HINT};
use super::registry::{fail, Family, Res};
use super::run::Run;
use crate::model::hf;
use crate::model::lora::LoraConfig;
use crate::policy::Policy;
use rhai::Map;
use std::rc::Rc;

fn lora(p: &Policy, opts: &Map) -> Res<Policy> {
    let o = Opts::new("lora options", opts);
    let cfg: LoraConfig = o.config()?;
    o.finish()?;
    p.with_lora(&cfg).map_err(fail("lora"))
}

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
        move |path: &str| {
            Policy::load(path, &r.options.device, true)
                .and_then(|p| r.options.precision(p))
                .map_err(fail("load_policy"))
        },
    );
    api.func(
        "frozen",
        "(policy: Policy) -> Policy",
        "A frozen reference copy: shares nothing with the policy; log-probs cached per sequence.",
        |p: &mut Policy| p.frozen().map_err(fail("frozen")),
    );
    api.func(
        "lora",
        "(policy: Policy) -> Policy",
        &format!("The policy with fresh LoRA adapters (B = 0, so it starts as the policy); only they train, and its frozen() reference shares the base weights. Defaults (PEFT's): {}.", defaults::<LoraConfig>()),
        |p: &mut Policy| lora(p, &Map::new()),
    );
    api.func(
        "lora",
        "(policy: Policy, options: Map) -> Policy",
        "lora(policy) with options: rank, alpha (scale alpha/rank), dropout, targets (projection names or [\"all-linear\"]), seed.",
        |p: &mut Policy, opts: Map| lora(p, &opts),
    );
    api.func(
        "load_adapter",
        "(policy: Policy, dir: String) -> Policy",
        "The policy with the LoRA adapter of a PEFT directory (adapter_config.json, adapter_model.safetensors; e.g. one save() wrote), trainable. Like load_policy, a relative dir is from the working directory.",
        |p: &mut Policy, dir: &str| {
            p.with_adapter(std::path::Path::new(dir))
                .map_err(fail("load_adapter"))
        },
    );
    api.func(
        "gradient_checkpointing",
        "(policy: Policy, on: bool) -> Policy",
        "The policy (the same weights) with gradient checkpointing per decoder layer on or off: training forwards keep each layer's input instead of its activations, and the backward pass runs the layers again (TRL's gradient_checkpointing).",
        |p: &mut Policy, on: bool| p.with_checkpointing(on).map_err(fail("gradient_checkpointing")),
    );
    api.func(
        "merge",
        "(policy: Policy) -> Policy",
        "A LoRA policy's adapters folded into its weights (W + alpha/rank·B·A): a plain trainable policy, which save() writes as a HF directory.",
        |p: &mut Policy| p.merged().map_err(fail("merge")),
    );
    let r = run.clone();
    api.func(
        "save",
        "(policy: Policy, dir: String) -> String",
        "Saves a HF directory (a LoRA policy: its PEFT adapter directory), atomically; a relative dir is inside the run directory. Refuses a folder that is not empty, unless it holds a model saved earlier and overwrite is set (save(dir, #{ overwrite: true })). Returns the path.",
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

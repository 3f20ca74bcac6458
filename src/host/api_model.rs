//! model: policies as scripts hold them: a decoder with its tokenizer and encoding rules.
//! `load_policy` reads HF directories and GGUF files; `frozen()` makes a reference copy that
//! shares nothing mutable and caches its log-probs per sequence.

use super::opts::Opts;
use super::registry::{fail, Family, Res};
use super::run::Run;
use crate::atomic::Replace;
use crate::data::encode::EncodeConfig;
use crate::model::tokenizer::TextTokenizer;
use crate::model::{hf, CausalLm};
use crate::fetch;
use crate::model::load_pretrained;
use anyhow::Context;
use candle_core::DType;
use rhai::Map;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// An encoded sequence: token ids and prompt length.
pub type SeqKey = (Vec<u32>, usize);

pub struct PolicyInner {
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    pub encode: EncodeConfig,
    pub name: String,
    /// Summed and mean response log-prob per encoded sequence, for frozen models only.
    pub cache: RefCell<HashMap<SeqKey, (f64, f64)>>,
}

#[derive(Clone)]
pub struct Policy(pub Rc<PolicyInner>);

impl Policy {
    pub fn new(model: CausalLm, tokenizer: TextTokenizer, name: &str) -> Self {
        let encode = EncodeConfig::for_context(model.config.max_position_embeddings);
        Self(Rc::new(PolicyInner {
            model,
            tokenizer,
            encode,
            name: name.to_string(),
            cache: RefCell::new(HashMap::new()),
        }))
    }

    /// Token ids that end a generation: the tokenizer's EOS and the config's `eos_token_id`s.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut ids = vec![self.0.tokenizer.eos_token_id];
        ids.extend(&self.0.model.config.eos_token_ids);
        ids.dedup();
        ids
    }

    pub fn frozen(&self) -> anyhow::Result<Self> {
        Ok(Self::new(
            self.0.model.frozen()?,
            self.0.tokenizer.clone(),
            &format!("{} (frozen)", self.0.name),
        ))
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.0.model;
        write!(
            f,
            "Policy({}: {} layers, {} parameters, {})",
            self.0.name,
            m.config.num_hidden_layers,
            m.num_parameters(),
            if m.is_trainable() {
                "trainable"
            } else {
                "frozen"
            }
        )
    }
}

/// Where an output goes: an absolute path as given (the user named the place), a relative one
/// inside the run directory, which it may not leave through `..`.
pub fn in_run(run: &Run, path: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(path);
    if path.trim().is_empty() {
        anyhow::bail!("an output needs a name (got an empty path)");
    }
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    if p.components().any(|c| c == std::path::Component::ParentDir) {
        anyhow::bail!(
            "{path:?} would leave the run directory (`..`); give a path inside it, or an absolute one"
        );
    }
    Ok(run.report()?.dir().join(p))
}

/// A policy from a HF directory, a `.gguf` file, or "smollm2" (fetched), trainable or frozen.
pub fn policy_from(run: &Run, path: &str, trainable: bool) -> anyhow::Result<Policy> {
    let file = if path == "smollm2" {
        fetch::ensure(&fetch::SMOLLM2)?.join(fetch::SMOLLM2_GGUF)
    } else {
        PathBuf::from(path)
    };
    let (model, tok) = load_pretrained(&file, &run.options.device, DType::F32, trainable)?;
    let tok = tok.with_context(|| format!("{path} has no tokenizer (tokenizer.json)"))?;
    Ok(Policy::new(model, tok, path))
}

/// What a refused script save tells the user to do.
pub const OVERWRITE_HINT: &str = "pass save(dir, #{ overwrite: true })";

/// `overwrite` in a save's options, as the replacement rule of [`crate::atomic`].
pub fn replace_rule(what: &str, opts: &Map) -> Res<Replace> {
    let o = Opts::new(what, opts);
    let overwrite = o.bool("overwrite", false)?;
    o.finish()?;
    Ok(if overwrite {
        Replace::SameKind
    } else {
        Replace::Never
    })
}

fn save(run: &Run, p: &Policy, dir: &str, opts: &Map) -> Res<String> {
    let replace = replace_rule("save options", opts)?;
    let path = in_run(run, dir).map_err(fail("save"))?;
    hf::save_as(
        &path,
        &p.0.model,
        Some(&p.0.tokenizer),
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
        move |path: &str| policy_from(&r, path, true).map_err(fail("load_policy")),
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
        |p: &mut Policy| p.0.model.num_parameters() as i64,
    );
    api.getter(
        "Policy",
        "trainable",
        "bool",
        "Whether the optimizer can train it (false for frozen copies).",
        |p: &mut Policy| p.0.model.is_trainable(),
    );
}

//! A world built from files, so every script runs unchanged on a user's own model and data:
//! a policy (HF directory, `.gguf`, or "smollm2"), a reward model (`load_reward` directory),
//! TRL preference pairs, training prompts and evaluation prompts. With no gold reward, `evaluate`
//! reports the reward model's mean reward on the evaluation prompts and the win rate against the
//! initial policy (greedy or seeded samples, the same prompts for both).

use super::{Split, World};
use crate::data::encode::{render, Text};
use crate::data::pairs::{located_pairs, located_prompts, Pair};
use crate::generate::SampleConfig;
use crate::policy::Policy;
use crate::reward::RewardModel;
use crate::serving::{Server, ServerOptions};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Deserialize;
use serde_json::Value;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// `world.json`: paths are relative to the file; `policy` may also be "smollm2", `reward` a
/// directory written by `rm.save`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldSpec {
    pub policy: String,
    pub reward: String,
    pub pairs: String,
    /// Training prompts; the pairs' prompts when absent.
    pub prompts: Option<String>,
    pub eval: String,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// 0 evaluates greedily.
    #[serde(default)]
    pub eval_temperature: f64,
    /// A serving engine the online scripts sample from (`server(#{...})`'s options); none
    /// samples here. Evaluation always generates here.
    #[serde(default)]
    pub server: Option<Value>,
}

fn default_lr() -> f64 {
    5e-7
}

fn default_max_new_tokens() -> usize {
    64
}

impl WorldSpec {
    /// Reads a spec file; its relative paths become relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut spec: Self = crate::textfile::read_json(path)
            .with_context(|| format!("{} is not a world spec", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut String| {
            if p != "smollm2" && Path::new(p.as_str()).is_relative() {
                *p = base.join(p.as_str()).display().to_string();
            }
        };
        for p in [
            &mut spec.policy,
            &mut spec.reward,
            &mut spec.pairs,
            &mut spec.eval,
        ] {
            resolve(p);
        }
        if let Some(p) = spec.prompts.as_mut() {
            resolve(p);
        }
        spec.validate()
            .with_context(|| path.display().to_string())?;
        Ok(spec)
    }

    /// A spec from a JSON object with the same keys (paths as given).
    pub fn from_value(json: Value) -> Result<Self> {
        let spec: Self = crate::textfile::from_value(json)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The values a world needs, checked when it is read rather than when first used.
    fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("field `lr` must be a positive number, got {}", self.lr);
        }
        if !(self.eval_temperature.is_finite() && self.eval_temperature >= 0.0) {
            bail!(
                "field `eval_temperature` must be 0 (greedy) or positive, got {}",
                self.eval_temperature
            );
        }
        if self.max_new_tokens == 0 {
            bail!("field `max_new_tokens` must be at least 1");
        }
        if let Some(s) = &self.server {
            ServerOptions::from_value(s).context("field `server`")?;
        }
        Ok(())
    }
}

pub struct FileWorld {
    pub name: String,
    pub spec: WorldSpec,
    device: Device,
    /// The initial policy, frozen: the win-rate baseline.
    initial: Policy,
    reward: Rc<dyn RewardModel>,
    pub pairs: Vec<Pair>,
    pub prompts: Vec<Text>,
    pub eval: Vec<Text>,
    /// The initial policy's evaluation rewards, computed on first use.
    baseline: RefCell<Option<Vec<f64>>>,
    server: Option<Rc<Server>>,
}

impl FileWorld {
    pub fn open(name: &str, spec: WorldSpec, device: &Device) -> Result<Self> {
        let initial = Policy::load(&spec.policy, device, false)?;
        let reward: Rc<dyn RewardModel> = crate::reward::load(&spec.reward, device)
            .with_context(|| format!("the world's reward {:?}", spec.reward))?
            .into();
        let pairs = located_pairs(Path::new(&spec.pairs))?;
        let prompts = match &spec.prompts {
            Some(p) => located_prompts(Path::new(p))?,
            None => pairs
                .iter()
                .map(|(at, p)| (at.clone(), p.prompt.clone()))
                .collect(),
        };
        let eval = located_prompts(Path::new(&spec.eval))?;
        for (field, file, empty) in [
            ("pairs", &spec.pairs, pairs.is_empty()),
            (
                "prompts",
                spec.prompts.as_ref().unwrap_or(&spec.pairs),
                prompts.is_empty(),
            ),
            ("eval", &spec.eval, eval.is_empty()),
        ] {
            if empty {
                bail!(
                    "{file} (the world's `{field}`) holds no records; a world needs at least one"
                );
            }
        }
        // Every example must render with the policy's chat template now, not at its first use.
        let tok = initial.tokenizer();
        let template = |at: &str| format!("{at}: the policy's chat template");
        for (at, p) in &pairs {
            for response in [&p.chosen, &p.rejected] {
                render(tok, &p.prompt, response).with_context(|| template(at))?;
            }
        }
        for (at, t) in prompts.iter().chain(&eval) {
            render(tok, t, &Text::Plain(String::new())).with_context(|| template(at))?;
        }
        let server = match &spec.server {
            None => None,
            Some(s) => Some(Rc::new(
                ServerOptions::from_value(s)
                    .and_then(|o| o.connect())
                    .context("the world's server")?,
            )),
        };
        let strip = |v: Vec<(String, Text)>| v.into_iter().map(|(_, t)| t).collect();
        let pairs = pairs.into_iter().map(|(_, p)| p).collect();
        let (prompts, eval) = (strip(prompts), strip(eval));
        Ok(Self {
            name: name.to_string(),
            spec,
            device: device.clone(),
            initial,
            reward,
            pairs,
            prompts,
            eval,
            baseline: RefCell::new(None),
            server,
        })
    }

    /// The reward model's rewards of one answer per evaluation prompt (not counted as
    /// annotations: evaluation is not training data).
    fn eval_rewards(&self, policy: &Policy) -> Result<Vec<f64>> {
        let cfg = SampleConfig {
            temperature: self.spec.eval_temperature,
            max_new_tokens: self.spec.max_new_tokens,
            ..SampleConfig::default()
        };
        let responses: Vec<Text> = policy
            .generate(&self.eval, &cfg, &[])
            .context("evaluate")?
            .into_iter()
            .map(|c| Text::Plain(c.text))
            .collect();
        self.reward.rewards(&self.eval, &responses)
    }
}

impl World for FileWorld {
    fn name(&self) -> &str {
        &self.name
    }

    fn server(&self) -> Option<Rc<Server>> {
        self.server.clone()
    }

    fn describe(&self) -> String {
        format!(
            "{}: policy {}, {} offline pairs, {} prompts, {} eval prompts",
            self.name,
            self.spec.policy,
            self.pairs.len(),
            self.prompts.len(),
            self.eval.len()
        )
    }

    fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    fn train_prompts(&self) -> Vec<Text> {
        self.prompts.clone()
    }

    fn eval_prompts(&self) -> Vec<Text> {
        self.eval.clone()
    }

    fn lr(&self) -> f64 {
        self.spec.lr
    }

    fn max_new_tokens(&self) -> usize {
        self.spec.max_new_tokens
    }

    /// Read again from its files.
    fn policy(&self) -> Result<Policy> {
        Policy::load(&self.spec.policy, &self.device, true)
    }

    fn reward(&self) -> Rc<dyn RewardModel> {
        self.reward.clone()
    }

    fn gold(&self) -> Option<Rc<dyn RewardModel>> {
        None
    }

    /// `eval/reward` (the reward model's mean) and `eval/win_rate` against the initial policy,
    /// on the spec's `eval` prompts, the only held-out split such a world has.
    fn evaluate(&self, policy: &Policy, split: Split) -> Result<Vec<(String, f64)>> {
        if split == Split::Validation {
            anyhow::bail!(
                "a world from files has one held-out split, its `eval` prompts (\"test\")"
            );
        }
        if self.baseline.borrow().is_none() {
            let b = self.eval_rewards(&self.initial)?;
            *self.baseline.borrow_mut() = Some(b);
        }
        let rewards = self.eval_rewards(policy)?;
        let baseline = self.baseline.borrow();
        let baseline = baseline.as_ref().expect("computed above");
        let mean = rewards.iter().sum::<f64>() / rewards.len() as f64;
        Ok(vec![
            ("eval/reward".into(), mean),
            (
                "eval/win_rate".into(),
                crate::reward::win_rate(&rewards, baseline),
            ),
        ])
    }
}

/// A world spec's path, if `name` names one.
pub fn spec_path(name: &str) -> Option<PathBuf> {
    name.ends_with(".json").then(|| PathBuf::from(name))
}

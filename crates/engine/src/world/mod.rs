//! Worlds: everything a preference-optimisation run needs from its environment, behind one
//! interface ([`World`]): offline pairs, training and evaluation prompts, a starting policy, a
//! reward model to annotate with, where known a gold reward, and an evaluation. The built-in
//! worlds ([`builtin`], a verifiable arithmetic task, docs/ARCHITECTURE.md) are built in-process;
//! [`files`] opens a user's model and data.

pub mod builtin;
pub mod files;
pub mod premise;
pub mod task;
pub mod vocab;
pub mod warmup;

pub use builtin::{BuiltinWorld, Evaluation, WorldConfig};
pub use files::{FileWorld, WorldSpec};

use crate::data::encode::Text;
use crate::data::pairs::Pair;
use crate::policy::Policy;
use crate::reward::RewardModel;
use crate::serving::Server;
use anyhow::{bail, Result};
use std::rc::Rc;

/// Which held-out prompts an evaluation uses: the validation split for choosing settings, the
/// test split (`eval`) for reported numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Validation,
    Test,
}

impl Split {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "validation" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            other => bail!("unknown split {other:?}: the splits are \"validation\" and \"test\""),
        }
    }

    /// The metric prefix: `eval/` for the test split (the name every run has logged), and
    /// `validation/`.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Validation => "validation",
            Split::Test => "eval",
        }
    }
}

pub trait World {
    fn name(&self) -> &str;

    /// One line for logs and the REPL.
    fn describe(&self) -> String;

    /// The offline preference pairs.
    fn pairs(&self) -> &[Pair];

    fn train_prompts(&self) -> Vec<Text>;

    /// Held out from training.
    fn eval_prompts(&self) -> Vec<Text>;

    /// The learning rate offline DPO takes on this world (online loops set their own).
    fn lr(&self) -> f64;

    /// New tokens a response needs.
    fn max_new_tokens(&self) -> usize;

    /// A fresh trainable copy of the starting policy, sharing nothing with the world.
    fn policy(&self) -> Result<Policy>;

    /// The reward model that annotates online samples.
    fn reward(&self) -> Rc<dyn RewardModel>;

    /// The true reward, where the world knows it (evaluation only, never training data).
    fn gold(&self) -> Option<Rc<dyn RewardModel>>;

    /// The serving engine online samples come from, where the world names one.
    fn server(&self) -> Option<Rc<Server>> {
        None
    }

    /// Named metrics of a policy on a held-out split (`eval/...` for the test split,
    /// `validation/...`).
    fn evaluate(&self, policy: &Policy, split: Split) -> Result<Vec<(String, f64)>>;
}

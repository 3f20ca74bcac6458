//! The host's script-visible wrapper types, in one place: each holds an engine value (shared
//! through `Rc`, as scripts copy handles freely) and shows itself through `Display`. The family
//! files register and convert them.

use crate::data::pairs::Pair;
use crate::meta::{self, MetaLearner};
use crate::policy::Policy;
use crate::score::Scores;
use crate::train::Trainer;
use crate::{reward, serving, world};
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Clone)]
pub struct Pairs(pub Rc<Vec<Pair>>);

impl std::fmt::Display for Pairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pairs({})", self.0.len())
    }
}

impl Pairs {
    pub fn new(pairs: Vec<Pair>) -> Self {
        Self(Rc::new(pairs))
    }
}

/// `Scores` as scripts hold it.
#[derive(Clone)]
pub struct ScoresValue(pub Rc<Scores>);

impl std::fmt::Display for ScoresValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scores({} pairs)", self.0.n)
    }
}

/// The engine's reward models as scripts hold them.
#[derive(Clone)]
pub struct RewardModel(pub Rc<dyn reward::RewardModel>);

impl std::fmt::Display for RewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RewardModel({})", self.0.describe())
    }
}

/// The engine's worlds as scripts hold them.
#[derive(Clone)]
pub struct WorldHandle(pub Rc<dyn world::World>);

impl std::fmt::Display for WorldHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "World({})", self.0.describe())
    }
}

#[derive(Clone)]
pub struct Learner(pub Rc<RefCell<MetaLearner>>);

impl std::fmt::Display for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = self.0.borrow();
        write!(
            f,
            "MetaLearner(1 -> {} -> 1, {:?} init, {} updates)",
            l.config.hidden,
            l.config.init,
            l.steps()
        )
    }
}

/// The engine's meta-buffer as scripts hold it: shared, so `push` inside a helper is seen by
/// its caller.
#[derive(Clone, Default)]
pub struct MetaBuffer(pub Rc<RefCell<meta::MetaBuffer>>);

impl std::fmt::Display for MetaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MetaBuffer({} examples)", self.0.borrow().len())
    }
}

pub struct OptimizerInner {
    pub trainer: Trainer,
    pub policy: Policy,
}

#[derive(Clone)]
pub struct Optimizer(pub Rc<RefCell<OptimizerInner>>);

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Optimizer(AdamW, {} steps)",
            self.0.borrow().trainer.steps()
        )
    }
}

/// A serving engine as scripts hold it, with the exports its syncs wrote (the oldest are
/// removed past `keep_exports`).
#[derive(Clone)]
pub struct ServerHandle(pub Rc<serving::Server>);

impl std::fmt::Display for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Server({})", self.0.describe())
    }
}

/// A pairwise LLM judge.
#[derive(Clone)]
pub struct PairJudge(pub Rc<serving::Judge>);

impl std::fmt::Display for PairJudge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::reward::RewardModel;
        write!(f, "PairJudge({})", self.0.describe())
    }
}

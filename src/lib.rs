//! metaapo: a scripting host for preference optimisation of language models (MetaAPO and its
//! baselines). The engine (`metaapo-engine`, re-exported here whole, so `metaapo::model` is the
//! engine's `model`) does the work; `host` registers it with Rhai and only converts values.

pub use metaapo_engine::*;

pub mod host;

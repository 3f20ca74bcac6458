//! metaapo's engine: the decoder and its loading, tokenization, scoring, generation, reward
//! models, preference objectives, the meta-learner, training and the built-in worlds. It knows
//! nothing of scripts or the command line; the `metaapo` crate is a Rhai host over it.
//! `docs/ARCHITECTURE.md` draws the layers.

pub mod atomic;
pub mod data;
pub mod device;
pub mod fetch;
pub mod generate;
pub mod interrupt;
pub mod kernels;
pub mod memory;
pub mod meta;
pub mod model;
pub mod objective;
pub mod policy;
pub mod report;
pub mod reward;
pub mod score;
pub mod selftest;
pub mod serving;
pub mod textfile;
pub mod threads;
pub mod train;
pub mod world;

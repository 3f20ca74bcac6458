//! Turning text into model inputs: TRL-style prompt/response encoding with truncation, and
//! padding sequences into a batch.

pub mod batch;
pub mod encode;
pub mod pairs;

//! metaapo: a scripting host for preference optimisation of language models (MetaAPO and its
//! baselines). This crate's engine layer: the decoder, loading, tokenization, scoring,
//! objectives and optimizer. It knows nothing of scripts.

pub mod atomic;
pub mod data;
pub mod device;
pub mod fetch;
pub mod generate;
pub mod host;
pub mod interrupt;
pub mod kernels;
pub mod memory;
pub mod meta;
pub mod model;
pub mod objective;
pub mod report;
pub mod reward;
pub mod score;
pub mod textfile;
pub mod train;
pub mod world;

use anyhow::Result;
use candle_core::{DType, Device};
use model::{tokenizer::TextTokenizer, CausalLm};
use std::path::Path;

/// Loads a model from a HF directory or a `.gguf` file. A tokenizer whose ids go past the
/// model's vocabulary is refused here, rather than failing at the first such token.
pub fn load_pretrained(
    path: &Path,
    device: &Device,
    dtype: DType,
    trainable: bool,
) -> Result<(CausalLm, Option<TextTokenizer>)> {
    let (model, tokenizer) = if path.extension().is_some_and(|e| e == "gguf") {
        let (m, t) = model::gguf::load(path, device, dtype, trainable)?;
        (m, Some(t))
    } else {
        model::hf::load(path, device, dtype, trainable)?
    };
    if let Some(t) = &tokenizer {
        if t.vocab_size() > model.config.vocab_size {
            anyhow::bail!(
                "{}: the tokenizer has {} ids but the model's vocabulary (`vocab_size` in its \
                 config) has {}: they do not belong together",
                path.display(),
                t.vocab_size(),
                model.config.vocab_size
            );
        }
    }
    Ok((model, tokenizer))
}

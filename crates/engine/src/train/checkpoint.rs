//! Checkpoints: the policy as a HF directory, plus `optimizer.safetensors` and
//! `trainer_state.json` (counters and RNG state), written atomically as one folder.

use super::optimizer::AdamW;
use crate::atomic;
use crate::model::{hf, tokenizer::TextTokenizer, CausalLm};
use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const TRAINER_STATE: &str = "trainer_state.json";
/// The kind of folder a checkpoint is (see [`atomic`]).
pub const KIND: &str = "checkpoint";

/// A checkpoint name must be one plain folder name, so it stays inside `checkpoints/`.
pub fn check_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !atomic::is_temporary(name);
    if !plain {
        bail!(
            "checkpoint name {name:?} must be a plain folder name (no `/`, `\\`, leading `.` or \
             `.tmp-`), so that it stays inside the run's checkpoints/"
        );
    }
    Ok(())
}

/// The exact position of a ChaCha8 stream, so a resumed run draws the same numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    /// A u128 as a decimal string (JSON numbers cannot hold it).
    pub word_pos: String,
}

impl RngState {
    pub fn capture(rng: &ChaCha8Rng) -> Self {
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    pub fn restore(&self) -> Result<ChaCha8Rng> {
        let mut rng = ChaCha8Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(
            self.word_pos
                .parse()
                .context("rng word_pos is not an integer")?,
        );
        Ok(rng)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub global_step: u64,
    pub rng: RngState,
    /// Free-form counters owned by the training loop (epoch, annotations, ...).
    #[serde(default)]
    pub counters: serde_json::Map<String, serde_json::Value>,
    /// Meta-learners saved alongside, each in the subdirectory of its name.
    #[serde(default)]
    pub meta_learners: Vec<String>,
}

/// Writes a checkpoint atomically; `extra` adds the caller's own files (meta-learners) to the
/// same temporary directory, so the checkpoint appears whole or not at all.
pub fn save(
    dir: &Path,
    model: &CausalLm,
    tokenizer: Option<&TextTokenizer>,
    optimizer: &AdamW,
    state: &TrainerState,
    extra: &dyn Fn(&Path) -> Result<()>,
) -> Result<()> {
    // A checkpoint is the run's own output: writing one again replaces it.
    atomic::write_dir(dir, KIND, atomic::Replace::SameKind, "", |tmp| {
        hf::write_into(tmp, model, tokenizer)?;
        optimizer.save(&tmp.join(OPTIMIZER))?;
        atomic::fault_point(OPTIMIZER);
        std::fs::write(
            tmp.join(TRAINER_STATE),
            serde_json::to_string_pretty(state)?,
        )?;
        atomic::fault_point(TRAINER_STATE);
        extra(tmp)?;
        atomic::fault_point("the caller's files");
        Ok(())
    })
    .with_context(|| format!("writing checkpoint {}", dir.display()))
}

/// Reads `trainer_state.json`; the model loads with [`hf::load`] (or into a trainable one with
/// [`CausalLm::assign`]) and the optimizer with [`AdamW::load`] on `dir/optimizer.safetensors`.
pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(TRAINER_STATE);
    crate::textfile::read_json(&path)
}

/// The checkpoint a resume should start from: `path` itself when it is a complete one, or, for a
/// run directory, its complete `checkpoints/*` with the highest global step. A checkpoint is
/// complete once its marker is written (last); temporary folders of an interrupted write are
/// never chosen, and those of dead processes are removed here.
pub fn latest(path: &Path) -> Result<std::path::PathBuf> {
    if path.join(TRAINER_STATE).is_file() {
        if !atomic::is_complete(path, KIND) {
            bail!(
                "{} is an incomplete checkpoint (no {} marker: its write was interrupted); \
                 resume from its run directory or an earlier checkpoint",
                path.display(),
                atomic::MARKER
            );
        }
        return Ok(path.to_path_buf());
    }
    let dir = path.join("checkpoints");
    let entries = std::fs::read_dir(&dir).with_context(|| {
        format!(
            "{} is neither a checkpoint (no {TRAINER_STATE}) nor a run directory with checkpoints/",
            path.display()
        )
    })?;
    atomic::clean_stale(&dir, None);
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let p = entry.path();
        if atomic::is_temporary(&name) || !atomic::is_complete(&p, KIND) {
            continue;
        }
        if let Ok(state) = load_state(&p) {
            if best
                .as_ref()
                .is_none_or(|(step, _)| state.global_step >= *step)
            {
                best = Some((state.global_step, p));
            }
        }
    }
    best.map(|(_, p)| p)
        .with_context(|| format!("{} holds no complete checkpoint", dir.display()))
}

//! The meta-buffer: detached `(s, ℓ_off, ℓ_on)` of the examples trained since the last meta
//! update, which the meta-learner is fitted on (docs/ALGORITHMS.md, "MetaAPO").

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaBuffer {
    /// Preference scores `s = log σ(β_in·Δ_off)`.
    pub scores: Vec<f64>,
    /// Offline losses ℓ_off.
    pub offline: Vec<f64>,
    /// Online losses ℓ_on (0 where a prompt got no online pair).
    pub online: Vec<f64>,
}

impl MetaBuffer {
    /// Adds one triple per example; the three columns must have one length.
    pub fn push(&mut self, scores: &[f64], offline: &[f64], online: &[f64]) -> Result<()> {
        if offline.len() != scores.len() || online.len() != scores.len() {
            bail!(
                "{} scores, {} offline and {} online losses (need one each)",
                scores.len(),
                offline.len(),
                online.len()
            );
        }
        self.scores.extend(scores);
        self.offline.extend(offline);
        self.online.extend(online);
        Ok(())
    }

    /// Checks a buffer read back from a checkpoint.
    pub fn validate(&self) -> Result<()> {
        let lens = [self.scores.len(), self.offline.len(), self.online.len()];
        if lens[1] != lens[0] || lens[2] != lens[0] {
            bail!("columns of lengths {lens:?} (scores, offline, online)");
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

//! The default world's supervised warm-up: next-token training on a sloppy teacher's answers,
//! fresh samples every step, so the policy inherits the teacher's mistakes.

use super::task::{Problem, Teacher};
use crate::data::encode::{encode, EncodeConfig, Text};
use crate::model::tokenizer::TextTokenizer;
use crate::model::CausalLm;
use crate::score::sequence_logps;
use crate::train::optimizer::AdamWConfig;
use crate::train::schedule::{Schedule, ScheduleKind};
use crate::train::Trainer;
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Warmup {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
}

/// Trains `model` in place; `progress(step, loss)` is called after every step and may stop it
/// by returning an error.
pub fn sft(
    model: &CausalLm,
    tok: &TextTokenizer,
    prompts: &[Problem],
    teacher: &Teacher,
    cfg: &Warmup,
    seed: u64,
    progress: &mut dyn FnMut(u64, f64) -> Result<()>,
) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let opt_cfg = AdamWConfig {
        lr: cfg.lr,
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let schedule = Schedule {
        kind: ScheduleKind::Cosine,
        lr: cfg.lr,
        warmup_steps: cfg.steps / 20,
        total_steps: cfg.steps,
        min_lr_ratio: 0.1,
    };
    let mut trainer = Trainer::new(model.vars(), opt_cfg, schedule, 1)?;
    for step in 0..cfg.steps {
        let seqs = (0..cfg.batch)
            .map(|_| {
                let p = &prompts[rng.random_range(0..prompts.len())];
                let answer = teacher.answer(p, &mut rng);
                encode(
                    tok,
                    &Text::Plain(p.prompt()),
                    &Text::Plain(answer),
                    &EncodeConfig::default(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let tokens: usize = seqs.iter().map(|s| s.response_len()).sum();
        let lp = sequence_logps(model, &seqs, tok.pad_token_id)?.sum;
        let loss = (lp.sum_all()? / -(tokens as f64))?;
        drop(lp); // the loss alone holds the graph, so the backward pass can free it as it goes
        let value = loss.to_scalar::<f32>()? as f64;
        trainer.step(loss)?;
        progress(step + 1, value)?;
    }
    Ok(())
}

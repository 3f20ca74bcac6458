//! Reward models behind one interface ([`RewardModel`]): a Llama-family sequence classifier (HF
//! `LlamaForSequenceClassification`, the layout OpenRLHF reward models use), a BERT sentence
//! encoder with a linear head fitted on preference pairs by a Bradley-Terry loss, and the worlds'
//! own annotators.

pub mod bert;
pub mod bradley_terry;
pub mod classifier;
mod model;

pub use model::{accuracy, load, Classifier, HeadReward, RewardModel};

/// The fraction of positions where `a` beats `b` (ties count half): pairwise accuracy when `a`
/// scores the chosen responses and `b` the rejected, a win rate when they score two models.
pub fn win_rate(a: &[f64], b: &[f64]) -> f64 {
    let wins: f64 = a
        .iter()
        .zip(b)
        .map(|(a, b)| match a.total_cmp(b) {
            std::cmp::Ordering::Greater => 1.0,
            std::cmp::Ordering::Equal => 0.5,
            std::cmp::Ordering::Less => 0.0,
        })
        .sum();
    wins / a.len() as f64
}

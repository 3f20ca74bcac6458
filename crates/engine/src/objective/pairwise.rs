use super::{log_sigmoid, mean, reduce, scalar, values, LossOutput, Metrics};
use crate::score::PairLogps;
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    pub beta: f64,
    /// cDPO's ε: the assumed probability that a label is flipped (0 gives DPO).
    pub label_smoothing: f64,
    /// RPO's λ: adds `λ · NLL(y_w) / |y_w|` per pair.
    pub rpo_alpha: Option<f64>,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            label_smoothing: 0.0,
            rpo_alpha: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpoConfig {
    pub beta: f64,
}

impl Default for IpoConfig {
    fn default() -> Self {
        Self { beta: 0.1 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimpoConfig {
    pub beta: f64,
    /// The target margin γ (not γ/β).
    pub gamma: f64,
}

impl Default for SimpoConfig {
    fn default() -> Self {
        Self {
            beta: 2.5,
            gamma: 0.6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelmConfig {
    pub beta: f64,
    /// Weight α of the optimism term.
    pub alpha: f64,
}

impl Default for SelmConfig {
    fn default() -> Self {
        Self {
            beta: 0.01,
            alpha: 1e-4,
        }
    }
}

/// `Δ = [π(y_w) - ref(y_w)] - [π(y_l) - ref(y_l)]` on summed log-probs, with the two log-ratios.
fn log_ratios(policy: &PairLogps, reference: &PairLogps) -> Result<(Tensor, Tensor, Tensor)> {
    let chosen = (&policy.chosen.sum - &reference.chosen.sum)?;
    let rejected = (&policy.rejected.sum - &reference.rejected.sum)?;
    let delta = (&chosen - &rejected)?;
    Ok((chosen, rejected, delta))
}

/// TRL's metrics from per-pair implicit rewards and the policy's summed log-probs.
fn reward_metrics(
    loss: &Tensor,
    chosen_rewards: &Tensor,
    rejected_rewards: &Tensor,
    policy: &PairLogps,
) -> Result<Metrics> {
    let c = values(chosen_rewards)?;
    let r = values(rejected_rewards)?;
    let margins: Vec<f64> = c.iter().zip(&r).map(|(a, b)| a - b).collect();
    let acc: Vec<f64> = margins
        .iter()
        .map(|m| f64::from(u8::from(*m > 0.0)))
        .collect();
    Ok(Metrics::from([
        ("loss".into(), scalar(loss)?),
        ("rewards/chosen".into(), mean(&c)),
        ("rewards/rejected".into(), mean(&r)),
        ("rewards/margins".into(), mean(&margins)),
        ("rewards/accuracies".into(), mean(&acc)),
        ("logps/chosen".into(), mean(&values(&policy.chosen.sum)?)),
        (
            "logps/rejected".into(),
            mean(&values(&policy.rejected.sum)?),
        ),
    ]))
}

/// DPO `-log σ(βΔ)`; with label smoothing ε, cDPO `-(1-ε) log σ(βΔ) - ε log σ(-βΔ)`; with
/// `rpo_alpha` λ, plus `λ · NLL(y_w)/|y_w|`.
pub fn dpo(
    policy: &PairLogps,
    reference: &PairLogps,
    cfg: &DpoConfig,
    weights: Option<&Tensor>,
) -> Result<LossOutput> {
    let (chosen, rejected, delta) = log_ratios(policy, reference)?;
    let z = (&delta * cfg.beta)?;
    let mut per = (log_sigmoid(&z)? * -(1.0 - cfg.label_smoothing))?;
    if cfg.label_smoothing != 0.0 {
        per = (per - (log_sigmoid(&z.neg()?)? * cfg.label_smoothing)?)?;
    }
    if let Some(lambda) = cfg.rpo_alpha {
        per = (per - (&policy.chosen.mean * lambda)?)?;
    }
    let loss = reduce(&per, weights)?;
    let metrics = reward_metrics(
        &loss,
        &(chosen * cfg.beta)?,
        &(rejected * cfg.beta)?,
        policy,
    )?;
    Ok(LossOutput {
        loss,
        per_example: per,
        metrics,
    })
}

/// IPO `(Δ - 1/(2β))²`.
pub fn ipo(
    policy: &PairLogps,
    reference: &PairLogps,
    cfg: &IpoConfig,
    weights: Option<&Tensor>,
) -> Result<LossOutput> {
    let beta = cfg.beta;
    let (chosen, rejected, delta) = log_ratios(policy, reference)?;
    let per = (delta - 1.0 / (2.0 * beta))?.sqr()?;
    let loss = reduce(&per, weights)?;
    let metrics = reward_metrics(&loss, &(chosen * beta)?, &(rejected * beta)?, policy)?;
    Ok(LossOutput {
        loss,
        per_example: per,
        metrics,
    })
}

/// SimPO `-log σ(β (mean π(y_w) - mean π(y_l)) - γ)`: length-normalised, no reference model.
pub fn simpo(
    policy: &PairLogps,
    cfg: &SimpoConfig,
    weights: Option<&Tensor>,
) -> Result<LossOutput> {
    let chosen = (&policy.chosen.mean * cfg.beta)?;
    let rejected = (&policy.rejected.mean * cfg.beta)?;
    let per = log_sigmoid(&((&chosen - &rejected)? - cfg.gamma)?)?.neg()?;
    let loss = reduce(&per, weights)?;
    let metrics = reward_metrics(&loss, &chosen, &rejected, policy)?;
    Ok(LossOutput {
        loss,
        per_example: per,
        metrics,
    })
}

/// SELM: the DPO loss plus the optimism term `α·β·[π(y_ref) - ref(y_ref)]`, where `y_ref` is the
/// reference model's greedy response and `policy_yref`/`reference_yref` its summed log-probs.
pub fn selm(
    policy: &PairLogps,
    reference: &PairLogps,
    policy_yref: &Tensor,
    reference_yref: &Tensor,
    cfg: &SelmConfig,
    weights: Option<&Tensor>,
) -> Result<LossOutput> {
    let base = dpo(
        policy,
        reference,
        &DpoConfig {
            beta: cfg.beta,
            ..DpoConfig::default()
        },
        None,
    )?;
    let optimism = ((policy_yref - reference_yref)? * (cfg.alpha * cfg.beta))?;
    let per = (base.per_example + optimism)?;
    let loss = reduce(&per, weights)?;
    let mut metrics = base.metrics;
    metrics.insert("loss".into(), scalar(&loss)?);
    Ok(LossOutput {
        loss,
        per_example: per,
        metrics,
    })
}

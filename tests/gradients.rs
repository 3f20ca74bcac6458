//! Every trainable variable receives a gradient through every objective, and the gradients
//! agree with central finite differences in f64.

mod common;

use candle_core::{DType, Tensor};
use metaapo::data::encode::EncodedSeq;
use metaapo::model::CausalLm;
use metaapo::objective::{self, DpoConfig, KtoConfig, SelmConfig, SimpoConfig};
use metaapo::score::{pair_logps, sequence_logps};

fn seq(ids: &[u32], prompt_len: usize) -> EncodedSeq {
    EncodedSeq {
        ids: ids.to_vec(),
        prompt_len,
    }
}

fn pairs() -> (Vec<EncodedSeq>, Vec<EncodedSeq>, Vec<EncodedSeq>) {
    let chosen = vec![
        seq(&[5, 6, 7, 20, 21, 2], 3),
        seq(&[8, 9, 30, 2], 2),
        seq(&[10, 11, 12, 13, 14, 2], 4),
    ];
    let rejected = vec![
        seq(&[5, 6, 7, 25, 2], 3),
        seq(&[8, 9, 31, 32, 33, 2], 2),
        seq(&[10, 11, 12, 13, 15, 16, 2], 4),
    ];
    let greedy = vec![
        seq(&[5, 6, 7, 22, 2], 3),
        seq(&[8, 9, 34, 2], 2),
        seq(&[10, 11, 12, 13, 17, 2], 4),
    ];
    (chosen, rejected, greedy)
}

const OBJECTIVES: [&str; 7] = ["dpo", "cdpo", "rpo", "ipo", "simpo", "selm", "kto"];

/// `kl_model` scores KTO's mismatched pairs. KTO's reference point z0 is detached, so a finite
/// difference must hold it fixed: the FD test passes an unperturbed snapshot of the policy.
fn loss(kind: &str, policy: &CausalLm, reference: &CausalLm, kl_model: &CausalLm) -> Tensor {
    let (chosen, rejected, greedy) = pairs();
    let pol = pair_logps(policy, &chosen, &rejected, 0).unwrap();
    let refp = pair_logps(reference, &chosen, &rejected, 0)
        .unwrap()
        .detach();
    let w = Tensor::new(&[1.0f64, 0.5, 0.25], policy.device()).unwrap();
    let out = match kind {
        "dpo" => objective::dpo(&pol, &refp, &DpoConfig::default(), Some(&w)),
        "cdpo" => objective::dpo(
            &pol,
            &refp,
            &DpoConfig {
                label_smoothing: 0.2,
                ..Default::default()
            },
            None,
        ),
        "rpo" => objective::dpo(
            &pol,
            &refp,
            &DpoConfig {
                rpo_alpha: Some(1.0),
                ..Default::default()
            },
            None,
        ),
        "ipo" => objective::ipo(&pol, &refp, &objective::IpoConfig { beta: 0.1 }, None),
        "simpo" => objective::simpo(&pol, &SimpoConfig::default(), Some(&w)),
        "selm" => {
            let py = sequence_logps(policy, &greedy, 0).unwrap().sum;
            let ry = sequence_logps(reference, &greedy, 0).unwrap().sum.detach();
            objective::selm(
                &pol,
                &refp,
                &py,
                &ry,
                &SelmConfig {
                    beta: 0.1,
                    alpha: 0.5,
                },
                None,
            )
        }
        "kto" => {
            // Chosen responses are desirable, rejected undesirable; KL pairs are mismatched.
            let all: Vec<EncodedSeq> = chosen.iter().chain(&rejected).cloned().collect();
            let desirable: Vec<bool> = (0..6).map(|i| i < 3).collect();
            let kl: Vec<EncodedSeq> = (0..6)
                .map(|i| {
                    let (p, r) = (&all[i], &all[(i + 1) % 6]);
                    let mut ids = p.ids[..p.prompt_len].to_vec();
                    ids.extend(&r.ids[r.prompt_len..]);
                    seq(&ids, p.prompt_len)
                })
                .collect();
            let pl = sequence_logps(policy, &all, 0).unwrap().sum;
            let rl = sequence_logps(reference, &all, 0).unwrap().sum.detach();
            let kp = sequence_logps(kl_model, &kl, 0).unwrap().sum;
            let kr = sequence_logps(reference, &kl, 0).unwrap().sum.detach();
            objective::kto(&pl, &rl, &desirable, &kp, &kr, &KtoConfig::default(), None)
        }
        other => panic!("unknown objective {other}"),
    };
    out.unwrap().loss
}

fn models(arch: &str, tied: bool) -> (CausalLm, CausalLm) {
    let policy = common::tiny_model(arch, tied, DType::F64, true);
    let config = common::tiny_config(arch, tied);
    let reference = CausalLm::from_tensors(
        config.clone(),
        common::random_tensors(&config, 99),
        "ref",
        DType::F64,
        false,
    )
    .unwrap();
    (policy, reference)
}

#[test]
fn every_variable_gets_a_gradient_through_every_objective() {
    for (arch, tied) in [("LlamaForCausalLM", false), ("Qwen2ForCausalLM", true)] {
        let (policy, reference) = models(arch, tied);
        let n_vars = policy.vars().len();
        assert!(n_vars > 20, "{arch}: only {n_vars} variables");
        for kind in OBJECTIVES {
            let grads = loss(kind, &policy, &reference, &policy).backward().unwrap();
            let with_grad = policy
                .vars()
                .iter()
                .filter(|(_, v)| {
                    grads.get(v.as_tensor()).is_some_and(|g| {
                        g.abs()
                            .unwrap()
                            .max_all()
                            .unwrap()
                            .to_scalar::<f64>()
                            .unwrap()
                            > 0.0
                    })
                })
                .count();
            assert_eq!(
                with_grad, n_vars,
                "{arch} {kind}: {with_grad} of {n_vars} variables got a gradient"
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let h = 1e-5;
    for (arch, tied) in [("LlamaForCausalLM", false), ("Qwen2ForCausalLM", true)] {
        let (policy, reference) = models(arch, tied);
        let snapshot = policy.frozen().unwrap();
        for kind in OBJECTIVES {
            let grads = loss(kind, &policy, &reference, &snapshot)
                .backward()
                .unwrap();
            let mut worst = 0f64;
            for (name, var) in policy.vars() {
                let (i, analytic, numeric, rel) =
                    common::finite_difference(var, grads.get(var.as_tensor()).unwrap(), h, || {
                        loss(kind, &policy, &reference, &snapshot)
                            .to_scalar::<f64>()
                            .unwrap()
                    });
                assert!(rel < 1e-5, "{arch} {kind} {name}[{i}]: analytic {analytic:e} vs numeric {numeric:e} (rel {rel:e})");
                worst = worst.max(rel);
            }
            eprintln!("{arch} {kind}: worst relative error {worst:e}");
        }
    }
}

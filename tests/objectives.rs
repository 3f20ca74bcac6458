//! Objectives against values worked out by hand from docs/ALGORITHMS.md's formulas.
//!
//! Two pairs. Policy summed log-probs: chosen [-10, -20], rejected [-14, -18]; reference:
//! chosen [-12, -19], rejected [-13, -17]. So the chosen log-ratios are [2, -1], the rejected
//! [-1, -1], and Δ = [3, 0]. Per-token means: chosen [-1, -2], rejected [-2, -1.5].
//! `-log σ(z) = ln(1 + e^-z)`: at z = 0.3 it is 0.5543552444685271, at 0 it is ln 2.

use approx::assert_abs_diff_eq;
use candle_core::{Device, Tensor};
use metaapo::objective::{self, log_sigmoid, DpoConfig, KtoConfig, SelmConfig, SimpoConfig};
use metaapo::score::{PairLogps, SeqLogps};

fn t(v: &[f64]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

fn logps(sum: &[f64], mean: &[f64]) -> SeqLogps {
    SeqLogps {
        sum: t(sum),
        mean: t(mean),
        lengths: vec![10, 10],
    }
}

fn policy() -> PairLogps {
    PairLogps {
        chosen: logps(&[-10.0, -20.0], &[-1.0, -2.0]),
        rejected: logps(&[-14.0, -18.0], &[-2.0, -1.5]),
    }
}

fn reference() -> PairLogps {
    PairLogps {
        chosen: logps(&[-12.0, -19.0], &[0.0, 0.0]),
        rejected: logps(&[-13.0, -17.0], &[0.0, 0.0]),
    }
}

fn scalar(x: &Tensor) -> f64 {
    x.to_scalar::<f64>().unwrap()
}

const LN2: f64 = std::f64::consts::LN_2;
const DPO_PAIR1: f64 = 0.5543552444685271; // -log σ(0.1 · 3)

#[test]
fn dpo_loss_and_trl_metrics() {
    let out = objective::dpo(&policy(), &reference(), &DpoConfig::default(), None).unwrap();
    assert_abs_diff_eq!(scalar(&out.loss), (DPO_PAIR1 + LN2) / 2.0, epsilon = 1e-12);
    let per = out.per_example.to_vec1::<f64>().unwrap();
    assert_abs_diff_eq!(per[0], DPO_PAIR1, epsilon = 1e-12);
    assert_abs_diff_eq!(per[1], LN2, epsilon = 1e-12);
    let m = &out.metrics;
    assert_abs_diff_eq!(m["loss"], 0.6237512125142362, epsilon = 1e-12);
    assert_abs_diff_eq!(m["rewards/chosen"], 0.05, epsilon = 1e-12); // 0.1 · mean(2, -1)
    assert_abs_diff_eq!(m["rewards/rejected"], -0.1, epsilon = 1e-12);
    assert_abs_diff_eq!(m["rewards/margins"], 0.15, epsilon = 1e-12);
    assert_abs_diff_eq!(m["rewards/accuracies"], 0.5, epsilon = 1e-12); // a zero margin is not a win
    assert_abs_diff_eq!(m["logps/chosen"], -15.0, epsilon = 1e-12);
    assert_abs_diff_eq!(m["logps/rejected"], -16.0, epsilon = 1e-12);
}

#[test]
fn weights_scale_each_pair_and_divide_by_the_count() {
    let w = t(&[1.0, 0.5]);
    let out = objective::dpo(&policy(), &reference(), &DpoConfig::default(), Some(&w)).unwrap();
    assert_abs_diff_eq!(
        scalar(&out.loss),
        (DPO_PAIR1 + 0.5 * LN2) / 2.0,
        epsilon = 1e-12
    );
    // MetaAPO's mix w·l_off + (1-w)·l_on with both halves on the same pairs is the plain mean.
    let rest = objective::dpo(
        &policy(),
        &reference(),
        &DpoConfig::default(),
        Some(&t(&[0.0, 0.5])),
    )
    .unwrap();
    assert_abs_diff_eq!(
        scalar(&out.loss) + scalar(&rest.loss),
        0.6237512125142362,
        epsilon = 1e-12
    );
    assert!(objective::dpo(
        &policy(),
        &reference(),
        &DpoConfig::default(),
        Some(&t(&[1.0]))
    )
    .is_err());
}

#[test]
fn swapping_chosen_and_rejected_flips_the_sign_of_the_margin() {
    let p = policy();
    let r = reference();
    let swapped = |x: &PairLogps| PairLogps {
        chosen: x.rejected.clone(),
        rejected: x.chosen.clone(),
    };
    let out = objective::dpo(&swapped(&p), &swapped(&r), &DpoConfig::default(), None).unwrap();
    // Pair 1 now has Δ = -3: -log σ(-0.3) = ln(1 + e^0.3).
    assert_abs_diff_eq!(
        out.per_example.to_vec1::<f64>().unwrap()[0],
        0.8543552444685271,
        epsilon = 1e-12
    );
    assert_abs_diff_eq!(out.metrics["rewards/margins"], -0.15, epsilon = 1e-12);
}

#[test]
fn cdpo_label_smoothing() {
    let cfg = DpoConfig {
        label_smoothing: 0.1,
        ..Default::default()
    };
    let out = objective::dpo(&policy(), &reference(), &cfg, None).unwrap();
    // 0.9 · ln(1+e^-0.3) + 0.1 · ln(1+e^0.3) for pair 1; ln 2 for pair 2 whatever ε is.
    let per = out.per_example.to_vec1::<f64>().unwrap();
    assert_abs_diff_eq!(per[0], 0.5843552444685272, epsilon = 1e-12);
    assert_abs_diff_eq!(per[1], LN2, epsilon = 1e-12);
}

#[test]
fn ipo_is_squared_distance_to_half_inverse_beta() {
    let out = objective::ipo(
        &policy(),
        &reference(),
        &objective::IpoConfig { beta: 0.1 },
        None,
    )
    .unwrap();
    // (3 - 5)² = 4 and (0 - 5)² = 25.
    assert_eq!(out.per_example.to_vec1::<f64>().unwrap(), vec![4.0, 25.0]);
    assert_abs_diff_eq!(scalar(&out.loss), 14.5, epsilon = 1e-12);
}

#[test]
fn simpo_uses_length_normalised_logps_and_no_reference() {
    let out = objective::simpo(&policy(), &SimpoConfig::default(), None).unwrap();
    // Pair 1: 2.5·(-1 - -2) - 0.6 = 1.9; pair 2: 2.5·(-2 - -1.5) - 0.6 = -1.85.
    let per = out.per_example.to_vec1::<f64>().unwrap();
    assert_abs_diff_eq!(per[0], 0.1393867582829606, epsilon = 1e-12);
    assert_abs_diff_eq!(per[1], 1.9960354110545102, epsilon = 1e-12);
    assert_abs_diff_eq!(out.metrics["rewards/chosen"], 2.5 * -1.5, epsilon = 1e-12);
    assert_abs_diff_eq!(out.metrics["rewards/accuracies"], 0.5, epsilon = 1e-12);
}

#[test]
fn rpo_adds_the_chosen_nll_per_token() {
    let cfg = DpoConfig {
        rpo_alpha: Some(1.0),
        ..Default::default()
    };
    let out = objective::dpo(&policy(), &reference(), &cfg, None).unwrap();
    // NLL/|y_w| is minus the mean chosen log-prob: +1 and +2.
    assert_abs_diff_eq!(
        scalar(&out.loss),
        (DPO_PAIR1 + 1.0 + LN2 + 2.0) / 2.0,
        epsilon = 1e-12
    );
}

#[test]
fn selm_adds_the_optimism_term() {
    let cfg = SelmConfig {
        beta: 0.1,
        alpha: 0.5,
    };
    let (py, ry) = (t(&[-5.0, -9.0]), t(&[-6.0, -7.0])); // π - ref on y_ref: [1, -2]
    let out = objective::selm(&policy(), &reference(), &py, &ry, &cfg, None).unwrap();
    // α·β·[1, -2] = [0.05, -0.1] on top of DPO with β = 0.1.
    assert_abs_diff_eq!(
        scalar(&out.loss),
        (DPO_PAIR1 + 0.05 + LN2 - 0.1) / 2.0,
        epsilon = 1e-12
    );
    assert_abs_diff_eq!(out.metrics["loss"], scalar(&out.loss), epsilon = 1e-12);
}

#[test]
fn kto_reference_point_is_clamped_batch_kl() {
    // r = π - ref = [2, -1, -1, -1]; examples 0 and 2 desirable.
    let pol = t(&[-10.0, -14.0, -20.0, -18.0]);
    let rf = t(&[-12.0, -13.0, -19.0, -17.0]);
    let desirable = [true, false, true, false];
    let cfg = KtoConfig::default();
    // KL pairs with mean log-ratio (2 + -1)/2 = 0.5: z0 = 0.5.
    let out = objective::kto(
        &pol,
        &rf,
        &desirable,
        &t(&[-10.0, -15.0]),
        &t(&[-12.0, -14.0]),
        &cfg,
        None,
    )
    .unwrap();
    let per = out.per_example.to_vec1::<f64>().unwrap();
    // desirable 1 - σ(0.1(r - z0)), undesirable 1 - σ(0.1(z0 - r)).
    let want = [
        0.4625701546562504,
        0.4625701546562504,
        0.5374298453437496,
        0.4625701546562504,
    ];
    for (a, b) in per.iter().zip(want) {
        assert_abs_diff_eq!(*a, b, epsilon = 1e-12);
    }
    assert_abs_diff_eq!(out.metrics["kl"], 0.5, epsilon = 1e-12);
    assert_abs_diff_eq!(scalar(&out.loss), 0.4812850773281252, epsilon = 1e-12);
    // A negative batch KL clamps to z0 = 0.
    let out = objective::kto(
        &pol,
        &rf,
        &desirable,
        &t(&[-13.0, -15.0]),
        &t(&[-12.0, -14.0]),
        &cfg,
        None,
    )
    .unwrap();
    assert_abs_diff_eq!(out.metrics["kl"], 0.0, epsilon = 1e-12);
    assert_abs_diff_eq!(scalar(&out.loss), 0.4812967038021455, epsilon = 1e-12);
    // λ_D and λ_U scale their examples.
    let cfg = KtoConfig {
        desirable_weight: 2.0,
        undesirable_weight: 0.0,
        ..cfg
    };
    let out = objective::kto(
        &pol,
        &rf,
        &desirable,
        &t(&[-13.0, -15.0]),
        &t(&[-12.0, -14.0]),
        &cfg,
        None,
    )
    .unwrap();
    assert_abs_diff_eq!(
        scalar(&out.loss),
        2.0 * (0.45016600268752205 + 0.52497918747894) / 4.0,
        epsilon = 1e-12
    );
}

#[test]
fn log_sigmoid_does_not_underflow() {
    let v = log_sigmoid(&t(&[-1000.0, 0.0, 1000.0]))
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert_eq!(v[0], -1000.0);
    assert_abs_diff_eq!(v[1], -LN2, epsilon = 1e-15);
    assert_eq!(v[2], 0.0);
    let v32 = log_sigmoid(&Tensor::new(&[-200f32], &Device::Cpu).unwrap())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(v32[0], -200.0);
}

/// `d/dz log σ(z) = σ(-z)` and `d/dz σ(z) = σ(z) σ(-z)` everywhere, at `z = 0` too, where the
/// loss of a policy that equals its reference sits.
#[test]
fn sigmoid_gradients_are_exact_at_zero_and_in_both_tails() {
    let zs = [-1000.0, -3.0, -0.5, 0.0, 0.5, 3.0, 1000.0];
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    for (f, want) in [
        (
            log_sigmoid as fn(&Tensor) -> anyhow::Result<Tensor>,
            &(|z: f64| sig(-z)) as &dyn Fn(f64) -> f64,
        ),
        (objective::sigmoid, &|z: f64| sig(z) * sig(-z)),
    ] {
        let z = candle_core::Var::new(&zs[..], &Device::Cpu).unwrap();
        let g = f(z.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let got = g.get(&z).unwrap().to_vec1::<f64>().unwrap();
        for (x, g) in zs.iter().zip(got) {
            assert_abs_diff_eq!(g, want(*x), epsilon = 1e-15);
        }
    }
}

/// The DPO gradient with respect to each pair's chosen log-prob is `-β σ(-βΔ) / N` (and the
/// opposite for the rejected one); pair 2 has Δ = 0, as every pair has on the first step.
#[test]
fn dpo_gradient_matches_hand_values_at_zero_margin() {
    let chosen = candle_core::Var::new(&[-10.0, -20.0][..], &Device::Cpu).unwrap();
    let rejected = candle_core::Var::new(&[-14.0, -18.0][..], &Device::Cpu).unwrap();
    let pol = PairLogps {
        chosen: SeqLogps {
            sum: chosen.as_tensor().clone(),
            mean: t(&[-1.0, -2.0]),
            lengths: vec![10, 10],
        },
        rejected: SeqLogps {
            sum: rejected.as_tensor().clone(),
            mean: t(&[-2.0, -1.5]),
            lengths: vec![10, 10],
        },
    };
    let out = objective::dpo(&pol, &reference(), &DpoConfig::default(), None).unwrap();
    let g = out.loss.backward().unwrap();
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    let want = [-0.1 * sig(-0.3) / 2.0, -0.1 * 0.5 / 2.0];
    let (gc, gr) = (
        g.get(&chosen).unwrap().to_vec1::<f64>().unwrap(),
        g.get(&rejected).unwrap().to_vec1::<f64>().unwrap(),
    );
    for i in 0..2 {
        assert_abs_diff_eq!(gc[i], want[i], epsilon = 1e-15);
        assert_abs_diff_eq!(gr[i], -want[i], epsilon = 1e-15);
    }
}

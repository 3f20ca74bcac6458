//! The MetaAPO meta-learner: gradients against finite differences, the direction the meta-loss
//! moves the weights, the published constant init, and save/restore.

use candle_core::{DType, Device, Tensor};
use metaapo::meta::{MetaConfig, MetaInit, MetaLearner};

fn buffer() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let s: Vec<f64> = (0..12).map(|i| -0.1 - 0.3 * i as f64).collect();
    let off: Vec<f64> = (0..12).map(|i| 0.3 + 0.05 * i as f64).collect();
    let on: Vec<f64> = (0..12).map(|i| 0.9 - 0.07 * i as f64).collect();
    (s, off, on)
}

fn t(v: &[f64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()
}

#[test]
fn meta_gradients_match_finite_differences() {
    let cfg = MetaConfig {
        hidden: 6,
        seed: 3,
        ..MetaConfig::default()
    };
    let learner = MetaLearner::new(cfg, &Device::Cpu, DType::F64).unwrap();
    let (s, off, on) = buffer();
    let loss = |l: &MetaLearner| -> f64 {
        l.meta_loss(&t(&s), &t(&off), &t(&on))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let grads = learner
        .meta_loss(&t(&s), &t(&off), &t(&on))
        .unwrap()
        .backward()
        .unwrap();
    let mut worst: f64 = 0.0;
    for (name, var) in learner.vars() {
        let g = grads
            .get(var.as_tensor())
            .expect(name)
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(g.iter().any(|x| *x != 0.0), "{name} got no gradient");
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for i in 0..base.len() {
            let eps = 1e-6;
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss(&learner)
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            at(0.0);
            let err = (numeric - g[i]).abs() / numeric.abs().max(g[i].abs()).max(1e-8);
            worst = worst.max(err);
        }
    }
    assert!(worst < 1e-5, "worst relative error {worst}");
}

#[test]
fn the_meta_loss_lowers_w_where_online_is_better_and_raises_it_where_worse() {
    let mut learner = MetaLearner::new(MetaConfig::default(), &Device::Cpu, DType::F32).unwrap();
    // Low scores (badly fitted offline pairs): the online pair has the lower loss there.
    let s: Vec<f64> = (0..20).map(|i| -4.0 + 0.2 * i as f64).collect();
    let off: Vec<f64> = s
        .iter()
        .map(|&x| if x < -2.0 { 1.0 } else { 0.2 })
        .collect();
    let on: Vec<f64> = s
        .iter()
        .map(|&x| if x < -2.0 { 0.2 } else { 1.0 })
        .collect();
    let before = learner.weights(&s).unwrap();
    for _ in 0..50 {
        learner.step(&s, &off, &on).unwrap();
    }
    let after = learner.weights(&s).unwrap();
    for i in 0..s.len() {
        if s[i] < -2.5 {
            assert!(
                after[i] < before[i],
                "s {}: {} -> {}",
                s[i],
                before[i],
                after[i]
            );
        } else if s[i] > -1.5 {
            assert!(
                after[i] > before[i],
                "s {}: {} -> {}",
                s[i],
                before[i],
                after[i]
            );
        }
    }
    assert_eq!(learner.steps(), 50);
}

fn hidden_rows_identical(l: &MetaLearner) -> bool {
    let w1 = l.vars()[0]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b1 = l.vars()[1].1.as_tensor().to_vec1::<f32>().unwrap();
    let w2 = l.vars()[2]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    [w1, b1, w2].iter().all(|v| v.iter().all(|x| *x == v[0]))
}

#[test]
fn reference_init_keeps_every_hidden_unit_identical_and_standard_does_not() {
    let (s, off, on) = buffer();
    for (init, identical) in [(MetaInit::Reference, true), (MetaInit::Standard, false)] {
        let cfg = MetaConfig {
            init,
            ..MetaConfig::default()
        };
        let mut l = MetaLearner::new(cfg, &Device::Cpu, DType::F32).unwrap();
        for _ in 0..20 {
            l.step(&s, &off, &on).unwrap();
        }
        assert_eq!(hidden_rows_identical(&l), identical, "{init:?}");
    }
}

#[test]
fn a_saved_learner_continues_exactly() {
    let (s, off, on) = buffer();
    let mut a = MetaLearner::new(MetaConfig::default(), &Device::Cpu, DType::F32).unwrap();
    for _ in 0..3 {
        a.step(&s, &off, &on).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("metaapo-meta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    a.save(&dir).unwrap();
    let mut b = MetaLearner::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(b.steps(), 3);
    assert_eq!(a.weights(&s).unwrap(), b.weights(&s).unwrap());
    a.step(&s, &off, &on).unwrap();
    b.step(&s, &off, &on).unwrap();
    assert_eq!(a.weights(&s).unwrap(), b.weights(&s).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

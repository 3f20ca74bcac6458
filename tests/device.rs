//! Devices and dtypes: the self-check run CPU against CPU (the code path `--device cuda` takes,
//! tested without a GPU), bf16 training with f32 master weights, and the one-line refusals.

use candle_core::{DType, Device, Tensor, Var};
use metaapo::selftest;
use metaapo::train::grads::Gradients;
use metaapo::train::optimizer::{AdamW, AdamWConfig};
use std::process::Command;

#[test]
fn selftest_cpu_f32_is_exact_and_covers_every_item() {
    let checks = selftest::run(&Device::Cpu, DType::F32, &mut |_| {}).unwrap();
    let items: Vec<&str> = checks.iter().map(|c| c.item.as_str()).collect();
    for part in [
        "logits",
        "log-probs",
        "DPO gradients (21 of 21 variables non-zero",
        "AdamW step",
        "greedy generation (128 of 128 tokens identical)",
        "meta-learner",
        "sequence classifier",
        "BERT encoder",
    ] {
        assert!(
            items.iter().any(|i| i.contains(part)),
            "{part} missing from {items:?}"
        );
    }
    // The same arithmetic on both sides: bit for bit.
    for c in &checks {
        assert_eq!(c.measured, 0.0, "{c:?}");
        assert!(c.passed());
    }
}

#[test]
fn selftest_cpu_bf16_differs_from_f32_within_the_stated_tolerances() {
    let checks = selftest::run(&Device::Cpu, DType::BF16, &mut |_| {}).unwrap();
    for c in &checks {
        assert!(c.passed(), "{c:?}");
    }
    // bf16 really ran: the decoder's numbers moved, the f32 parts (meta-learner, BERT) did not.
    let measured = |part: &str| {
        checks
            .iter()
            .find(|c| c.item.contains(part))
            .unwrap()
            .measured
    };
    assert!(measured("logits") > 1e-4 && measured("DPO gradients") > 1e-4);
    assert_eq!(measured("meta-learner"), 0.0);
}

#[test]
fn a_failed_comparison_is_a_fail() {
    let nan = selftest::Check {
        item: "x".into(),
        metric: "max rel diff".into(),
        measured: f64::NAN,
        tolerance: 1.0,
    };
    assert!(!nan.passed());
}

/// A bf16 parameter of 1.0 (bf16 spacing there: 2^-7) under updates of 1e-4: each rounds away
/// in bf16, but the f32 master weight keeps them, and they reach the parameter once they add up.
#[test]
fn bf16_parameters_train_through_f32_master_weights() {
    let var = Var::from_tensor(&Tensor::ones(4, DType::BF16, &Device::Cpu).unwrap()).unwrap();
    let vars = vec![("w".to_string(), var.clone())];
    let config = AdamWConfig {
        lr: 1e-4,
        max_grad_norm: None,
        ..Default::default()
    };
    let mut opt = AdamW::new(&vars, config.clone()).unwrap();
    let step = |opt: &mut AdamW| {
        let mut g = Gradients::new();
        g.accumulate(var.as_tensor().sum_all().unwrap(), &vars)
            .unwrap();
        opt.step(&g, 1e-4).unwrap();
    };
    step(&mut opt);
    let master = |opt: &AdamW| opt.parameters_f32().unwrap()[0].1.to_vec1::<f32>().unwrap();
    assert!((master(&opt)[0] - (1.0 - 1e-4)).abs() < 1e-6);
    assert_eq!(
        var.as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0],
        1.0
    );

    // The master weights are part of the optimizer's state: a resumed run continues from them.
    let dir = std::env::temp_dir().join(format!("metaapo-test-master-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("optimizer.safetensors");
    opt.save(&path).unwrap();
    let mut resumed = AdamW::new(&vars, config).unwrap();
    resumed.load(&path).unwrap();
    assert_eq!(master(&resumed), master(&opt));
    std::fs::remove_dir_all(&dir).unwrap();

    for _ in 0..59 {
        step(&mut opt);
    }
    let w = var
        .as_tensor()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    assert!((master(&opt)[0] - (1.0 - 60e-4)).abs() < 1e-5);
    assert!(
        w < 1.0 && (w - master(&opt)[0]).abs() <= 2f32.powi(-8),
        "{w}"
    );
}

fn metaapo(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_metaapo"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn the_selftest_command_prints_a_verdict_per_item() {
    let (ok, out, _) = metaapo(&["selftest"]);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PASS  ")).count(),
        8,
        "{out}"
    );
    assert!(out.contains("8 of 8 checks passed"));
    let (ok, out, _) = metaapo(&["selftest", "--dtype", "bf16", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok && v["device"] == "cpu bf16" && v["failed"] == 0, "{v}");
}

#[test]
fn unusable_devices_and_dtypes_are_one_line_errors() {
    let cuda = if cfg!(feature = "cuda") {
        "no usable CUDA GPU"
    } else {
        "built without CUDA"
    };
    for (args, says) in [
        (&["selftest", "--device", "cuda"][..], cuda),
        (
            &["selftest", "--dtype", "f16"],
            "dtype f16 is not supported on cpu",
        ),
        (
            &["script", "dpo", "--dtype", "f16"],
            "dtype f16 is not supported on cpu",
        ),
        (&["script", "dpo", "--device", "cuda:1"], cuda),
        (&["selftest", "--dtype", "f8"], "unknown dtype \"f8\""),
    ] {
        let (ok, _, err) = metaapo(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

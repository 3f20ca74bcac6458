//! What every kernel's tests compare: against the composed ops, and against finite differences.

use candle_core::{DType, Device, Tensor, Var};

pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// The gradient of `Σ f(x)` with respect to an f64 `x` against central differences, at every
/// element, to 1e-7.
pub fn assert_matches_finite_differences(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) {
    let total = |x: &Tensor| f(x).sum_all().unwrap().to_scalar::<f64>().unwrap();
    let var = Var::from_tensor(x).unwrap();
    let grads = f(var.as_tensor()).sum_all().unwrap().backward().unwrap();
    let analytic = grads
        .get(var.as_tensor())
        .expect("no gradient reached the input")
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let base = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let eps = 1e-6;
    for i in 0..base.len() {
        let at = |d: f64| {
            let mut v = base.clone();
            v[i] += d;
            total(&Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap())
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() <= 1e-7,
            "element {i}: {numeric} vs {}",
            analytic[i]
        );
    }
    assert!(analytic.iter().any(|g| g.abs() > 1e-3), "all gradients ~0");
}

//! The statistics a comparison reports: a mean with its Student-t confidence interval, and
//! Welch's t-test of two methods' means (unequal variances; seeds are independent draws, not
//! matched pairs).

use anyhow::{bail, Result};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Mean and sample variance (n - 1 in the denominator).
fn moments(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

fn check(what: &str, xs: &[f64]) -> Result<()> {
    if xs.len() < 2 {
        bail!("{what} needs at least 2 values, got {}", xs.len());
    }
    if let Some(x) = xs.iter().find(|x| !x.is_finite()) {
        bail!("{what}: {x} is not a finite number");
    }
    Ok(())
}

/// The mean of `xs` and the half-width of its two-sided confidence interval at `level`
/// (0.95 for 95%): t_{(1+level)/2, n-1} · s / √n.
pub fn mean_ci(xs: &[f64], level: f64) -> Result<(f64, f64)> {
    check("a confidence interval", xs)?;
    if !(level > 0.0 && level < 1.0) {
        bail!("confidence level {level} must lie strictly between 0 and 1");
    }
    let (mean, var) = moments(xs);
    let n = xs.len() as f64;
    let t = StudentsT::new(0.0, 1.0, n - 1.0)?.inverse_cdf((1.0 + level) / 2.0);
    Ok((mean, t * (var / n).sqrt()))
}

/// Welch's t-test of mean(a) = mean(b): the statistic, its Welch–Satterthwaite degrees of
/// freedom and the two-sided p-value. Two samples without any spread give p = 1 when their
/// means agree and 0 when they differ.
pub fn welch(a: &[f64], b: &[f64]) -> Result<(f64, f64, f64)> {
    check("a t-test", a)?;
    check("a t-test", b)?;
    let (ma, va) = moments(a);
    let (mb, vb) = moments(b);
    let (sa, sb) = (va / a.len() as f64, vb / b.len() as f64);
    if sa + sb == 0.0 {
        let p = if ma == mb { 1.0 } else { 0.0 };
        return Ok((0.0, (a.len() + b.len() - 2) as f64, p));
    }
    let t = (ma - mb) / (sa + sb).sqrt();
    let df = (sa + sb).powi(2)
        / (sa.powi(2) / (a.len() as f64 - 1.0) + sb.powi(2) / (b.len() as f64 - 1.0));
    let p = 2.0 * StudentsT::new(0.0, 1.0, df)?.cdf(-t.abs());
    Ok((t, df, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_and_test_match_hand_computed_values() {
        // xs = 1..5: mean 3, s² = 2.5, t_{0.975,4} = 2.776445, half-width 2.776445·√(2.5/5).
        let (m, h) = mean_ci(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.95).unwrap();
        assert!((m - 3.0).abs() < 1e-12);
        assert!((h - 2.776445 * 0.5f64.sqrt()).abs() < 1e-5, "{h}");
        // scipy.stats.ttest_ind([1,2,3,4,5], [3,4,5,6,7], equal_var=False):
        // t = -2.0, df = 8, p = 0.080516.
        let (t, df, p) = welch(&[1.0, 2.0, 3.0, 4.0, 5.0], &[3.0, 4.0, 5.0, 6.0, 7.0]).unwrap();
        assert!(
            (t + 2.0).abs() < 1e-12 && (df - 8.0).abs() < 1e-9,
            "{t} {df}"
        );
        assert!((p - 0.080516).abs() < 1e-5, "{p}");
        assert!(mean_ci(&[1.0], 0.95).is_err());
        assert!(welch(&[1.0, f64::NAN], &[1.0, 2.0]).is_err());
        assert_eq!(welch(&[2.0, 2.0], &[2.0, 2.0]).unwrap().2, 1.0);
    }
}

//! tensor: differentiable tensor handles for writing objectives in a script. Operators
//! `+ - * /` broadcast and mix with numbers; every function keeps the autograd graph unless it
//! says otherwise, so `opt.step(loss)` trains through a script-written loss.

use super::registry::{error, fail, Family, Res};
use crate::objective;
use candle_core::{DType, Device};
use rhai::{Array, Dynamic};

/// A tensor as scripts see it.
#[derive(Debug, Clone)]
pub struct Tensor(pub candle_core::Tensor);

type TensorFn = fn(&candle_core::Tensor) -> anyhow::Result<candle_core::Tensor>;

type Op =
    fn(&candle_core::Tensor, &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>;

fn binary(a: &Tensor, b: &Tensor, op: Op, name: &'static str) -> Res<Tensor> {
    let b =
        b.0.to_device(a.0.device())
            .and_then(|b| b.to_dtype(a.0.dtype()))
            .map_err(|e| fail(name)(e.into()))?;
    op(&a.0, &b).map(Tensor).map_err(|e| {
        error(format!(
            "{name}: shapes {:?} and {:?} do not broadcast ({e})",
            a.0.dims(),
            b.dims()
        ))
    })
}

/// Numbers from an array or a tensor (`what` names the value in errors).
pub fn numbers(v: &Dynamic, what: &str) -> Res<Vec<f64>> {
    if let Some(t) = v.clone().try_cast::<Tensor>() {
        return t.values().map_err(|e| error(format!("{what}: {e:#}")));
    }
    let arr = v
        .read_lock::<rhai::Array>()
        .ok_or_else(|| error(format!("{what} must be a tensor or an array of numbers")))?;
    arr.iter()
        .map(|x| number(x).ok_or_else(|| error(format!("{what} must hold numbers, not {x}"))))
        .collect()
}

/// Positions of `v`'s numbers in ascending order (stable).
fn order(v: &Dynamic, what: &str) -> Res<Vec<usize>> {
    let x = numbers(v, &format!("{what} values"))?;
    let mut o: Vec<usize> = (0..x.len()).collect();
    o.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    Ok(o)
}

fn indices(o: &[usize]) -> Array {
    o.iter().map(|&i| Dynamic::from_int(i as i64)).collect()
}

fn unary(
    t: &Tensor,
    name: &'static str,
    f: impl Fn(&candle_core::Tensor) -> anyhow::Result<candle_core::Tensor>,
) -> Res<Tensor> {
    f(&t.0).map(Tensor).map_err(fail(name))
}

impl std::fmt::Display for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

impl Tensor {
    pub fn values(&self) -> anyhow::Result<Vec<f64>> {
        Ok(self
            .0
            .detach()
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?)
    }

    pub fn from_values(values: &[f64], device: &Device) -> anyhow::Result<Self> {
        Ok(Self(
            candle_core::Tensor::new(values, device)?.to_dtype(DType::F32)?,
        ))
    }

    /// Shape, mean, min/max and a 10-bin text histogram: what a researcher looks at first.
    pub fn summary(&self) -> String {
        let v = match self.values() {
            Ok(v) => v,
            Err(e) => return format!("Tensor(<unreadable: {e}>)"),
        };
        let head = format!("Tensor{:?} {:?}", self.0.dims(), self.0.dtype());
        if v.is_empty() {
            return head;
        }
        if v.len() == 1 {
            return format!("{head} = {:.6}", v[0]);
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let mut out = format!("{head} mean {mean:.4}  min {lo:.4}  max {hi:.4}");
        if hi > lo {
            let mut bins = [0usize; 10];
            for x in &v {
                bins[(((x - lo) / (hi - lo)) * 10.0).min(9.0) as usize] += 1;
            }
            let top = *bins.iter().max().unwrap_or(&1) as f64;
            for (i, c) in bins.iter().enumerate() {
                let left = lo + (hi - lo) * i as f64 / 10.0;
                let bar = "#".repeat(((*c as f64 / top) * 30.0).round() as usize);
                out += &format!("\n  {left:>10.4} | {bar} {c}");
            }
        }
        out
    }
}

pub fn register(api: &mut Family) {
    api.ty::<Tensor>("Tensor");
    let e = api.engine();
    macro_rules! ops {
        ($name:literal, $op:expr, $scalar:expr, $rscalar:expr) => {
            e.register_fn($name, |a: Tensor, b: Tensor| binary(&a, &b, $op, $name));
            e.register_fn($name, |a: Tensor, x: f64| $scalar(a, x));
            e.register_fn($name, |a: Tensor, x: i64| $scalar(a, x as f64));
            e.register_fn($name, |x: f64, a: Tensor| $rscalar(a, x));
            e.register_fn($name, |x: i64, a: Tensor| $rscalar(a, x as f64));
        };
    }
    ops!(
        "+",
        candle_core::Tensor::broadcast_add,
        |a: Tensor, x: f64| unary(&a, "+", |t| Ok((t + x)?)),
        |a: Tensor, x: f64| unary(&a, "+", |t| Ok((t + x)?))
    );
    ops!(
        "-",
        candle_core::Tensor::broadcast_sub,
        |a: Tensor, x: f64| unary(&a, "-", |t| Ok((t - x)?)),
        |a: Tensor, x: f64| unary(&a, "-", |t| Ok(t.affine(-1.0, x)?))
    );
    ops!(
        "*",
        candle_core::Tensor::broadcast_mul,
        |a: Tensor, x: f64| unary(&a, "*", |t| Ok((t * x)?)),
        |a: Tensor, x: f64| unary(&a, "*", |t| Ok((t * x)?))
    );
    ops!(
        "/",
        candle_core::Tensor::broadcast_div,
        |a: Tensor, x: f64| unary(&a, "/", |t| Ok((t / x)?)),
        |a: Tensor, x: f64| unary(&a, "/", |t| Ok((t.recip()? * x)?))
    );
    e.register_fn("-", |a: Tensor| unary(&a, "-", |t| Ok(t.neg()?)));
    // A tensor is not one number: comparing it would silently answer false (Rhai's default for
    // unknown types), so every comparison is an error saying what to compare instead.
    for op in ["==", "!=", "<", "<=", ">", ">="] {
        let refuse = move || -> Res<bool> {
            Err(error(format!(
                "`{op}` on a tensor: compare t.item() (one value) or the numbers of t.to_array()"
            )))
        };
        e.register_fn(op, move |_: Tensor, _: Tensor| refuse());
        e.register_fn(op, move |_: Tensor, _: f64| refuse());
        e.register_fn(op, move |_: Tensor, _: i64| refuse());
        e.register_fn(op, move |_: f64, _: Tensor| refuse());
        e.register_fn(op, move |_: i64, _: Tensor| refuse());
    }

    for op in ["+", "-", "*", "/"] {
        api.operator(
            op,
            "(a: Tensor|float|int, b: Tensor|float|int) -> Tensor",
            "Elementwise, broadcasting, differentiable; one side may be a number.",
        );
    }
    api.operator(
        "-",
        "(t: Tensor) -> Tensor",
        "Elementwise negation (unary minus).",
    );
    api.operator(
        "== != < <= > >=",
        "(a: Tensor|float|int, b: Tensor|float|int) -> error",
        "An error: a tensor is not one number; compare t.item() or t.to_array().",
    );
    api.func(
        "tensor",
        "(values: Array) -> Tensor",
        "A 1-D f32 tensor from numbers (no gradient).",
        |values: Array| -> Res<Tensor> {
            let v = values
                .iter()
                .map(|x| number(x).ok_or_else(|| error(format!("tensor: {x} is not a number"))))
                .collect::<Res<Vec<f64>>>()?;
            Tensor::from_values(&v, &Device::Cpu).map_err(fail("tensor"))
        },
    );
    let fns: [(&str, &str, TensorFn); 9] = [
        ("log_sigmoid", "log σ(x), stable for large |x|.", |t| {
            objective::log_sigmoid(t)
        }),
        ("sigmoid", "σ(x).", |t| objective::sigmoid(t)),
        ("exp", "e^x.", |t| Ok(t.exp()?)),
        ("log", "Natural logarithm.", |t| Ok(t.log()?)),
        ("abs", "|x|.", |t| Ok(t.abs()?)),
        ("sqrt", "Square root.", |t| Ok(t.sqrt()?)),
        (
            "mean",
            "Mean of all elements (a scalar tensor); an empty tensor is an error.",
            |t| {
                if t.elem_count() == 0 {
                    anyhow::bail!("the tensor is empty, so it has no mean");
                }
                Ok(t.mean_all()?)
            },
        ),
        ("sum", "Sum of all elements (a scalar tensor).", |t| {
            Ok(t.sum_all()?)
        }),
        (
            "detach",
            "The same values, cut from the autograd graph.",
            |t| Ok(t.detach()),
        ),
    ];
    for (name, doc, f) in fns {
        let n: &'static str = name;
        api.func(name, "(t: Tensor) -> Tensor", doc, move |t: Tensor| {
            unary(&t, n, f)
        });
    }
    api.func(
        "clamp",
        "(t: Tensor, min: float, max: float) -> Tensor",
        "Elementwise clamp to [min, max].",
        |t: Tensor, lo: f64, hi: f64| unary(&t, "clamp", |x| Ok(x.clamp(lo, hi)?)),
    );
    api.func(
        "item",
        "(t: Tensor) -> float",
        "The value of a one-element tensor.",
        |t: Tensor| -> Res<f64> {
            let v = t.values().map_err(fail("item"))?;
            match v.as_slice() {
                [x] => Ok(*x),
                _ => Err(error(format!(
                    "item: the tensor has shape {:?}, not one element",
                    t.0.dims()
                ))),
            }
        },
    );
    api.func(
        "to_array",
        "(t: Tensor) -> Array",
        "All values, flattened, as numbers.",
        |t: Tensor| -> Res<Array> {
            Ok(t.values()
                .map_err(fail("to_array"))?
                .into_iter()
                .map(Dynamic::from_float)
                .collect())
        },
    );
    api.func(
        "shape",
        "(t: Tensor) -> Array",
        "Dimensions, e.g. [32].",
        |t: Tensor| -> Array {
            t.0.dims()
                .iter()
                .map(|&d| Dynamic::from_int(d as i64))
                .collect()
        },
    );
    api.func(
        "len",
        "(t: Tensor) -> int",
        "Size of the first dimension.",
        |t: Tensor| -> i64 { t.0.dims().first().copied().unwrap_or(1) as i64 },
    );
    api.func(
        "argsort",
        "(values: Array) -> Array",
        "Indices that sort the numbers (an array or a tensor) ascending; ties keep their order.",
        |v: Dynamic| -> Res<Array> { Ok(indices(&order(&v, "argsort")?)) },
    );
    api.func(
        "top_k",
        "(values: Array, k: int) -> Array",
        "Indices of the k largest numbers, largest first (all of them when k exceeds the length).",
        |v: Dynamic, k: i64| -> Res<Array> {
            if k < 0 {
                return Err(error(format!("top_k: k must be >= 0, got {k}")));
            }
            let mut o = order(&v, "top_k")?;
            o.reverse();
            o.truncate(k as usize);
            Ok(indices(&o))
        },
    );
    api.func(
        "quantile",
        "(values: Array, q: float) -> float",
        "The q-quantile (0 = min, 0.5 = median, 1 = max), interpolated linearly as numpy's default.",
        |v: Dynamic, q: f64| -> Res<f64> {
            let x = numbers(&v, "quantile values")?;
            if x.is_empty() || !(0.0..=1.0).contains(&q) {
                return Err(error(format!(
                    "quantile: needs at least one number and q in [0, 1] (got {} numbers, q = {q})",
                    x.len()
                )));
            }
            let mut sorted = x;
            sorted.sort_by(f64::total_cmp);
            let at = q * (sorted.len() - 1) as f64;
            let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
            Ok(sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64))
        },
    );
    api.func(
        "histogram",
        "(t: Tensor) -> String",
        "Shape, mean, min/max and a text histogram (what the REPL shows for a tensor).",
        |t: Tensor| t.summary(),
    );
}

/// An INT or FLOAT as f64.
pub fn number(v: &Dynamic) -> Option<f64> {
    v.as_float()
        .ok()
        .or_else(|| v.as_int().ok().map(|i| i as f64))
}

//! run: the script's parameters (`params` with `--set` overrides), its seed and random stream,
//! and its directory.

use super::api_report::to_json;
use super::registry::{error, fail, Family, Res};
use super::run::Run;
use rand::Rng;
use rhai::{Array, Dynamic, Engine, Map};
use serde_json::json;
use std::rc::Rc;

/// Parses `--set key=text` into the type of the parameter's default.
fn parse(key: &str, text: &str, default: &Dynamic) -> Res<Dynamic> {
    let bad = |what: &str| error(format!("--set {key}={text}: expected {what}"));
    if default.is_int() {
        return text
            .parse::<i64>()
            .map(Dynamic::from_int)
            .map_err(|_| bad("an integer"));
    }
    if default.is_float() {
        return text
            .parse::<f64>()
            .map(Dynamic::from_float)
            .map_err(|_| bad("a number"));
    }
    if default.is_bool() {
        return text
            .parse::<bool>()
            .map(Dynamic::from_bool)
            .map_err(|_| bad("true or false"));
    }
    if default.is_string() {
        return Ok(text.to_string().into());
    }
    if default.is_array() {
        return Engine::new_raw()
            .eval_expression::<Array>(text)
            .map(Dynamic::from_array)
            .map_err(|_| bad("an array like [1, 2.5, \"x\"]"));
    }
    Ok(Engine::new_raw()
        .eval_expression::<Dynamic>(text)
        .unwrap_or_else(|_| text.to_string().into()))
}

fn params(run: &Run, defaults: Map) -> Res<Map> {
    run.params_read.set(true);
    let mut out = defaults.clone();
    for (key, text) in &run.options.overrides {
        let Some(default) = defaults.get(key.as_str()) else {
            let mut known: Vec<&str> = defaults.keys().map(|k| k.as_str()).collect();
            known.sort();
            return Err(error(format!(
                "unknown parameter `{key}` (--set {key}={text}); this script's parameters are: {}",
                known.join(", ")
            )));
        };
        out.insert(key.as_str().into(), parse(key, text, default)?);
    }
    let record = json!({
        "script": run.options.name,
        "seed": run.options.seed,
        "device": format!("{:?}", run.options.device),
        "params": to_json(&Dynamic::from_map(out.clone())),
    });
    run.report()
        .and_then(|r| r.write_json("params.json", &record))
        .map_err(fail("params"))?;
    Ok(out)
}

pub fn register(api: &mut Family, run: &Rc<Run>) {
    let r = run.clone();
    api.func(
        "params",
        "(defaults: Map) -> Map",
        "The script's parameters: defaults with --set overrides applied (unknown keys are an error); writes params.json.",
        move |defaults: Map| params(&r, defaults),
    );
    let r = run.clone();
    api.func("seed", "() -> int", "The run's --seed.", move || {
        r.options.seed as i64
    });
    let r = run.clone();
    api.func(
        "random",
        "() -> float",
        "A uniform draw in [0, 1) from the run's seeded stream.",
        move || r.rng.borrow_mut().random::<f64>(),
    );
    let r = run.clone();
    api.func(
        "run_dir",
        "() -> String",
        "The run directory (created on first use).",
        move || -> Res<String> {
            Ok(r.report()
                .map_err(fail("run_dir"))?
                .dir()
                .display()
                .to_string())
        },
    );
}

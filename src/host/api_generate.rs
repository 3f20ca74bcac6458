//! generate: sampling from a policy (batched, KV cache; greedy at temperature 0).

use super::opts::{defaults, Opts};
use super::registry::{error, fail, Family, Res};
use super::values::dynamic_to_text;
use crate::generate::SampleConfig;
use crate::policy::Policy;
use rhai::{Array, Dynamic, Map};

fn strings(o: &Opts, key: &'static str) -> Res<Vec<String>> {
    match o.get(key) {
        None => Ok(vec![]),
        Some(v) if v.is_string() => Ok(vec![v.to_string()]),
        Some(v) => v
            .read_lock::<Array>()
            .ok_or_else(|| error(format!("`{key}` must be a string or an array of strings")))?
            .iter()
            .map(|s| {
                s.is_string()
                    .then(|| s.to_string())
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| error(format!("`{key}` must hold non-empty strings")))
            })
            .collect(),
    }
}

/// Samples for `prompts` with generate's options.
fn run(policy: &Policy, prompts: &Array, opts: &Map) -> Res<Array> {
    let o = Opts::new("generate options", opts);
    let cfg: SampleConfig = o.config()?;
    let stop = strings(&o, "stop")?;
    o.finish()?;
    let texts = prompts
        .iter()
        .map(|p| dynamic_to_text(p, "generate prompt"))
        .collect::<Res<Vec<_>>>()?;
    let samples = policy
        .generate(&texts, &cfg, &stop)
        .map_err(fail("generate"))?;
    Ok(samples
        .into_iter()
        .map(|s| {
            let mut m = Map::new();
            m.insert("prompt".into(), prompts[s.prompt].clone());
            m.insert("index".into(), (s.prompt as i64).into());
            m.insert("response".into(), s.text.into());
            let ids: Array = s.tokens.iter().map(|&t| Dynamic::from(t as i64)).collect();
            m.insert("ids".into(), ids.into());
            m.insert("finished".into(), s.finished.into());
            Dynamic::from_map(m)
        })
        .collect())
}

pub fn register(api: &mut Family) {
    api.func(
        "generate",
        "(policy: Policy, prompts: Array, options: Map) -> Array",
        &format!(
            "#{{prompt, index, response, ids, finished}} per sample, prompt by prompt (temperature 0 = greedy, top_k 0 = all tokens). Options: {}, stop (strings; none).",
            defaults::<SampleConfig>()
        ),
        |p: Policy, prompts: Array, opts: Map| run(&p, &prompts, &opts),
    );
}

//! generate: sampling from a policy (batched, KV cache; greedy at temperature 0), here or on a
//! serving engine (`server` option; see api_serving).

use super::opts::{defaults, Opts};
use super::registry::{error, fail, Family, Res};
use super::run::Run;
use super::types::ServerHandle;
use super::values::dynamic_to_text;
use crate::generate::SampleConfig;
use crate::policy::Policy;
use rhai::{Array, Dynamic, Map};
use std::rc::Rc;

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

/// Samples for `prompts` with generate's options, here or on a `server`.
fn run(host: &Run, policy: &Policy, prompts: &Array, opts: &Map) -> Res<Array> {
    let o = Opts::new("generate options", opts);
    let cfg: SampleConfig = o.config()?;
    let stop = strings(&o, "stop")?;
    let server = match o.get("server") {
        None => None,
        Some(v) => Some(v.clone().try_cast::<ServerHandle>().ok_or_else(|| {
            error("generate options: `server` must be a Server (from server(#{url, ...}))")
        })?),
    };
    let allow_stale = o.bool("allow_stale", false)?;
    o.finish()?;
    if allow_stale && server.is_none() {
        return Err(error(
            "generate options: allow_stale only applies with a `server`",
        ));
    }
    let texts = prompts
        .iter()
        .map(|p| dynamic_to_text(p, "generate prompt"))
        .collect::<Res<Vec<_>>>()?;
    let start = std::time::Instant::now();
    let samples = match &server {
        Some(s) => s.0.generate(policy, &texts, &cfg, &stop, allow_stale),
        None => policy.generate(&texts, &cfg, &stop),
    }
    .map_err(fail("generate"))?;
    let kind = if server.is_some() {
        "server_generate"
    } else {
        "generate"
    };
    host.add_time(kind, start.elapsed().as_secs_f64());
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
            m.insert("ids_from".into(), s.ids_from.name().into());
            Dynamic::from_map(m)
        })
        .collect())
}

pub fn register(api: &mut Family, host: &Rc<Run>) {
    let h = host.clone();
    api.func(
        "generate",
        "(policy: Policy, prompts: Array, options: Map) -> Array",
        &format!(
            "#{{prompt, index, response, ids, ids_from, finished}} per sample, prompt by prompt (temperature 0 = greedy, top_k 0 = all tokens). ids_from: local, server, or retokenized (the server returned text only). Options: {}, stop (strings; none), server (a Server; none: here), allow_stale (false: a server not synced to the policy's current weights is an error).",
            defaults::<SampleConfig>()
        ),
        move |p: Policy, prompts: Array, opts: Map| run(&h, &p, &prompts, &opts),
    );
}

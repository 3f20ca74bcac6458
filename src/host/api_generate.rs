//! generate: sampling from a policy (batched, KV cache; greedy at temperature 0).

use super::api_data::dynamic_to_text;
use super::api_model::Policy;
use super::opts::Opts;
use super::registry::{error, fail, Family, Res};
use crate::data::encode::{keep_last, render, Text};
use crate::generate::{cut_at_stop, generate, SampleConfig, Stop};
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

/// Samples for `prompts` with generate's options (shared with file worlds' `evaluate`).
pub fn run(policy: &Policy, prompts: &Array, opts: &Map) -> Res<Array> {
    let o = Opts::new("generate options", opts);
    let d = SampleConfig::default();
    let cfg = SampleConfig {
        n: o.usize("n", d.n)?,
        max_new_tokens: o.usize("max_new_tokens", d.max_new_tokens)?,
        temperature: o.f64("temperature", d.temperature)?,
        top_p: o.f64("top_p", d.top_p)?,
        top_k: o.usize("top_k", d.top_k)?,
        seed: o.usize("seed", d.seed as usize)? as u64,
        batch_size: o.usize("batch_size", d.batch_size)?,
    };
    let stop_strings = strings(&o, "stop")?;
    o.finish()?;
    let tok = &policy.0.tokenizer;
    let texts = prompts
        .iter()
        .map(|p| dynamic_to_text(p, "generate prompt"))
        .collect::<Res<Vec<_>>>()?;
    // The prompt the policy is trained on: its last `max_prompt_length` tokens.
    let keep = policy.0.encode.max_prompt_length;
    let ids = texts
        .iter()
        .map(|t| {
            let (prompt, _) = render(tok, t, &Text::Plain(String::new()))?;
            Ok(keep_last(tok.encode(&prompt)?, keep))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(fail("generate"))?;
    let stop_tokens = policy.stop_tokens();
    let stop = Stop {
        tokens: &stop_tokens,
        strings: &stop_strings,
        tokenizer: Some(tok),
    };
    let samples =
        generate(&policy.0.model, &ids, &stop, tok.pad_token_id, &cfg).map_err(fail("generate"))?;
    samples
        .iter()
        .map(|s| {
            let mut m = Map::new();
            m.insert("prompt".into(), prompts[s.prompt].clone());
            m.insert("index".into(), (s.prompt as i64).into());
            let text = tok.decode(&s.tokens, true).map_err(fail("generate"))?;
            let (text, _) = cut_at_stop(&text, &stop_strings);
            m.insert("response".into(), text.into());
            let ids: Array = s.tokens.iter().map(|&t| Dynamic::from(t as i64)).collect();
            m.insert("ids".into(), ids.into());
            m.insert("finished".into(), s.finished.into());
            Ok(Dynamic::from_map(m))
        })
        .collect()
}

pub fn register(api: &mut Family) {
    api.func(
        "generate",
        "(policy: Policy, prompts: Array, options: Map) -> Array",
        "#{prompt, index, response, ids, finished} per sample, prompt by prompt: n, max_new_tokens, temperature (0 = greedy), top_p, top_k, stop (strings), seed, batch_size.",
        |p: Policy, prompts: Array, opts: Map| run(&p, &prompts, &opts),
    );
}

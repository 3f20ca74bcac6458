//! generate: sampling from a policy (batched, KV cache; greedy at temperature 0).

use super::api_data::dynamic_to_text;
use super::api_model::Policy;
use super::opts::Opts;
use super::registry::{fail, Family, Res};
use crate::data::encode::{render, Text};
use crate::generate::{generate, SampleConfig};
use rhai::{Array, Dynamic, Map};

fn run(policy: &Policy, prompts: &Array, opts: &Map) -> Res<Array> {
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
    o.finish()?;
    let tok = &policy.0.tokenizer;
    let texts = prompts
        .iter()
        .map(|p| dynamic_to_text(p, "generate prompt"))
        .collect::<Res<Vec<_>>>()?;
    let ids = texts
        .iter()
        .map(|t| {
            let (prompt, _) = render(tok, t, &Text::Plain(String::new()))?;
            tok.encode(&prompt)
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(fail("generate"))?;
    let samples = generate(
        &policy.0.model,
        &ids,
        &[tok.eos_token_id],
        tok.pad_token_id,
        &cfg,
    )
    .map_err(fail("generate"))?;
    samples
        .iter()
        .map(|s| {
            let mut m = Map::new();
            m.insert("prompt".into(), prompts[s.prompt].clone());
            let text = tok.decode(&s.tokens, true).map_err(fail("generate"))?;
            m.insert("response".into(), text.into());
            m.insert("finished".into(), s.finished.into());
            Ok(Dynamic::from_map(m))
        })
        .collect()
}

pub fn register(api: &mut Family) {
    api.func(
        "generate",
        "(policy: Policy, prompts: Array, options: Map) -> Array",
        "Samples #{prompt, response, finished} for each prompt: n, max_new_tokens, temperature (0 = greedy), top_p, top_k, seed.",
        |p: Policy, prompts: Array, opts: Map| run(&p, &prompts, &opts),
    );
}

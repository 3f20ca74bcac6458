//! Generation on a serving engine through the OpenAI-compatible API (vLLM, SGLang, TGI,
//! llama.cpp's server): `/v1/completions` with the prompt rendered by the policy's own chat
//! template, exactly the text local generation starts from, or `/v1/chat/completions` where the
//! server applies its template. The samples are the same records local generation returns.

use super::http::{array, concurrently, excerpt};
use super::server::{Api, Server};
use crate::data::encode::Text;
use crate::generate::{cut_at_stop, SampleConfig};
use crate::policy::{Completion, Policy, TokenSource};
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

/// One request: a prompt, how many samples, and its seed.
struct Request {
    prompt: usize,
    n: usize,
    seed: u64,
}

impl Server {
    /// `cfg.n` samples per prompt from the server, prompt by prompt, as local generation orders
    /// them. Refuses to sample from weights older than `policy`'s unless `allow_stale`.
    pub fn generate(
        &self,
        policy: &Policy,
        prompts: &[Text],
        cfg: &SampleConfig,
        stop: &[String],
        allow_stale: bool,
    ) -> Result<Vec<Completion>> {
        if cfg.n == 0 {
            bail!("generate: n must be at least 1");
        }
        if !allow_stale {
            self.check_fresh(policy)?;
        }
        let bodies = prompts
            .iter()
            .map(|p| self.body(policy, p, cfg, stop))
            .collect::<Result<Vec<_>>>()?;
        let requests: Vec<Request> = (0..prompts.len())
            .flat_map(|p| {
                let per = if self.cfg.split_n { cfg.n } else { 1 };
                (0..per).map(move |j| Request {
                    prompt: p,
                    n: if per == 1 { cfg.n } else { 1 },
                    seed: cfg.seed.wrapping_add((p * cfg.n + j) as u64),
                })
            })
            .collect();
        let replies = self.send_all(&requests, &bodies)?;
        let mut out = Vec::with_capacity(prompts.len() * cfg.n);
        for (p, choices) in replies.into_iter().enumerate() {
            for c in choices.into_iter().take(cfg.n) {
                out.push(self.completion(policy, p, c, stop)?);
            }
        }
        Ok(out)
    }

    fn check_fresh(&self, policy: &Policy) -> Result<()> {
        let synced = *self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let now = policy.revision();
        match synced {
            Some(s) if s.revision == now => Ok(()),
            Some(s) if s.revision.0 == now.0 => bail!(
                "generate: {} serves the policy as of {} updates, and it has had {} since; \
                 call sync_weights(server, policy) first, or pass allow_stale: true",
                self.client.base(),
                s.revision.1,
                now.1 - s.revision.1.min(now.1)
            ),
            _ => bail!(
                "generate: {} has not been synced to this policy, so it may serve other weights; \
                 call sync_weights(server, policy) first, or pass allow_stale: true",
                self.client.base()
            ),
        }
    }

    /// The request body for one prompt (without `n` and `seed`).
    fn body(
        &self,
        policy: &Policy,
        prompt: &Text,
        cfg: &SampleConfig,
        stop: &[String],
    ) -> Result<Value> {
        let model = self.model.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut body = json!({
            "model": model,
            "max_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
        });
        match self.cfg.api {
            Api::Completions => {
                let ids = policy.prompt_ids(prompt)?;
                body["prompt"] = json!(policy.tokenizer().decode(&ids, false)?);
            }
            Api::Chat => {
                body["messages"] = match prompt {
                    Text::Plain(t) => json!([{"role": "user", "content": t}]),
                    Text::Chat(m) => json!(m
                        .iter()
                        .map(|m| json!({"role": m.role, "content": m.content}))
                        .collect::<Vec<_>>()),
                };
            }
        }
        // None of these are OpenAI's, but vLLM, SGLang and llama.cpp read them (and ignore the
        // other engines' names). top_k 0 keeps every token in vLLM and llama.cpp; SGLang refuses
        // it, and its defaults already match (match_local_sampling false).
        if cfg.top_k > 0 || self.cfg.match_local_sampling {
            body["top_k"] = json!(cfg.top_k);
        }
        if self.cfg.match_local_sampling {
            body["min_p"] = json!(0.0);
            body["repeat_penalty"] = json!(1.0);
            body["repetition_penalty"] = json!(1.0);
        }
        if !stop.is_empty() {
            body["stop"] = json!(stop);
        }
        if self.cfg.return_token_ids {
            body["return_token_ids"] = json!(true);
        }
        Ok(body)
    }

    fn path(&self) -> &'static str {
        match self.cfg.api {
            Api::Completions => "/v1/completions",
            Api::Chat => "/v1/chat/completions",
        }
    }

    /// Sends every request, `concurrency` at a time; the choices per prompt, in request order.
    fn send_all(&self, requests: &[Request], bodies: &[Value]) -> Result<Vec<Vec<Value>>> {
        let workers = self.client.config().concurrency;
        let replies = concurrently(requests.len(), workers, |i| {
            self.request(&bodies[requests[i].prompt], &requests[i])
        })?;
        let mut per_prompt: Vec<Vec<Value>> = bodies.iter().map(|_| vec![]).collect();
        for (r, choices) in requests.iter().zip(replies) {
            per_prompt[r.prompt].extend(choices);
        }
        Ok(per_prompt)
    }

    /// One request's choices; a reply with fewer than asked for (a server that ignores `n`) is
    /// topped up with requests for the rest. Sample k of prompt p is asked for with seed
    /// `seed + p * n + k`, so every sample of a call has its own seed.
    fn request(&self, body: &Value, r: &Request) -> Result<Vec<Value>> {
        let endpoint = format!("{}{}", self.client.base(), self.path());
        let mut choices = Vec::with_capacity(r.n);
        while choices.len() < r.n {
            let mut b = body.clone();
            let want = r.n - choices.len();
            b["n"] = json!(want);
            b["seed"] = json!(r.seed.wrapping_add(choices.len() as u64));
            let reply = self.client.post(self.path(), &b)?;
            let mut got = array(&reply, "choices", &endpoint)?.clone();
            if got.is_empty() {
                bail!(
                    "{endpoint}: the reply has no choices: {}",
                    excerpt(&reply.to_string(), 200)
                );
            }
            got.sort_by_key(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0));
            got.truncate(want);
            choices.extend(
                got.into_iter()
                    .map(|c| json!({"endpoint": endpoint, "choice": c})),
            );
        }
        Ok(choices)
    }

    /// A choice as a sample record.
    fn completion(
        &self,
        policy: &Policy,
        prompt: usize,
        c: Value,
        stop: &[String],
    ) -> Result<Completion> {
        let endpoint = c["endpoint"].as_str().unwrap_or_default().to_string();
        let c = &c["choice"];
        let missing = |field: &str| {
            anyhow!(
                "{endpoint}: a choice has no `{field}`: {}",
                excerpt(&c.to_string(), 200)
            )
        };
        let text = match self.cfg.api {
            Api::Completions => c.get("text"),
            Api::Chat => c.get("message").and_then(|m| m.get("content")),
        }
        .and_then(Value::as_str)
        .ok_or_else(|| {
            missing(if self.cfg.api == Api::Chat {
                "message.content"
            } else {
                "text"
            })
        })?;
        let reason = c
            .get("finish_reason")
            .and_then(Value::as_str)
            .ok_or_else(|| missing("finish_reason"))?;
        let (text, cut) = cut_at_stop(text, stop);
        let ids = c.get("token_ids").and_then(Value::as_array);
        let (tokens, ids_from) = match ids {
            Some(ids) => (
                ids.iter()
                    .map(|v| {
                        v.as_u64()
                            .map(|t| t as u32)
                            .ok_or_else(|| missing("token_ids (integers)"))
                    })
                    .collect::<Result<Vec<_>>>()?,
                TokenSource::Server,
            ),
            None => (policy.tokenizer().encode(&text)?, TokenSource::Retokenized),
        };
        Ok(Completion {
            prompt,
            text,
            tokens,
            finished: cut || reason == "stop",
            ids_from,
        })
    }
}

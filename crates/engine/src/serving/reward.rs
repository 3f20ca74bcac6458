//! Reward models behind HTTP, in OpenRLHF's remote-reward protocol: POST `/get_reward` with
//! `{"query": [prompt + response texts], "prompts": [prompt texts]}`, answered by
//! `{"rewards": [...]}`. [`RemoteReward`] is the client; [`serve`] puts any reward model
//! metaapo loads behind that protocol (`metaapo serve-reward`).

use super::http::{array, concurrently, excerpt, Client, HttpConfig};
use crate::data::encode::{render, Text};
use crate::model::tokenizer::TextTokenizer;
use crate::reward::RewardModel;
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

/// Texts per request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteRewardConfig {
    /// The server's address (required).
    pub url: String,
    /// Prompt/response pairs per request.
    pub batch_size: usize,
}

impl Default for RemoteRewardConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            batch_size: 64,
        }
    }
}

/// A reward model on another machine.
pub struct RemoteReward {
    client: Client,
    batch_size: usize,
    /// Renders chat prompts and responses to the text the server scores (OpenRLHF sends the
    /// policy tokenizer's decoding of the templated sequence).
    template: Option<TextTokenizer>,
}

impl RemoteReward {
    pub fn new(
        cfg: &RemoteRewardConfig,
        http: &HttpConfig,
        template: Option<TextTokenizer>,
    ) -> Result<Self> {
        if cfg.url.is_empty() {
            bail!("remote_reward: `url` is required (e.g. \"http://127.0.0.1:5000\")");
        }
        if cfg.batch_size == 0 {
            bail!("remote_reward: batch_size must be at least 1");
        }
        Ok(Self {
            client: Client::new(&cfg.url, http)?,
            batch_size: cfg.batch_size,
            template,
        })
    }

    fn texts(&self, prompt: &Text, response: &Text) -> Result<(String, String)> {
        match (prompt, response, &self.template) {
            (Text::Plain(p), Text::Plain(r), _) => Ok((p.clone(), r.clone())),
            (_, _, Some(tok)) => render(tok, prompt, response),
            _ => bail!(
                "remote_reward: chat prompts need a chat template to become text; pass `template: policy`"
            ),
        }
    }
}

impl RewardModel for RemoteReward {
    fn rewards(&self, prompts: &[Text], responses: &[Text]) -> Result<Vec<f64>> {
        let endpoint = format!("{}/get_reward", self.client.base());
        let pairs: Vec<(String, String)> = prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| self.texts(p, r))
            .collect::<Result<_>>()?;
        let chunks: Vec<&[(String, String)]> = pairs.chunks(self.batch_size).collect();
        let batches = concurrently(chunks.len(), self.client.config().concurrency, |c| {
            let chunk = chunks[c];
            let query: Vec<String> = chunk.iter().map(|(p, r)| format!("{p}{r}")).collect();
            let prompts: Vec<&str> = chunk.iter().map(|(p, _)| p.as_str()).collect();
            let reply = self
                .client
                .post("/get_reward", &json!({"query": query, "prompts": prompts}))?;
            let rewards = array(&reply, "rewards", &endpoint)?;
            if rewards.len() != chunk.len() {
                bail!(
                    "{endpoint}: {} rewards for {} texts",
                    rewards.len(),
                    chunk.len()
                );
            }
            rewards
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    r.as_f64().filter(|v| v.is_finite()).ok_or_else(|| {
                        anyhow!(
                            "{endpoint}: reward {} is {r}, not a finite number",
                            c * self.batch_size + i
                        )
                    })
                })
                .collect::<Result<Vec<f64>>>()
        })?;
        Ok(batches.concat())
    }

    fn describe(&self) -> String {
        format!("remote reward model {}", self.client.base())
    }
}

/// The rewards a `/get_reward` body asks for, or why the body is wrong (for a 400 reply).
pub fn answer(rm: &dyn RewardModel, body: &str) -> std::result::Result<Value, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let strings = |key: &str| -> std::result::Result<Vec<String>, String> {
        v.get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("the body has no `{key}` array of strings"))?
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("`{key}[{i}]` is not a string"))
            })
            .collect()
    };
    let query = strings("query")?;
    let prompts = strings("prompts")?;
    if query.len() != prompts.len() {
        return Err(format!(
            "`query` has {} texts and `prompts` {}",
            query.len(),
            prompts.len()
        ));
    }
    let mut p = Vec::with_capacity(query.len());
    let mut r = Vec::with_capacity(query.len());
    for (i, (q, pr)) in query.iter().zip(&prompts).enumerate() {
        let response = q
            .strip_prefix(pr.as_str())
            .ok_or_else(|| format!("`query[{i}]` does not start with `prompts[{i}]`"))?;
        p.push(Text::Plain(pr.clone()));
        r.push(Text::Plain(response.to_string()));
    }
    let rewards = rm.rewards(&p, &r).map_err(|e| format!("{e:#}"))?;
    Ok(json!({"rewards": rewards, "scores": rewards}))
}

/// Largest request body read, in bytes.
const MAX_BODY: u64 = 64 << 20;

/// Serves `rm` at `addr` (`host:port`; port 0 picks one) until interrupted. `ready` gets the
/// address actually bound. Every request is answered: a bad one with a 400 that says why.
pub fn serve(rm: &dyn RewardModel, addr: &str, ready: impl FnOnce(&str)) -> Result<()> {
    let server =
        tiny_http::Server::http(addr).map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_else(|| addr.to_string());
    ready(&bound);
    loop {
        crate::interrupt::check()?;
        let Some(mut req) = server.recv_timeout(std::time::Duration::from_millis(200))? else {
            continue;
        };
        let (code, body) = match (req.method(), req.url()) {
            (tiny_http::Method::Get, "/health") => (200, json!({"status": "ok"})),
            (tiny_http::Method::Post, "/get_reward") => {
                let mut text = String::new();
                let read = std::io::Read::read_to_string(
                    &mut std::io::Read::take(req.as_reader(), MAX_BODY + 1),
                    &mut text,
                );
                match read {
                    Err(e) => (400, json!({"error": format!("cannot read the body: {e}")})),
                    Ok(n) if n as u64 > MAX_BODY => (
                        413,
                        json!({"error": format!("the body is over {MAX_BODY} bytes")}),
                    ),
                    Ok(_) => match answer(rm, &text) {
                        Ok(v) => (200, v),
                        Err(e) => (400, json!({"error": e})),
                    },
                }
            }
            (m, u) => (
                404,
                json!({"error": format!("{m} {} is not served; POST /get_reward or GET /health", excerpt(u, 100))}),
            ),
        };
        let header = tiny_http::Header::from_bytes("Content-Type", "application/json")
            .expect("a valid header");
        let resp = tiny_http::Response::from_string(body.to_string())
            .with_status_code(code)
            .with_header(header);
        // A client that hung up is its own problem; keep serving.
        let _ = req.respond(resp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reward model whose reward is the response's length in bytes.
    struct Length;

    impl RewardModel for Length {
        fn rewards(&self, _: &[Text], responses: &[Text]) -> Result<Vec<f64>> {
            Ok(responses
                .iter()
                .map(|r| match r {
                    Text::Plain(t) => t.len() as f64,
                    Text::Chat(_) => unreachable!("the protocol carries plain text"),
                })
                .collect())
        }

        fn describe(&self) -> String {
            "length".into()
        }
    }

    #[test]
    fn a_query_is_split_into_its_prompt_and_response() {
        let body =
            json!({"query": ["Q: hi A: hello", "Q: x A: "], "prompts": ["Q: hi A:", "Q: x A: "]});
        let v = answer(&Length, &body.to_string()).unwrap();
        assert_eq!(v["rewards"], json!([6.0, 0.0]));
        assert_eq!(v["scores"], v["rewards"]);
    }

    #[test]
    fn a_bad_body_says_what_is_wrong() {
        for (body, says) in [
            ("{", "not JSON"),
            (r#"{"query": ["a"]}"#, "no `prompts` array"),
            (
                r#"{"query": ["a", 1], "prompts": ["a", "b"]}"#,
                "`query[1]` is not a string",
            ),
            (
                r#"{"query": ["a"], "prompts": []}"#,
                "`query` has 1 texts and `prompts` 0",
            ),
            (
                r#"{"query": ["xyz"], "prompts": ["ab"]}"#,
                "`query[0]` does not start with `prompts[0]`",
            ),
        ] {
            let e = answer(&Length, body).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
        }
    }
}

//! An LLM judge over an OpenAI-compatible chat endpoint: absolute scores (a reward model for
//! `annotate`) or pairwise verdicts, from a prompt template. A reply that does not parse is an
//! error that quotes it, never a silent default.

use super::http::{array, concurrently, excerpt, Client, HttpConfig};
use crate::data::encode::Text;
use crate::reward::RewardModel;
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

pub const ABSOLUTE_TEMPLATE: &str = "Rate how well the response answers the prompt, from 1 (useless) to 10 (perfect).\n\nPrompt: {prompt}\n\nResponse: {response}\n\nReply with the number only.";
pub const PAIRWISE_TEMPLATE: &str = "Which response answers the prompt better?\n\nPrompt: {prompt}\n\nResponse A: {a}\n\nResponse B: {b}\n\nReply with A or B only.";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    /// The server's address (required).
    pub url: String,
    /// The served model ("" lets the server pick).
    pub model: String,
    /// The user message: {prompt} and {response} (absolute), or {prompt}, {a} and {b}
    /// (pairwise); "" uses the built-in one.
    pub template: String,
    pub max_tokens: usize,
    pub temperature: f64,
    pub seed: u64,
    /// The scores the template asks for; a reply outside them is an error.
    pub min_score: f64,
    pub max_score: f64,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            model: String::new(),
            template: String::new(),
            max_tokens: 8,
            temperature: 0.0,
            seed: 0,
            min_score: 1.0,
            max_score: 10.0,
        }
    }
}

pub struct Judge {
    client: Client,
    cfg: JudgeConfig,
}

impl Judge {
    pub fn new(cfg: &JudgeConfig, http: &HttpConfig) -> Result<Self> {
        if cfg.url.is_empty() {
            bail!("judge: `url` is required (e.g. \"http://127.0.0.1:8080\")");
        }
        Ok(Self {
            client: Client::new(&cfg.url, http)?,
            cfg: cfg.clone(),
        })
    }

    fn template(&self, default: &str, slots: &[&str]) -> Result<String> {
        let t = if self.cfg.template.is_empty() {
            default.to_string()
        } else {
            self.cfg.template.clone()
        };
        for s in slots {
            if !t.contains(&format!("{{{s}}}")) {
                bail!("judge: the template has no {{{s}}}");
            }
        }
        Ok(t)
    }

    fn endpoint(&self) -> String {
        format!("{}/v1/chat/completions", self.client.base())
    }

    /// The judge's reply to one user message.
    fn ask(&self, message: String) -> Result<String> {
        let endpoint = self.endpoint();
        let mut body = json!({
            "messages": [{"role": "user", "content": message}],
            "max_tokens": self.cfg.max_tokens,
            "temperature": self.cfg.temperature,
            "seed": self.cfg.seed,
        });
        if !self.cfg.model.is_empty() {
            body["model"] = json!(self.cfg.model);
        }
        let reply = self.client.post("/v1/chat/completions", &body)?;
        array(&reply, "choices", &endpoint)?
            .first()
            .and_then(|c| c.get("message"))
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                anyhow!(
                    "{endpoint}: the reply has no choices[0].message.content: {}",
                    excerpt(&reply.to_string(), 200)
                )
            })
    }

    /// For each prompt, 1 when the judge prefers `a`, 0 when it prefers `b`.
    pub fn prefer(&self, prompts: &[Text], a: &[Text], b: &[Text]) -> Result<Vec<f64>> {
        let t = self.template(PAIRWISE_TEMPLATE, &["prompt", "a", "b"])?;
        let n = prompts.len().min(a.len()).min(b.len());
        concurrently(n, self.client.config().concurrency, |i| {
            let reply = self.ask(
                t.replace("{prompt}", &Text::display(&prompts[i]))
                    .replace("{a}", &Text::display(&a[i]))
                    .replace("{b}", &Text::display(&b[i])),
            )?;
            parse_choice(&reply).ok_or_else(|| {
                anyhow!(
                    "{}: cannot read A or B from the reply {reply:?}",
                    self.endpoint()
                )
            })
        })
    }
}

impl RewardModel for Judge {
    fn rewards(&self, prompts: &[Text], responses: &[Text]) -> Result<Vec<f64>> {
        let t = self.template(ABSOLUTE_TEMPLATE, &["prompt", "response"])?;
        let n = prompts.len().min(responses.len());
        concurrently(n, self.client.config().concurrency, |i| {
            let reply = self.ask(
                t.replace("{prompt}", &Text::display(&prompts[i]))
                    .replace("{response}", &Text::display(&responses[i])),
            )?;
            let (lo, hi) = (self.cfg.min_score, self.cfg.max_score);
            match parse_score(&reply) {
                Some(v) if (lo..=hi).contains(&v) => Ok(v),
                Some(v) => bail!(
                    "{}: the reply {reply:?} scores {v}, outside [{lo}, {hi}]",
                    self.endpoint()
                ),
                None => bail!(
                    "{}: cannot read a score from the reply {reply:?}",
                    self.endpoint()
                ),
            }
        })
    }

    fn describe(&self) -> String {
        format!("LLM judge {}", self.client.base())
    }
}

/// The first number in a reply ("8", "Score: 7.5/10").
pub fn parse_score(reply: &str) -> Option<f64> {
    let start = reply.find(|c: char| c.is_ascii_digit())?;
    let neg = reply[..start].ends_with('-');
    let num: String = reply[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let v: f64 = num.trim_end_matches('.').parse().ok()?;
    Some(if neg { -v } else { v })
}

/// 1 for a reply that is A, 0 for B ("A", "Response B.", "b"); None otherwise.
pub fn parse_choice(reply: &str) -> Option<f64> {
    let words: Vec<String> = reply
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase)
        .collect();
    let a = words.iter().any(|w| w == "A");
    let b = words.iter().any(|w| w == "B");
    match (a, b) {
        (true, false) => Some(1.0),
        (false, true) => Some(0.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_score_is_the_first_number_of_the_reply() {
        for (reply, want) in [
            ("8", Some(8.0)),
            ("Score: 7.5/10", Some(7.5)),
            ("I'd say 9.", Some(9.0)),
            ("-2", Some(-2.0)),
            ("ten", None),
            ("", None),
            ("1.2.3", None),
        ] {
            assert_eq!(parse_score(reply), want, "{reply:?}");
        }
    }

    #[test]
    fn a_choice_names_exactly_one_of_a_and_b() {
        for (reply, want) in [
            ("A", Some(1.0)),
            ("Response B.", Some(0.0)),
            ("b", Some(0.0)),
            ("(A) is better", Some(1.0)),
            ("A or B", None),
            ("Both are fine", None),
            ("Answer", None),
        ] {
            assert_eq!(parse_choice(reply), want, "{reply:?}");
        }
    }
}

//! Prompt/response encoding as TRL's DPOTrainer does it: conversational examples go through the
//! chat template (the response text is the templated conversation minus the templated prompt),
//! prompt and response are tokenized separately, and EOS is appended to the response.

use crate::model::template::Message;
use crate::model::tokenizer::TextTokenizer;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// A prompt or a response: plain text, or chat messages (TRL's "conversational" format).
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    Plain(String),
    Chat(Vec<Message>),
}

/// Token ids of prompt followed by response; `ids[prompt_len..]` is the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSeq {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

impl EncodedSeq {
    pub fn response_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// What `max_length` cuts when prompt + response is too long (TRL's `truncation_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Keep the last `max_length` tokens: the start of the prompt goes first (TRL's default).
    #[default]
    KeepEnd,
    /// Keep the first `max_length` tokens: the end of the response goes first.
    KeepStart,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EncodeConfig {
    /// Longest prompt + response, in tokens.
    pub max_length: Option<usize>,
    /// Longest prompt; longer prompts keep their last tokens.
    pub max_prompt_length: Option<usize>,
    /// Longest response (EOS included); longer responses keep their first tokens.
    pub max_completion_length: Option<usize>,
    pub truncation: Truncation,
}

impl EncodeConfig {
    /// TRL's DPOConfig defaults (`max_length` 1024, `max_prompt_length` 512, `keep_end`), held
    /// within a model context of `context` tokens, so that no input, however long, reaches the
    /// model past its positions or allocates without bound.
    pub fn for_context(context: usize) -> Self {
        Self {
            max_length: Some(context.min(1024)),
            max_prompt_length: Some((context / 2).clamp(1, 512)),
            max_completion_length: None,
            truncation: Truncation::KeepEnd,
        }
    }
}

/// The prompt and response as text, after the chat template when the example is conversational.
pub fn render(tok: &TextTokenizer, prompt: &Text, response: &Text) -> Result<(String, String)> {
    match (prompt, response) {
        (Text::Plain(p), Text::Plain(r)) => Ok((p.clone(), r.clone())),
        (Text::Chat(p), response) => {
            let template = tok
                .template
                .as_ref()
                .context("conversational data needs a chat template, and the tokenizer has none")?;
            let reply = match response {
                Text::Chat(m) => m.clone(),
                Text::Plain(s) => vec![Message::new("assistant", s)],
            };
            let prompt_text = template.render(p, true)?;
            let full = template.render(&[p.clone(), reply].concat(), false)?;
            match full.strip_prefix(&prompt_text) {
                Some(rest) => Ok((prompt_text, rest.to_string())),
                None => bail!(
                    "the chat template renders the prompt differently inside the full conversation, \
                     so the response cannot be separated from it"
                ),
            }
        }
        (Text::Plain(_), Text::Chat(_)) => {
            bail!("a plain-text prompt cannot take a conversational response")
        }
    }
}

/// The last `n` of `ids` (all with no `n`): how a long prompt is cut.
pub fn keep_last(ids: Vec<u32>, n: Option<usize>) -> Vec<u32> {
    match n {
        Some(n) if ids.len() > n => ids[ids.len() - n..].to_vec(),
        _ => ids,
    }
}

/// Encodes one prompt/response pair with TRL's truncation rules. If `max_length` leaves no
/// prompt token, the first kept token serves as the prompt (a response token needs context).
pub fn encode(
    tok: &TextTokenizer,
    prompt: &Text,
    response: &Text,
    cfg: &EncodeConfig,
) -> Result<EncodedSeq> {
    let (prompt_text, response_text) = render(tok, prompt, response)?;
    let prompt_ids = keep_last(tok.encode(&prompt_text)?, cfg.max_prompt_length);
    let mut response_ids = tok.encode(&response_text)?;
    response_ids.push(tok.eos_token_id);
    if let Some(n) = cfg.max_completion_length {
        response_ids.truncate(n);
    }
    if prompt_ids.is_empty() {
        bail!("the prompt is empty after tokenization");
    }
    let mut seq = EncodedSeq {
        prompt_len: prompt_ids.len(),
        ids: [prompt_ids, response_ids].concat(),
    };
    if let Some(max) = cfg.max_length {
        if seq.ids.len() > max {
            match cfg.truncation {
                Truncation::KeepStart => seq.ids.truncate(max),
                Truncation::KeepEnd => {
                    let cut = seq.ids.len() - max;
                    seq.ids.drain(..cut);
                    seq.prompt_len = seq.prompt_len.saturating_sub(cut).max(1);
                }
            }
        }
    }
    if seq.prompt_len >= seq.ids.len() {
        bail!("max_length {:?} leaves no response token", cfg.max_length);
    }
    Ok(seq)
}

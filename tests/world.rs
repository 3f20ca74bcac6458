//! The built-in default world: its task and rewards by hand, its tokenizer, determinism,
//! sampling, and the measurements of the paper's premise.

use candle_core::Device;
use metaapo::data::encode::Text;
use metaapo::generate::{generate, SampleConfig, Stop};
use metaapo::world::task::{
    annotator_reward, gold_reward, split, Annotator, Form, Problem, Teacher,
};
use metaapo::world::{vocab, BuiltinWorld, Split, WorldConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[test]
fn gold_reward_by_hand() {
    let p = Problem { a: 47, b: 38 };
    assert_eq!(p.prompt(), "47+38=");
    assert!(p.carries());
    assert_eq!(gold_reward(&p, "85"), 1.0);
    // The forgotten carry, 10 away: 0.5 * (1 - 10/20).
    assert_eq!(gold_reward(&p, "75"), 0.25);
    assert_eq!(gold_reward(&p, "84"), 0.5 * (1.0 - 1.0 / 20.0));
    assert_eq!(gold_reward(&p, "185"), 0.0);
    for junk in ["", "085", "8 5", "+85", "eighty"] {
        assert_eq!(gold_reward(&p, junk), 0.0, "{junk:?}");
    }
    assert_eq!(Problem::parse("47+38="), Some(p));
    assert_eq!(Problem::parse("47+38"), None);
    // The default world's offline author shows its work; the final number is judged.
    assert_eq!(p.worked("85"), "77+8=85");
    assert_eq!(Form::Worked.write(&p, "75"), "77+8=75");
    assert_eq!(Form::Plain.write(&p, "75"), "75");
    assert_eq!(gold_reward(&p, "77+8=85"), 1.0);
    assert_eq!(gold_reward(&p, "77+8=75"), 0.25);
    for junk in ["8=85", "77+8=", "+8=85", "77+8=85=85", "77-8=85"] {
        assert_eq!(gold_reward(&p, junk), 0.0, "{junk:?}");
    }
}

#[test]
fn the_annotators_bias_rewards_a_right_units_digit() {
    let p = Problem { a: 47, b: 38 };
    let a = Annotator {
        noise: 0.0,
        units_bonus: 0.5,
        seed: 0,
    };
    assert_eq!(annotator_reward(&p, "85", &a), 1.5);
    // The forgotten carry keeps the units digit and now beats a closer answer.
    assert_eq!(annotator_reward(&p, "75", &a), 0.75);
    assert_eq!(annotator_reward(&p, "84", &a), 0.5 * (1.0 - 1.0 / 20.0));
    assert_eq!(annotator_reward(&p, "77+8=75", &a), 0.75);
    assert_eq!(annotator_reward(&p, "x5", &a), 0.0);
}

#[test]
fn annotator_is_a_fixed_noisy_proxy() {
    let p = Problem { a: 12, b: 30 };
    let noisy = |seed| Annotator {
        noise: 0.25,
        units_bonus: 0.0,
        seed,
    };
    let a = annotator_reward(&p, "42", &noisy(0));
    assert_eq!(
        a,
        annotator_reward(&p, "42", &noisy(0)),
        "same text, same score"
    );
    assert_ne!(a, annotator_reward(&p, "42", &noisy(1)));
    let quiet = Annotator {
        noise: 0.0,
        ..noisy(0)
    };
    assert_eq!(annotator_reward(&p, "42", &quiet), 1.0);
    // Over many texts the noise has the configured scale.
    let errs: Vec<f64> = (0..2000)
        .map(|i| {
            let q = Problem {
                a: i % 100,
                b: i / 100,
            };
            annotator_reward(&q, "7", &noisy(0)) - gold_reward(&q, "7")
        })
        .collect();
    let sd = (errs.iter().map(|e| e * e).sum::<f64>() / errs.len() as f64).sqrt();
    assert!((sd - 0.25).abs() < 0.02, "noise sd {sd}");
}

#[test]
fn teachers_make_their_mistakes_at_their_rates() {
    let t = Teacher {
        drop_hundreds: 0.0,
        forget_carry: 0.6,
        off_by_one: 0.0,
        off_by_ten: 0.0,
        swap_digits: 0.0,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let p = Problem { a: 47, b: 38 };
    let wrong = (0..4000).filter(|_| t.answer(&p, &mut rng) == "75").count();
    assert!((wrong as f64 / 4000.0 - 0.6).abs() < 0.03);
    let no_carry = Problem { a: 41, b: 38 };
    assert!((0..100).all(|_| t.answer(&no_carry, &mut rng) == "79"));
    // At 0 the hundreds rule is left out of the serialized teacher, so the cache keys of the
    // worlds that predate it are unchanged.
    assert!(!serde_json::to_string(&t).unwrap().contains("drop_hundreds"));
    let hundreds = Teacher {
        drop_hundreds: 0.9,
        ..t
    };
    let big = Problem { a: 60, b: 65 };
    let dropped = (0..4000)
        .filter(|_| hundreds.answer(&big, &mut rng) == "25")
        .count();
    assert!((dropped as f64 / 4000.0 - 0.9).abs() < 0.03, "{dropped}");
}

#[test]
fn the_worlds_are_named_and_an_unknown_one_lists_them() {
    let premise = WorldConfig::preset("default").unwrap();
    assert_eq!(premise.offline_form, Form::Worked);
    let err = WorldConfig::preset("nope").unwrap_err().to_string();
    for name in metaapo::world::builtin::NAMES {
        assert!(err.contains(name), "{err}");
        assert_eq!(WorldConfig::preset(name).unwrap().name, name);
    }
    // Each variant differs from the default world in one setting.
    let on_policy = WorldConfig::preset("on-policy").unwrap();
    assert_eq!(on_policy.offline_form, Form::Plain);
    assert_eq!(on_policy.sft_teacher, premise.sft_teacher);
}

#[test]
fn split_is_disjoint_and_seeded() {
    let (train, eval) = split(100, 500, 0);
    assert_eq!((train.len(), eval.len()), (9500, 500));
    let held: std::collections::HashSet<_> = eval.iter().collect();
    assert!(train.iter().all(|p| !held.contains(p)));
    assert_eq!(split(100, 500, 0).1, eval);
    assert_ne!(split(100, 500, 1).1, eval);
}

#[test]
fn tokenizer_is_one_token_per_character() {
    let tok = vocab::tokenizer().unwrap();
    let ids = tok.encode("47+38=85").unwrap();
    assert_eq!(ids.len(), 8);
    assert_eq!(tok.decode(&ids, true).unwrap(), "47+38=85");
    assert_eq!(tok.vocab_size(), vocab::size());
    // A character outside the vocabulary is <unk>, not silently dropped.
    let unk = tok.token_to_id(vocab::UNK).unwrap();
    assert_eq!(tok.encode("4*5").unwrap()[1], unk);
}

fn tiny() -> BuiltinWorld {
    tiny_with(|_| {})
}

/// The tiny world with `edit` applied to its config (the warm-up is shared: its cache key
/// leaves out the pairs' and the annotator's noise).
fn tiny_with(edit: impl FnOnce(&mut WorldConfig)) -> BuiltinWorld {
    let dir = std::env::temp_dir().join(format!("metaapo-world-{}", std::process::id()));
    std::env::set_var("METAAPO_CACHE", &dir);
    let mut config = WorldConfig::preset("tiny").unwrap();
    edit(&mut config);
    BuiltinWorld::build(config, &Device::Cpu, &mut |_, _, _| Ok(())).unwrap()
}

#[test]
fn the_validation_split_is_held_out_and_greedy_evaluation_is_reported() {
    let w = tiny_with(|c| {
        c.validation_size = 16;
        c.greedy_eval = true;
        c.eval_temperature = 1.0;
    });
    assert_eq!((w.validation.len(), w.eval.len()), (16, 64));
    let held: std::collections::HashSet<_> = w.eval.iter().chain(&w.validation).collect();
    assert_eq!(held.len(), 80, "validation and test are disjoint");
    assert!(w.train.iter().all(|p| !held.contains(p)));
    let model = w.model(false).unwrap();
    let v = w.evaluate_model(&model, Split::Validation).unwrap();
    assert_eq!(v.win_rate, 0.5, "the warm-up ties with itself");
    let (greedy_gold, _) = v.greedy.unwrap();
    let greedy_only = tiny_with(|c| {
        c.validation_size = 16;
        c.eval_temperature = 0.0;
    });
    let g = greedy_only
        .evaluate_model(&model, Split::Validation)
        .unwrap();
    assert_eq!(g.gold_reward, greedy_gold);
    assert!(g.greedy.is_none());
    // Without a validation split there is nothing to evaluate on.
    let err = tiny_with(|c| c.validation_size = 0)
        .evaluate_model(&model, Split::Validation)
        .unwrap_err();
    assert!(err.to_string().contains("no validation split"), "{err}");
}

#[test]
fn premise_measures_follow_the_worlds_settings() {
    use metaapo::world::premise::{measure, PremiseConfig};
    let cfg = PremiseConfig {
        prompts: 128,
        k: 8,
        seed: 0,
    };
    let value = |w: &BuiltinWorld, property: &str| {
        let checks = measure(w, &cfg).unwrap();
        let c = checks.into_iter().find(|c| c.property == property).unwrap();
        assert_eq!(c.pass, c.value >= c.target[3..].parse::<f64>().unwrap());
        c.value
    };
    let w = tiny();
    let ordered = w
        .pairs
        .iter()
        .filter(|p| {
            let (x, c, r) = (p.prompt.display(), p.chosen.display(), p.rejected.display());
            w.gold_reward(&x, &c).unwrap() > w.gold_reward(&x, &r).unwrap()
        })
        .count();
    assert_eq!(value(&w, "offline quality"), ordered as f64 / 128.0);
    assert!(value(&w, "off-policy offline data").is_finite());
    let none_right = value(&w, "capability-limited online data");
    assert!((0.0..1.0).contains(&none_right), "{none_right}");

    let clean = tiny_with(|c| {
        c.label_noise = 0.0;
        c.annotator_noise = 0.0;
    });
    assert!(value(&clean, "offline quality") > 0.9);
    assert_eq!(value(&clean, "imperfect annotator"), 0.0);
    let flipped = tiny_with(|c| c.label_noise = 1.0);
    assert!(value(&flipped, "offline quality") < 0.1);
    // Loud but independent noise misorders pairs, and none of them systematically.
    let noisy = tiny_with(|c| c.annotator_noise = 1.0);
    assert!(value(&noisy, "imperfect annotator") > 0.1);
    assert_eq!(value(&noisy, "systematic annotator bias"), 0.0);
}

#[test]
fn world_is_deterministic_and_cached() {
    let a = tiny();
    let b = tiny(); // loaded from the cache this time
    assert_eq!(a.pairs, b.pairs);
    assert_eq!(a.eval, b.eval);
    let (pa, pb) = (a.model(false).unwrap(), b.model(false).unwrap());
    assert_eq!(
        a.evaluate_model(&pa, Split::Test).unwrap(),
        b.evaluate_model(&pb, Split::Test).unwrap()
    );
    let e = a.evaluate_model(&pa, Split::Test).unwrap();
    assert_eq!(e.win_rate, 0.5, "the warm-up policy ties with itself");
    assert_eq!(a.pairs.len(), 128);
    // Label noise: some pairs prefer the worse answer by the gold reward, most do not.
    let flipped = a
        .pairs
        .iter()
        .filter(|p| {
            let (Text::Plain(x), Text::Plain(c), Text::Plain(r)) =
                (&p.prompt, &p.chosen, &p.rejected)
            else {
                panic!("plain text")
            };
            a.gold_reward(x, c).unwrap() < a.gold_reward(x, r).unwrap()
        })
        .count();
    assert!(
        flipped > 5 && flipped < 60,
        "{flipped} of 128 pairs flipped"
    );
}

#[test]
fn sampling_is_seeded_and_greedy_matches_top_k_1() {
    let w = tiny();
    let model = w.model(false).unwrap();
    let tok = &w.tokenizer;
    let prompts: Vec<Vec<u32>> = ["12+30=", "7+8=", "99+99="]
        .iter()
        .map(|p| tok.encode(p).unwrap())
        .collect();
    let run = |cfg: &SampleConfig| {
        generate(
            &model,
            &prompts,
            &Stop::tokens(&[tok.eos_token_id]),
            tok.pad_token_id,
            cfg,
        )
        .unwrap()
    };
    let sampled = SampleConfig {
        n: 4,
        max_new_tokens: 5,
        seed: 9,
        ..SampleConfig::default()
    };
    let a = run(&sampled);
    assert_eq!(a.len(), 12);
    assert_eq!(a, run(&sampled));
    assert_eq!(
        a.iter().map(|s| s.prompt).collect::<Vec<_>>(),
        [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    );
    assert!(a.iter().all(|s| s.tokens.len() <= 5));
    let greedy = run(&SampleConfig {
        temperature: 0.0,
        max_new_tokens: 5,
        ..SampleConfig::default()
    });
    let top1 = run(&SampleConfig {
        top_k: 1,
        max_new_tokens: 5,
        seed: 3,
        ..SampleConfig::default()
    });
    assert_eq!(greedy, top1);
}

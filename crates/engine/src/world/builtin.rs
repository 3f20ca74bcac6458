//! The built-in worlds (docs/ARCHITECTURE.md): a verifiable task, a tokenizer, a small policy warmed
//! up in-process and cached, a gold reward and a noisier annotator, off-policy offline pairs with
//! label noise, and a held-out evaluation set. Everything follows from the config and its seed.

use super::task::{self, Annotator, Form, Problem, Teacher};
use super::warmup::{self, Warmup};
use super::{vocab, Split, World};
use crate::atomic::Replace;
use crate::data::encode::Text;
use crate::data::pairs::Pair;
use crate::fetch::cache_dir;
use crate::generate::{generate, SampleConfig, Stop};
use crate::model::config::ModelConfig;
use crate::model::tokenizer::TextTokenizer;
use crate::model::{hf, init, CausalLm};
use crate::policy::Policy;
use crate::reward::RewardModel;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

/// Bumped whenever building a world changes, so stale cached warm-ups are not reused.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    pub name: String,
    pub seed: u64,
    /// Operands are the integers below this bound.
    pub operands: u32,
    /// The test split: held-out prompts for reported numbers.
    pub eval_size: usize,
    /// Held-out prompts for choosing settings, apart from the test split (0: none).
    #[serde(default)]
    pub validation_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub warmup: Warmup,
    /// Writes the SFT data the policy is warmed up on.
    pub sft_teacher: Teacher,
    /// Writes the offline preference pairs: a different policy, with different mistakes.
    pub pair_teacher: Teacher,
    /// How the offline author writes its answers (the SFT teacher writes plain numbers).
    #[serde(default)]
    pub offline_form: Form,
    pub pairs: usize,
    /// Probability that an offline pair's labels are swapped.
    pub label_noise: f64,
    /// Standard deviation of the annotator's independent error.
    pub annotator_noise: f64,
    /// What the annotator adds for a right units digit (its systematic bias).
    #[serde(default)]
    pub annotator_bias: f64,
    /// Sampling temperature of `evaluate` (0 = greedy).
    pub eval_temperature: f64,
    /// Whether `evaluate` also decodes greedily (`greedy_*` metrics).
    #[serde(default)]
    pub greedy_eval: bool,
    /// The learning rate offline DPO takes on this world (online loops set their own).
    pub lr: f64,
}

/// The built-in worlds' names, as `world(NAME)` and `metaapo world NAME` take them.
pub const NAMES: [&str; 7] = [
    "default",
    "noisy-labels",
    "unbiased-annotator",
    "capable-policy",
    "on-policy",
    "legacy",
    "tiny",
];

impl WorldConfig {
    /// A built-in world by name ([`NAMES`]): `default` (built to hold the paper's premise; the
    /// one scripts run on), its variants, `legacy` (the default world before it, which inverts
    /// the premise) and `tiny` (seconds; for tests and the REPL).
    pub fn preset(name: &str) -> Result<Self> {
        let legacy = Self {
            name: "legacy".into(),
            seed: 0,
            operands: 100,
            eval_size: 500,
            // Every world of the suite holds out a validation split for choosing settings and
            // decodes greedily beside sampling, so a comparison reads the same on each.
            validation_size: 500,
            hidden: 64,
            layers: 2,
            heads: 4,
            warmup: Warmup {
                steps: 4000,
                batch: 64,
                lr: 3e-3,
            },
            sft_teacher: Teacher {
                drop_hundreds: 0.0,
                forget_carry: 0.6,
                off_by_one: 0.05,
                off_by_ten: 0.0,
                swap_digits: 0.0,
            },
            pair_teacher: Teacher {
                drop_hundreds: 0.0,
                forget_carry: 0.3,
                off_by_one: 0.15,
                off_by_ten: 0.1,
                swap_digits: 0.1,
            },
            pairs: 8000,
            offline_form: Form::Plain,
            label_noise: 0.2,
            annotator_noise: 0.25,
            annotator_bias: 0.0,
            eval_temperature: 1.0,
            greedy_eval: true,
            lr: 1e-4,
        };
        // Built to hold the paper's premise (docs/ALGORITHMS.md, "The premise a world must
        // hold"), its settings fixed from that premise alone: a stronger offline author
        // that shows its work, which the policy never does; an SFT teacher that nearly
        // always forgets the carries, so many prompts are beyond the policy; labels mostly
        // right; an annotator that over-rewards a right units digit.
        let premise = Self {
            name: "default".into(),
            sft_teacher: Teacher {
                drop_hundreds: 0.9,
                forget_carry: 0.95,
                off_by_one: 0.1,
                off_by_ten: 0.0,
                swap_digits: 0.0,
            },
            pair_teacher: Teacher {
                drop_hundreds: 0.0,
                forget_carry: 0.1,
                off_by_one: 0.1,
                off_by_ten: 0.05,
                swap_digits: 0.05,
            },
            offline_form: Form::Worked,
            label_noise: 0.05,
            annotator_bias: 0.5,
            ..legacy.clone()
        };
        match name {
            "default" => Ok(premise),
            "legacy" => Ok(legacy),
            // Small enough to build in seconds, trained enough (gold about 0.6) that a reduced
            // online run measurably improves it.
            "tiny" => Ok(Self {
                name: "tiny".into(),
                operands: 20,
                eval_size: 64,
                validation_size: 64,
                hidden: 32,
                warmup: Warmup {
                    steps: 600,
                    batch: 64,
                    lr: 3e-3,
                },
                pairs: 128,
                eval_temperature: 0.0,
                greedy_eval: false,
                ..legacy
            }),
            // Each variant flips one property of the default world, to the legacy world's
            // setting where it has one, so a suite of worlds shows where each method should win.
            "noisy-labels" => Ok(Self {
                name: name.into(),
                label_noise: legacy.label_noise,
                ..premise
            }),
            "unbiased-annotator" => Ok(Self {
                name: name.into(),
                annotator_bias: 0.0,
                ..premise
            }),
            "capable-policy" => Ok(Self {
                name: name.into(),
                sft_teacher: legacy.sft_teacher.clone(),
                ..premise
            }),
            "on-policy" => Ok(Self {
                name: name.into(),
                offline_form: Form::Plain,
                ..premise
            }),
            other => bail!(
                "unknown world {other:?}: the built-in worlds are {}",
                NAMES.join(", ")
            ),
        }
    }

    fn model_config(&self) -> Result<ModelConfig> {
        ModelConfig::from_json(json!({
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": vocab::size(),
            "hidden_size": self.hidden,
            "intermediate_size": self.hidden * 3,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": true,
            "max_position_embeddings": 64,
            "pad_token_id": 0, "eos_token_id": 1,
        }))
    }

    /// Where the warmed-up policy is cached: one folder per configuration of what the warm-up
    /// depends on, whatever the world is called (changing the pairs, noise or evaluation reuses
    /// it, so variants that keep the SFT teacher share one).
    fn cache_path(&self) -> Result<PathBuf> {
        let mut key = json!({
            "format": FORMAT, "seed": self.seed, "operands": self.operands,
            "eval_size": self.eval_size, "hidden": self.hidden, "layers": self.layers,
            "heads": self.heads, "warmup": self.warmup, "sft_teacher": self.sft_teacher,
        });
        // Absent at 0, so the keys of worlds without a validation split stay as they were.
        if self.validation_size > 0 {
            key["validation_size"] = json!(self.validation_size);
        }
        let key = key.to_string();
        let hash = Sha256::digest(key.as_bytes());
        let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(cache_dir()?.join("worlds").join(format!("warmup-{hex}")))
    }
}

/// Metrics of `BuiltinWorld::evaluate_model`, averaged over a held-out split.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub gold_reward: f64,
    pub success: f64,
    /// Fraction of prompts where the policy's answer beats the warm-up policy's (ties count half).
    pub win_rate: f64,
    /// Gold reward and success of greedy answers, where the world also decodes greedily.
    pub greedy: Option<(f64, f64)>,
}

pub struct BuiltinWorld {
    pub config: WorldConfig,
    pub tokenizer: TextTokenizer,
    /// The warmed-up policy (frozen; `policy()` hands out trainable copies).
    warm: CausalLm,
    pub train: Vec<Problem>,
    /// The test split.
    pub eval: Vec<Problem>,
    pub validation: Vec<Problem>,
    pub pairs: Vec<Pair>,
    /// Gold reward of the warm-up policy's answer to each test and validation prompt.
    warm_eval: Vec<f64>,
    warm_validation: Vec<f64>,
}

impl BuiltinWorld {
    /// Loads the cached warm-up for `config` or trains it (reporting `progress(step, total,
    /// loss)`, which may stop it by returning an error), then builds the data. The policy lives on `device` in f32.
    pub fn build(
        config: WorldConfig,
        device: &Device,
        progress: &mut dyn FnMut(u64, u64, f64) -> Result<()>,
    ) -> Result<Self> {
        let tokenizer = vocab::tokenizer()?;
        let held_out = config.eval_size + config.validation_size;
        let problems = (config.operands as usize).pow(2);
        if held_out >= problems {
            bail!(
                "world {}: {} test and {} validation prompts leave none of its {problems} problems to train on",
                config.name,
                config.eval_size,
                config.validation_size
            );
        }
        let (train, mut eval) = task::split(config.operands, held_out, config.seed);
        let validation = eval.split_off(config.eval_size);
        let dir = config.cache_path()?;
        let warm = if dir.join(hf::WEIGHTS).exists() {
            hf::load(&dir, device, DType::F32, false)
                .with_context(|| format!("cached world in {}", dir.display()))?
                .0
        } else {
            let model_config = config.model_config()?;
            let weights = init::random_weights(&model_config, 0.02, config.seed)?;
            let model = CausalLm::from_tensors(model_config, weights, "init", DType::F32, true)?;
            let total = config.warmup.steps;
            warmup::sft(
                &model,
                &tokenizer,
                &train,
                &config.sft_teacher,
                &config.warmup,
                config.seed,
                &mut |step, loss| progress(step, total, loss),
            )?;
            // The cache is metaapo's own folder: a stale entry is replaced.
            let saved = crate::atomic::write_dir(&dir, "world", Replace::SameKind, "", |tmp| {
                hf::write_into(tmp, &model, Some(&tokenizer))?;
                std::fs::write(
                    tmp.join("world.json"),
                    serde_json::to_string_pretty(&config)?,
                )?;
                Ok(())
            });
            // A concurrent run that built the same world first is as good as our own copy.
            if saved.is_err() && !dir.join(hf::WEIGHTS).exists() {
                saved?;
            }
            hf::load(&dir, device, DType::F32, false)?.0
        };
        let pairs = offline_pairs(&config, &train);
        let mut world = Self {
            config,
            tokenizer,
            warm,
            train,
            eval,
            validation,
            pairs,
            warm_eval: vec![],
            warm_validation: vec![],
        };
        let temperature = world.config.eval_temperature;
        world.warm_eval = world.rewards(&world.warm, Split::Test, temperature)?;
        world.warm_validation = world.rewards(&world.warm, Split::Validation, temperature)?;
        Ok(world)
    }

    /// A copy of the warmed-up policy; trainable copies share nothing with the world.
    pub fn model(&self, trainable: bool) -> Result<CausalLm> {
        let tensors: HashMap<String, _> = self.warm.named_tensors().iter().cloned().collect();
        CausalLm::from_tensors(
            self.warm.config.clone(),
            tensors,
            "the world's policy",
            DType::F32,
            trainable,
        )
    }

    /// The gold reward of `response` to a prompt of this world's task.
    pub fn gold_reward(&self, prompt: &str, response: &str) -> Result<f64> {
        Ok(task::gold_reward(&problem(prompt)?, response))
    }

    /// The annotator's (noisy, biased) reward.
    pub fn annotator_reward(&self, prompt: &str, response: &str) -> Result<f64> {
        Ok(task::annotator_reward(
            &problem(prompt)?,
            response,
            &self.annotator(),
        ))
    }

    pub fn annotator(&self) -> Annotator {
        Annotator {
            noise: self.config.annotator_noise,
            units_bonus: self.config.annotator_bias,
            seed: self.config.seed,
        }
    }

    /// Samples one answer per prompt of `split` (seeded the same way for every model, so
    /// comparisons are paired) and scores them with the gold reward; with `greedy_eval`, the
    /// greedy answers too.
    pub fn evaluate_model(&self, model: &CausalLm, split: Split) -> Result<Evaluation> {
        let (problems, warm) = self.held_out(split);
        if problems.is_empty() {
            bail!(
                "the world {} has no {} split (validation_size is 0)",
                self.config.name,
                split.prefix()
            );
        }
        let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
        let exact = |r: &[f64]| r.iter().filter(|&&x| x == 1.0).count() as f64 / r.len() as f64;
        let rewards = self.rewards(model, split, self.config.eval_temperature)?;
        let greedy = if self.config.greedy_eval {
            let g = self.rewards(model, split, 0.0)?;
            Some((mean(&g), exact(&g)))
        } else {
            None
        };
        Ok(Evaluation {
            gold_reward: mean(&rewards),
            success: exact(&rewards),
            win_rate: crate::reward::win_rate(&rewards, warm),
            greedy,
        })
    }

    /// The prompts of a held-out split, and the warm-up policy's gold rewards on them.
    fn held_out(&self, split: Split) -> (&[Problem], &[f64]) {
        match split {
            Split::Test => (&self.eval, &self.warm_eval),
            Split::Validation => (&self.validation, &self.warm_validation),
        }
    }

    /// The gold reward of one answer per prompt of `split`, decoded at `temperature`.
    fn rewards(&self, model: &CausalLm, split: Split, temperature: f64) -> Result<Vec<f64>> {
        let (problems, _) = self.held_out(split);
        if problems.is_empty() {
            return Ok(vec![]);
        }
        let prompts = problems
            .iter()
            .map(|p| self.tokenizer.encode(&p.prompt()))
            .collect::<Result<Vec<_>>>()?;
        let cfg = SampleConfig {
            max_new_tokens: self.max_new_tokens(),
            temperature,
            seed: self.config.seed ^ 0xe7a1,
            batch_size: 512,
            ..SampleConfig::default()
        };
        let tok = &self.tokenizer;
        generate(
            model,
            &prompts,
            &Stop::tokens(&[tok.eos_token_id]),
            tok.pad_token_id,
            &cfg,
        )?
        .iter()
        .map(|s| {
            let text = tok.decode(&s.tokens, true)?;
            Ok(task::gold_reward(&problems[s.prompt], &text))
        })
        .collect()
    }
}

/// The task's rewards as a reward model: the gold one, or the annotator's.
struct TaskReward {
    /// `None` for the gold reward.
    annotator: Option<Annotator>,
}

impl RewardModel for TaskReward {
    fn rewards(&self, prompts: &[Text], responses: &[Text]) -> Result<Vec<f64>> {
        prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| {
                let (p, r) = (problem(&p.display())?, r.display());
                Ok(match &self.annotator {
                    None => task::gold_reward(&p, &r),
                    Some(a) => task::annotator_reward(&p, &r, a),
                })
            })
            .collect()
    }

    fn describe(&self) -> String {
        match &self.annotator {
            None => "the built-in world's gold reward".into(),
            Some(a) => format!(
                "the built-in world's annotator (gold reward, plus {} for a right units digit, plus noise of sd {})",
                a.units_bonus, a.noise
            ),
        }
    }
}

impl World for BuiltinWorld {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn describe(&self) -> String {
        format!(
            "{}: addition of numbers below {}, {} offline pairs, {} test and {} validation prompts",
            self.config.name,
            self.config.operands,
            self.pairs.len(),
            self.eval.len(),
            self.validation.len()
        )
    }

    fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    fn train_prompts(&self) -> Vec<Text> {
        self.train.iter().map(|p| Text::Plain(p.prompt())).collect()
    }

    fn eval_prompts(&self) -> Vec<Text> {
        self.eval.iter().map(|p| Text::Plain(p.prompt())).collect()
    }

    fn lr(&self) -> f64 {
        self.config.lr
    }

    /// Enough new tokens for the largest answer in the longer of the two authors' forms, EOS
    /// and one more.
    fn max_new_tokens(&self) -> usize {
        let top = self.config.operands.saturating_sub(1);
        let largest = Problem { a: top, b: top };
        let answer = largest.answer().to_string();
        self.config.offline_form.write(&largest, &answer).len() + 2
    }

    fn policy(&self) -> Result<Policy> {
        let name = format!("{} world", self.config.name);
        Ok(Policy::new(
            self.model(true)?,
            self.tokenizer.clone(),
            &name,
        ))
    }

    fn reward(&self) -> Rc<dyn RewardModel> {
        Rc::new(TaskReward {
            annotator: Some(self.annotator()),
        })
    }

    fn gold(&self) -> Option<Rc<dyn RewardModel>> {
        Some(Rc::new(TaskReward { annotator: None }))
    }

    fn evaluate(&self, policy: &Policy, split: Split) -> Result<Vec<(String, f64)>> {
        let e = self.evaluate_model(policy.model(), split)?;
        let name = |m: &str| format!("{}/{m}", split.prefix());
        let mut out = vec![
            (name("gold_reward"), e.gold_reward),
            (name("success"), e.success),
            (name("win_rate"), e.win_rate),
        ];
        if let Some((gold, success)) = e.greedy {
            out.push((name("greedy_gold_reward"), gold));
            out.push((name("greedy_success"), success));
        }
        Ok(out)
    }
}

fn problem(prompt: &str) -> Result<Problem> {
    Problem::parse(prompt).with_context(|| {
        format!("{prompt:?} is not a prompt of the default world's task (like \"47+38=\")")
    })
}

/// Two different answers from the pair teacher, ordered by the gold reward (ties at random),
/// then swapped with probability `label_noise`, written in the offline author's form.
fn offline_pairs(config: &WorldConfig, train: &[Problem]) -> Vec<Pair> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x9a12);
    let teacher = &config.pair_teacher;
    (0..config.pairs)
        .map(|i| {
            let p = &train[i % train.len()];
            let first = teacher.answer(p, &mut rng);
            let mut second = teacher.answer(p, &mut rng);
            for _ in 0..20 {
                if second != first {
                    break;
                }
                second = teacher.answer(p, &mut rng);
            }
            if second == first {
                second = (p.answer() + 1).to_string();
            }
            let (g1, g2) = (task::gold_reward(p, &first), task::gold_reward(p, &second));
            let first_better = g1 > g2 || (g1 == g2 && rng.random());
            let flip = rng.random::<f64>() < config.label_noise;
            let (chosen, rejected) = if first_better != flip {
                (first, second)
            } else {
                (second, first)
            };
            Pair {
                prompt: Text::Plain(p.prompt()),
                chosen: Text::Plain(config.offline_form.write(p, &chosen)),
                rejected: Text::Plain(config.offline_form.write(p, &rejected)),
            }
        })
        .collect()
}

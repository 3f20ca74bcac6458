//! The default world's task: two-number addition written as text ("47+38=" -> "85").
//!
//! It is verifiable (the gold reward knows the answer), its errors are realistic (a forgotten
//! carry, an off-by-one digit, swapped digits), and a 2-layer decoder learns it in about a
//! minute on two cores. Two "sloppy teachers" with different error profiles stand in for the
//! SFT data's author and for the different policy that wrote the offline preference pairs.

use crate::model::init::normal;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Problem {
    pub a: u32,
    pub b: u32,
}

impl Problem {
    pub fn prompt(&self) -> String {
        format!("{}+{}=", self.a, self.b)
    }

    pub fn answer(&self) -> u32 {
        self.a + self.b
    }

    /// Whether the units column carries (the step sloppy arithmetic forgets).
    pub fn carries(&self) -> bool {
        self.a % 10 + self.b % 10 >= 10
    }

    /// The answer `answer` with its work shown, as the default world's offline author writes it:
    /// the tens of `b` added first, then its units ("47+38=" -> "77+8=85").
    pub fn worked(&self, answer: &str) -> String {
        let units = self.b % 10;
        format!("{}+{units}={answer}", self.a + self.b - units)
    }

    /// Reads a prompt back ("47+38=").
    pub fn parse(prompt: &str) -> Option<Self> {
        let (a, b) = prompt.strip_suffix('=')?.split_once('+')?;
        Some(Self {
            a: parse_number(a)?,
            b: parse_number(b)?,
        })
    }
}

/// A decimal integer without sign, spaces or leading zeros.
fn parse_number(s: &str) -> Option<u32> {
    let ok = !s.is_empty()
        && s.len() <= 6
        && s.bytes().all(|c| c.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten()
}

/// Every problem with operands below `top`, shuffled by `seed`, split into training prompts and
/// a held-out evaluation set of `eval` problems.
pub fn split(top: u32, eval: usize, seed: u64) -> (Vec<Problem>, Vec<Problem>) {
    let mut all: Vec<Problem> = (0..top)
        .flat_map(|a| (0..top).map(move |b| Problem { a, b }))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..all.len()).rev() {
        all.swap(i, rng.random_range(0..=i));
    }
    let train = all.split_off(eval.min(all.len()));
    (train, all)
}

/// How an author writes its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// The number alone ("85").
    #[default]
    Plain,
    /// With its work shown ("77+8=85", [`Problem::worked`]).
    Worked,
}

impl Form {
    pub fn write(self, p: &Problem, answer: &str) -> String {
        match self {
            Form::Plain => answer.to_string(),
            Form::Worked => p.worked(answer),
        }
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// How often a teacher makes each mistake (probabilities per answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Teacher {
    /// Drops the hundreds digit of a sum of 100 or more ("125" -> "25"). Left out of the
    /// serialized form at 0, so the cache keys of worlds without it stay as they were.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drop_hundreds: f64,
    /// Drops the carry out of the units column, on problems that have one.
    pub forget_carry: f64,
    /// Answers one too high or too low in the units digit.
    pub off_by_one: f64,
    /// One too high or too low in the tens digit.
    pub off_by_ten: f64,
    /// Writes the last two digits in the wrong order.
    pub swap_digits: f64,
}

impl Teacher {
    pub fn answer(&self, p: &Problem, rng: &mut impl Rng) -> String {
        let right = p.answer();
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let mut hit = |prob: f64| {
            acc += prob;
            u < acc
        };
        let wrong = if right >= 100 && hit(self.drop_hundreds) {
            right - 100
        } else if p.carries() && hit(self.forget_carry) {
            right - 10
        } else if hit(self.off_by_one) {
            if right > 0 && rng.random() {
                right - 1
            } else {
                right + 1
            }
        } else if hit(self.off_by_ten) {
            if right >= 10 && rng.random() {
                right - 10
            } else {
                right + 10
            }
        } else if hit(self.swap_digits) && right >= 10 {
            let s = right.to_string();
            let mut c: Vec<char> = s.chars().collect();
            let n = c.len();
            c.swap(n - 1, n - 2);
            let t: String = c.into_iter().collect();
            return t.trim_start_matches('0').to_string();
        } else {
            right
        };
        wrong.to_string()
    }
}

/// The number a response answers with: the response itself, or the last number of worked
/// steps "X+Y=Z" (each a number).
fn final_number(response: &str) -> Option<u32> {
    if let Some((step, z)) = response.split_once('=') {
        let (x, y) = step.split_once('+')?;
        parse_number(x)?;
        parse_number(y)?;
        return parse_number(z);
    }
    parse_number(response)
}

/// True quality: 1 for the right answer; partial credit that falls with the distance for a
/// wrong number; 0 for anything that is not a number. A worked answer counts by its final
/// number.
pub fn gold_reward(p: &Problem, response: &str) -> f64 {
    match final_number(response) {
        Some(v) if v == p.answer() => 1.0,
        Some(v) => 0.5 * (1.0 - (v.abs_diff(p.answer()) as f64 / 20.0)).max(0.0),
        None => 0.0,
    }
}

/// The annotator, an imperfect proxy for the gold reward as learned reward models are.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Annotator {
    /// Standard deviation of its independent, per-text noise.
    pub noise: f64,
    /// What it adds to an answer whose units digit is right: a shallow feature it over-rewards
    /// (a forgotten carry keeps the units digit), so its errors are systematic too.
    pub units_bonus: f64,
    pub seed: u64,
}

/// The annotator's reward: the gold reward, plus `units_bonus` for a right units digit, plus
/// Gaussian noise of scale `noise` drawn from a hash of (seed, prompt, response), so the same
/// text always gets the same score, as from a fixed reward model.
pub fn annotator_reward(p: &Problem, response: &str, a: &Annotator) -> f64 {
    let units_right = final_number(response).is_some_and(|v| v % 10 == p.answer() % 10);
    let biased = gold_reward(p, response) + if units_right { a.units_bonus } else { 0.0 };
    let mut h = Sha256::new();
    h.update(a.seed.to_le_bytes());
    h.update(p.prompt().as_bytes());
    h.update([0]);
    h.update(response.as_bytes());
    let digest = h.finalize();
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from_le_bytes(digest[..8].try_into().unwrap()));
    biased + a.noise * normal(&mut rng)
}

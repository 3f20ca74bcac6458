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

/// How often a teacher makes each mistake (probabilities per answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Teacher {
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
        let wrong = if p.carries() && hit(self.forget_carry) {
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

/// True quality: 1 for the right answer; partial credit that falls with the distance for a
/// wrong number; 0 for anything that is not a number.
pub fn gold_reward(p: &Problem, response: &str) -> f64 {
    match parse_number(response) {
        Some(v) if v == p.answer() => 1.0,
        Some(v) => 0.5 * (1.0 - (v.abs_diff(p.answer()) as f64 / 20.0)).max(0.0),
        None => 0.0,
    }
}

/// The annotator: the gold reward plus Gaussian noise of scale `noise`, drawn from a hash of
/// (seed, prompt, response) so the same text always gets the same score, as from a fixed reward
/// model. It is an imperfect proxy: about one pair in five of close answers is misranked.
pub fn annotator_reward(p: &Problem, response: &str, noise: f64, seed: u64) -> f64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(p.prompt().as_bytes());
    h.update([0]);
    h.update(response.as_bytes());
    let digest = h.finalize();
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from_le_bytes(digest[..8].try_into().unwrap()));
    gold_reward(p, response) + noise * normal(&mut rng)
}

//! A policy as training loops hold it: a decoder with its tokenizer and encoding rules. A
//! trainable policy is scored with gradients; a frozen one (a reference) caches the log-probs of
//! every sequence it has scored, so each is computed once. Scoring pairs, log-probs of texts and
//! generation all go through here.

use crate::data::encode::{encode, keep_last, render, EncodeConfig, EncodedSeq, Text};
use crate::data::pairs::Pair;
use crate::fetch;
use crate::generate::{cut_at_stop, generate, SampleConfig, Stop};
use crate::model::tokenizer::TextTokenizer;
use crate::model::{load_pretrained, CausalLm};
use crate::score::{fit_side_by_side, sequence_logps, PairLogps, Scores, SeqLogps};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

/// An encoded sequence: token ids and prompt length.
type SeqKey = (Vec<u32>, usize);

/// Frozen models score the sequences they have not seen in chunks of this many.
const CACHE_CHUNK: usize = 64;

struct Inner {
    model: CausalLm,
    tokenizer: TextTokenizer,
    encode: EncodeConfig,
    name: String,
    /// Summed and mean response log-prob per encoded sequence, for frozen models only.
    cache: RefCell<HashMap<SeqKey, (f64, f64)>>,
    revision: Rc<Revision>,
}

/// Which weights a policy holds and how often they have changed since it was made, so a serving
/// engine's copy of them can be told apart from a stale one. Policies that share their weights
/// (one with gradient checkpointing switched) share it.
#[derive(Debug)]
struct Revision {
    id: u64,
    updates: Cell<u64>,
}

impl Revision {
    fn fresh() -> Rc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Rc::new(Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            updates: Cell::new(0),
        })
    }
}

/// Cheap to clone: clones share the model (and so its trainable weights).
#[derive(Clone)]
pub struct Policy(Rc<Inner>);

/// One generated response.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The index of its prompt.
    pub prompt: usize,
    pub text: String,
    pub tokens: Vec<u32>,
    /// Whether a stop token or string ended it (rather than `max_new_tokens`).
    pub finished: bool,
    pub ids_from: TokenSource,
}

/// Where a completion's token ids come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// Sampled here.
    Local,
    /// Returned by the serving engine with the text.
    Server,
    /// The server returned text only; the ids are the policy tokenizer's encoding of it, which
    /// can differ from the tokens the server sampled.
    Retokenized,
}

impl TokenSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Server => "server",
            Self::Retokenized => "retokenized",
        }
    }
}

impl Policy {
    pub fn new(model: CausalLm, tokenizer: TextTokenizer, name: &str) -> Self {
        Self::with_revision(model, tokenizer, name, Revision::fresh())
    }

    fn with_revision(
        model: CausalLm,
        tokenizer: TextTokenizer,
        name: &str,
        revision: Rc<Revision>,
    ) -> Self {
        let encode = EncodeConfig::for_context(model.config.max_position_embeddings);
        Self(Rc::new(Inner {
            model,
            tokenizer,
            encode,
            name: name.to_string(),
            cache: RefCell::new(HashMap::new()),
            revision,
        }))
    }

    /// `(weights id, updates)`: equal for two policies exactly when they hold the same weights
    /// at the same point of training.
    pub fn revision(&self) -> (u64, u64) {
        let r = &self.0.revision;
        (r.id, r.updates.get())
    }

    /// Records that the weights changed in place (an optimizer step, a resume).
    pub fn mark_updated(&self) {
        let r = &self.0.revision;
        r.updates.set(r.updates.get() + 1);
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// A policy from a HF directory, a `.gguf` file, or "smollm2" (fetched), in f32.
    pub fn load(path: &str, device: &Device, trainable: bool) -> Result<Self> {
        let file = if path == "smollm2" {
            fetch::ensure(&fetch::SMOLLM2)?.join(fetch::SMOLLM2_GGUF)
        } else {
            PathBuf::from(path)
        };
        let (model, tok) = load_pretrained(&file, device, DType::F32, trainable)?;
        let tok = tok.with_context(|| format!("{path} has no tokenizer (tokenizer.json)"))?;
        Ok(Self::new(model, tok, path))
    }

    /// This policy with its weights in `dtype` (itself if already): `--dtype bf16` trains in
    /// bf16, its optimizer keeping f32 master weights.
    pub fn with_dtype(&self, dtype: DType) -> Result<Self> {
        let model = &self.0.model;
        if model.dtype() == dtype {
            return Ok(self.clone());
        }
        if model.lora().is_some() {
            anyhow::bail!(
                "a policy with LoRA adapters keeps its dtype: choose --dtype before adding them"
            );
        }
        crate::device::check_dtype(model.device(), dtype)?;
        let tensors = model.named_tensors().iter().cloned().collect();
        let converted = CausalLm::from_tensors(
            model.config.clone(),
            tensors,
            &self.0.name,
            dtype,
            model.is_trainable(),
        )?;
        Ok(Self::new(converted, self.0.tokenizer.clone(), &self.0.name))
    }

    /// This policy with fresh LoRA adapters (only they train); the tokenizer is shared.
    pub fn with_lora(&self, cfg: &crate::model::lora::LoraConfig) -> Result<Self> {
        let model = self.0.model.with_lora(cfg)?;
        Ok(Self::new(model, self.0.tokenizer.clone(), &self.0.name))
    }

    /// This policy with the adapter of a PEFT directory, trainable.
    pub fn with_adapter(&self, dir: &std::path::Path) -> Result<Self> {
        let model = self.0.model.with_adapter_dir(dir)?;
        Ok(Self::new(model, self.0.tokenizer.clone(), &self.0.name))
    }

    /// This policy (the same weights) with gradient checkpointing per decoder layer on or off.
    pub fn with_checkpointing(&self, on: bool) -> Result<Self> {
        let model = self.0.model.with_checkpointing(on)?;
        Ok(Self::with_revision(
            model,
            self.0.tokenizer.clone(),
            &self.0.name,
            self.0.revision.clone(),
        ))
    }

    /// This policy (the same weights) with its matrix products in `matmul`'s precision. Its
    /// log-probs differ from this one's, so it caches them apart.
    pub fn with_matmul(&self, matmul: crate::kernels::Matmul) -> Self {
        if self.0.model.matmul() == matmul {
            return self.clone();
        }
        let model = self.0.model.with_matmul(matmul);
        Self::new(model, self.0.tokenizer.clone(), &self.0.name)
    }

    /// The adapters folded into the weights: a plain trainable policy a HF directory holds.
    pub fn merged(&self) -> Result<Self> {
        let merged = self.0.model.merged()?;
        let tensors = merged.named_tensors().iter().cloned().collect();
        let model = CausalLm::from_tensors(
            merged.config.clone(),
            tensors,
            &self.0.name,
            merged.dtype(),
            true,
        )?;
        Ok(Self::new(model, self.0.tokenizer.clone(), &self.0.name))
    }

    pub fn model(&self) -> &CausalLm {
        &self.0.model
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.0.tokenizer
    }

    /// A frozen copy that shares nothing mutable with this one.
    pub fn frozen(&self) -> Result<Self> {
        Ok(Self::new(
            self.0.model.frozen()?,
            self.0.tokenizer.clone(),
            &format!("{} (frozen)", self.0.name),
        ))
    }

    /// Token ids that end a generation: the tokenizer's EOS and the config's `eos_token_id`s.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut ids = vec![self.0.tokenizer.eos_token_id];
        ids.extend(&self.0.model.config.eos_token_ids);
        ids.dedup();
        ids
    }

    /// Prompt/response pairs encoded with this policy's template and truncation.
    pub fn encode(&self, prompts: &[&Text], responses: &[&Text]) -> Result<Vec<EncodedSeq>> {
        prompts
            .iter()
            .zip(responses)
            .map(|(x, y)| encode(&self.0.tokenizer, x, y, &self.0.encode))
            .collect()
    }

    /// Log-probs of `seqs`: one differentiable forward for a trainable model; for a frozen one,
    /// cached values, computing only the sequences not seen before.
    pub fn seq_logps(&self, seqs: &[EncodedSeq]) -> Result<SeqLogps> {
        let model = &self.0.model;
        let pad = self.0.tokenizer.pad_token_id;
        if model.is_trainable() {
            return sequence_logps(model, seqs, pad);
        }
        let key = |s: &EncodedSeq| (s.ids.clone(), s.prompt_len);
        let missing: Vec<EncodedSeq> = {
            let cache = self.0.cache.borrow();
            let mut seen = HashSet::new();
            seqs.iter()
                .filter(|s| !cache.contains_key(&key(s)) && seen.insert(key(s)))
                .cloned()
                .collect()
        };
        let values = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec1::<f64>();
        let score = |chunk: &[EncodedSeq]| -> Result<(Vec<f64>, Vec<f64>)> {
            let lp = sequence_logps(model, chunk, pad)?;
            Ok((values(&lp.sum)?, values(&lp.mean)?))
        };
        let chunks: Vec<&[EncodedSeq]> = missing.chunks(CACHE_CHUNK).collect();
        let side_by_side = model.batches_side_by_side()
            && chunks.len() > 1
            && fit_side_by_side(model, &chunks, rayon::current_num_threads());
        let scored = crate::threads::map_batches(&chunks, side_by_side, |_, c| score(c))?;
        let mut cache = self.0.cache.borrow_mut();
        for (chunk, (sums, means)) in chunks.iter().zip(scored) {
            for (i, s) in chunk.iter().enumerate() {
                cache.insert(key(s), (sums[i], means[i]));
            }
        }
        let (sums, means): (Vec<f64>, Vec<f64>) = seqs.iter().map(|s| cache[&key(s)]).unzip();
        let dev = model.device();
        let wide = |v: Vec<f64>| Tensor::new(v, dev)?.to_dtype(DType::F32);
        Ok(SeqLogps {
            sum: wide(sums)?,
            mean: wide(means)?,
            lengths: seqs.iter().map(|s| s.response_len()).collect(),
        })
    }

    /// Summed and mean log-probs of each response given its prompt.
    pub fn logps(&self, prompts: &[Text], responses: &[Text]) -> Result<SeqLogps> {
        if prompts.len() != responses.len() || prompts.is_empty() {
            anyhow::bail!(
                "{} prompts but {} responses (need the same, at least one)",
                prompts.len(),
                responses.len()
            );
        }
        let seqs = self.encode(
            &prompts.iter().collect::<Vec<_>>(),
            &responses.iter().collect::<Vec<_>>(),
        )?;
        self.seq_logps(&seqs)
    }

    /// A prompt as the policy generates from it: rendered with the chat template, its last
    /// `max_prompt_length` tokens kept.
    pub fn prompt_ids(&self, prompt: &Text) -> Result<Vec<u32>> {
        let tok = &self.0.tokenizer;
        let (text, _) = render(tok, prompt, &Text::Plain(String::new()))?;
        Ok(keep_last(
            tok.encode(&text)?,
            self.0.encode.max_prompt_length,
        ))
    }

    /// `cfg.n` responses per prompt, prompt by prompt. Each prompt is rendered with the chat
    /// template and keeps its last `max_prompt_length` tokens, the part the policy is trained
    /// on; a response ends at a stop token or at the first of `stop` (cut off).
    pub fn generate(
        &self,
        prompts: &[Text],
        cfg: &SampleConfig,
        stop: &[String],
    ) -> Result<Vec<Completion>> {
        let tok = &self.0.tokenizer;
        let ids = prompts
            .iter()
            .map(|t| self.prompt_ids(t))
            .collect::<Result<Vec<_>>>()?;
        let stop_tokens = self.stop_tokens();
        let rule = Stop {
            tokens: &stop_tokens,
            strings: stop,
            tokenizer: Some(tok),
        };
        generate(&self.0.model, &ids, &rule, tok.pad_token_id, cfg)?
            .into_iter()
            .map(|s| {
                let (text, _) = cut_at_stop(&tok.decode(&s.tokens, true)?, stop);
                Ok(Completion {
                    prompt: s.prompt,
                    text,
                    tokens: s.tokens,
                    finished: s.finished,
                    ids_from: TokenSource::Local,
                })
            })
            .collect()
    }
}

/// Log-probs of the pairs' chosen and rejected responses under the policy (differentiable when
/// it is trainable) and the reference, and the implicit-reward margin Δ.
pub fn score(policy: &Policy, reference: &Policy, pairs: &[Pair]) -> Result<Scores> {
    if pairs.is_empty() {
        anyhow::bail!("no pairs to score");
    }
    let prompts: Vec<&Text> = pairs.iter().map(|p| &p.prompt).collect();
    let chosen: Vec<&Text> = pairs.iter().map(|p| &p.chosen).collect();
    let rejected: Vec<&Text> = pairs.iter().map(|p| &p.rejected).collect();
    let n = pairs.len();
    let both = |p: &Policy| -> Result<PairLogps> {
        let seqs = [p.encode(&prompts, &chosen)?, p.encode(&prompts, &rejected)?].concat();
        PairLogps::split(p.seq_logps(&seqs)?, n)
    };
    Scores::new(both(policy)?, both(reference)?)
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = &self.0.model;
        write!(
            f,
            "Policy({}: {} layers, {} parameters, {})",
            self.0.name,
            m.config.num_hidden_layers,
            m.num_parameters(),
            if m.is_trainable() {
                "trainable"
            } else {
                "frozen"
            }
        )
    }
}

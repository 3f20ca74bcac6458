//! The reward-model interface every annotator goes through, and its neural backends: a HF
//! sequence classifier, and a Bradley-Terry head on a BERT encoder. Worlds supply their own
//! annotators behind the same trait; a remote reward server can be one more implementation.

use super::bert::TextEncoder;
use super::bradley_terry::{FitConfig, FitReport, LinearHead, HEAD_FILE};
use super::classifier::SequenceClassifier;
use crate::data::encode::{encode, EncodeConfig, Text};
use crate::data::pairs::Pair;
use crate::model::tokenizer::TextTokenizer;
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// Scores prompt/response pairs; higher is better.
pub trait RewardModel {
    /// One reward per prompt/response pair.
    fn rewards(&self, prompts: &[Text], responses: &[Text]) -> Result<Vec<f64>>;

    /// What it is, for logs: `sequence classifier <path>`.
    fn describe(&self) -> String;

    /// Writes the model to `dir` (an empty folder) so [`load`] reads it back, where it can.
    fn save(&self, dir: &Path) -> Result<()> {
        let _ = dir;
        anyhow::bail!(
            "only a train_reward model (a Bradley-Terry head) can be saved, not {}",
            self.describe()
        )
    }
}

/// The fraction of pairs the model orders chosen above rejected (ties count half).
pub fn accuracy(rm: &dyn RewardModel, pairs: &[Pair]) -> Result<f64> {
    if pairs.is_empty() {
        anyhow::bail!("no pairs");
    }
    let prompts: Vec<Text> = pairs.iter().map(|p| p.prompt.clone()).collect();
    let side = |f: fn(&Pair) -> &Text| pairs.iter().map(f).cloned().collect::<Vec<_>>();
    Ok(super::win_rate(
        &rm.rewards(&prompts, &side(|p| &p.chosen))?,
        &rm.rewards(&prompts, &side(|p| &p.rejected))?,
    ))
}

/// A Llama-family `*ForSequenceClassification` model: the score head at the last token.
pub struct Classifier {
    model: SequenceClassifier,
    tokenizer: TextTokenizer,
    path: String,
}

impl RewardModel for Classifier {
    fn rewards(&self, prompts: &[Text], responses: &[Text]) -> Result<Vec<f64>> {
        let cfg = EncodeConfig::for_context(self.model.body.config.max_position_embeddings);
        let seqs = prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| Ok(encode(&self.tokenizer, p, r, &cfg)?.ids))
            .collect::<Result<Vec<_>>>()?;
        self.model.rewards(&seqs, self.tokenizer.pad_token_id)
    }

    fn describe(&self) -> String {
        format!("sequence classifier {}", self.path)
    }
}

/// A linear Bradley-Terry head on a sentence encoder's features of (prompt, response).
pub struct HeadReward {
    encoder: TextEncoder,
    head: LinearHead,
    /// How the encoder was named: a directory, or "minilm".
    encoder_name: String,
}

impl RewardModel for HeadReward {
    fn rewards(&self, prompts: &[Text], responses: &[Text]) -> Result<Vec<f64>> {
        let text = |t: &[Text]| t.iter().map(Text::display).collect::<Vec<_>>();
        let features = self.encoder.embed_pairs(&text(prompts), &text(responses))?;
        Ok(self
            .head
            .rewards(&features)?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()?)
    }

    fn describe(&self) -> String {
        format!(
            "Bradley-Terry head on {}, {} features",
            self.encoder_name, self.encoder.bert.config.hidden_size
        )
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.head.save(dir, &self.encoder_name)
    }
}

impl HeadReward {
    /// Fits a head on the encoder's features of the pairs.
    pub fn fit(
        encoder: &str,
        pairs: &[Pair],
        cfg: &FitConfig,
        device: &Device,
    ) -> Result<(Self, FitReport)> {
        if pairs.is_empty() {
            anyhow::bail!("no pairs to fit on");
        }
        let enc = TextEncoder::load(&encoder_dir(encoder)?, device)?;
        let prompts: Vec<String> = pairs.iter().map(|p| p.prompt.display()).collect();
        let side = |f: fn(&Pair) -> &Text| {
            let r: Vec<String> = pairs.iter().map(|p| f(p).display()).collect();
            enc.embed_pairs(&prompts, &r)
        };
        let (head, report) = LinearHead::fit(&side(|p| &p.chosen)?, &side(|p| &p.rejected)?, cfg)?;
        let rm = Self {
            encoder: enc,
            head,
            encoder_name: encoder.to_string(),
        };
        Ok((rm, report))
    }
}

/// A BERT directory, or "minilm": all-MiniLM-L6-v2, fetched (`metaapo fetch minilm`).
fn encoder_dir(encoder: &str) -> Result<PathBuf> {
    match encoder {
        "minilm" => crate::fetch::ensure(&crate::fetch::MINILM),
        dir => Ok(Path::new(dir).to_path_buf()),
    }
}

/// A reward model from a directory: a head saved by [`RewardModel::save`] (with the encoder
/// its metadata names), else a HF sequence classifier.
pub fn load(path: &str, device: &Device) -> Result<Box<dyn RewardModel>> {
    let dir = Path::new(path);
    if dir.join(HEAD_FILE).is_file() {
        let (head, encoder) = LinearHead::load(dir, device)?;
        let enc = TextEncoder::load(&encoder_dir(&encoder)?, device).with_context(|| {
            format!(
                "the encoder {encoder:?} named by {}",
                dir.join(HEAD_FILE).display()
            )
        })?;
        if head.weight.dims() != [enc.bert.config.hidden_size] {
            anyhow::bail!(
                "{}: the head has {:?} features, the encoder {encoder:?} {}",
                dir.join(HEAD_FILE).display(),
                head.weight.dims(),
                enc.bert.config.hidden_size
            );
        }
        return Ok(Box::new(HeadReward {
            encoder: enc,
            head,
            encoder_name: encoder,
        }));
    }
    let (model, tokenizer) = SequenceClassifier::load(dir, device)?;
    Ok(Box::new(Classifier {
        model,
        tokenizer,
        path: path.to_string(),
    }))
}

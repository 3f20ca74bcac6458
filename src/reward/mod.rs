//! Neural reward models: a Llama-family sequence classifier (HF `LlamaForSequenceClassification`,
//! the layout OpenRLHF reward models use), and a BERT sentence encoder with a linear head fitted
//! on preference pairs by a Bradley-Terry loss. Rule-based and world rewards live with their
//! worlds; the script host puts all of them behind one `annotate`.

pub mod bert;
pub mod bradley_terry;
pub mod classifier;

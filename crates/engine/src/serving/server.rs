//! A serving engine: the connection, the model it serves (checked against `/v1/models`), and
//! the revision of the policy it was last synced to. `sync` brings it up to date (the export
//! and reload methods are in `sync.rs`); generation on it is in `generate.rs`.

use super::http::{array, Client, HttpConfig};
use super::sync::{self, SyncConfig, SyncMethod, SyncReport, Synced};
use crate::atomic;
use crate::policy::Policy;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which OpenAI endpoint generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `/v1/completions` on the prompt as the policy's chat template renders it.
    Completions,
    /// `/v1/chat/completions` on the messages; the server's chat template renders them.
    Chat,
}

/// A serving engine that generates for a policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The server's address, e.g. `http://127.0.0.1:8000` (required).
    pub url: String,
    /// The served model's name ("" takes the only one `/v1/models` lists).
    pub model: String,
    pub api: Api,
    /// Send `n` requests of one sample each instead of one request with `n` (for servers that
    /// ignore `n`; metaapo tops up a short reply either way).
    pub split_n: bool,
    /// Ask for the sampled token ids (vLLM's `return_token_ids`); without them the text is
    /// re-tokenized with the policy's tokenizer.
    pub return_token_ids: bool,
    /// Send the sampler settings servers default differently (top_k, min_p, repetition
    /// penalties) as local generation uses them; llama.cpp's server otherwise samples with
    /// top_k 40, min_p 0.05 and repeat_penalty 1.1. Off for SGLang, which refuses top_k 0.
    pub match_local_sampling: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            model: String::new(),
            api: Api::Completions,
            split_n: false,
            return_token_ids: false,
            match_local_sampling: true,
        }
    }
}

/// A connected serving engine and what it is known to serve.
pub struct Server {
    pub(super) client: Client,
    pub(super) cfg: ServerConfig,
    pub(super) sync: SyncConfig,
    /// The model name requests carry.
    pub(super) model: Mutex<String>,
    /// The policy revision the server was last synced to.
    pub(super) synced: Mutex<Option<Synced>>,
    /// The exports a sync wrote, oldest first; all but the last `keep_exports` are removed.
    pub(super) exports: Mutex<Vec<PathBuf>>,
}

impl Server {
    /// Connects and checks that the server serves `cfg.model` (`/v1/models`).
    pub fn connect(cfg: &ServerConfig, http: &HttpConfig, sync: &SyncConfig) -> Result<Self> {
        if cfg.url.is_empty() {
            bail!("server: `url` is required (e.g. \"http://127.0.0.1:8000\")");
        }
        sync.check()?;
        let client = Client::new(&cfg.url, http)?;
        let server = Self {
            client,
            cfg: cfg.clone(),
            sync: sync.clone(),
            model: Mutex::new(cfg.model.clone()),
            synced: Mutex::new(None),
            exports: Mutex::new(vec![]),
        };
        server.check_model()?;
        Ok(server)
    }

    /// The model name requests use, checked against the server's `/v1/models`.
    fn check_model(&self) -> Result<()> {
        let endpoint = format!("{}/v1/models", self.client.base());
        let reply = self.client.get("/v1/models").with_context(|| {
            "server: is this an OpenAI-compatible server (vLLM, SGLang, llama.cpp)?".to_string()
        })?;
        let served: Vec<String> = array(&reply, "data", &endpoint)?
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        let wanted = if self.cfg.model.is_empty() {
            match served.as_slice() {
                [one] => one.clone(),
                _ => bail!(
                    "{endpoint}: the server lists {} models ({}); say which with `model`",
                    served.len(),
                    served.join(", ")
                ),
            }
        } else {
            self.cfg.model.clone()
        };
        let lora = self.sync.lora_name();
        if !served.contains(&wanted) && lora.as_deref() != Some(wanted.as_str()) {
            bail!(
                "{endpoint}: the server does not serve model {wanted:?}; it serves: {}",
                served.join(", ")
            );
        }
        *model = wanted;
        Ok(())
    }

    pub fn describe(&self) -> String {
        let model = self.model.lock().unwrap_or_else(|e| e.into_inner()).clone();
        format!("{} ({model}, {:?})", self.client.base(), self.cfg.api)
    }

    /// Exports `policy` into `dir` and makes the server load it; nothing to do (and a report
    /// of zero seconds) when the server already serves this revision of it.
    pub fn sync(&self, policy: &Policy, dir: &Path) -> Result<SyncReport> {
        let base = self.client.base().to_string();
        if self.sync.reload == SyncMethod::None {
            bail!(
                "sync_weights: {base} has no reload method; create the server with reload \"command\", \"sglang\" or \"vllm_lora\""
            );
        }
        let served = *self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let last = self
            .exports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned();
        if let (Some(s), Some(path)) = (served, last) {
            if s.revision == policy.revision() {
                return Ok(SyncReport {
                    path,
                    export_s: 0.0,
                    reload_s: 0.0,
                });
            }
        }
        let start = Instant::now();
        let path = sync::export(&self.sync, policy, dir)?;
        let export_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        sync::reload(&self.client, &self.sync, &path)
            .and_then(|()| match self.sync.reload {
                SyncMethod::VllmLora => {
                    let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
                    *model = self.sync.lora_name.clone();
                    Ok(())
                }
                SyncMethod::Command => self.wait_ready(),
                SyncMethod::Sglang | SyncMethod::None => Ok(()),
            })
            .with_context(|| format!("sync_weights: {base} did not load {}", path.display()))?;
        let reload_s = start.elapsed().as_secs_f64();
        *self.synced.lock().unwrap_or_else(|e| e.into_inner()) = Some(Synced {
            revision: policy.revision(),
        });
        let mut exports = self.exports.lock().unwrap_or_else(|e| e.into_inner());
        if !exports.contains(&path) {
            exports.push(path.clone());
        }
        while exports.len() > self.sync.keep_exports {
            let _ = atomic::remove_entry(&exports.remove(0));
        }
        Ok(SyncReport {
            path,
            export_s,
            reload_s,
        })
    }

    /// Polls `/v1/models` until the server answers, then checks the model it serves.
    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs_f64(self.sync.ready_timeout_s);
        loop {
            match self.check_model() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "the server was not ready within {} s (ready_timeout_s)",
                        self.sync.ready_timeout_s
                    )))
                }
                Err(_) => {
                    crate::interrupt::check()?;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

//! Weight sync: before a sampling round the serving engine must serve the current policy. The
//! policy is exported where the server can read it (a HF directory, a PEFT adapter, or a GGUF
//! file for llama.cpp), then the server is told to load it: SGLang's `/update_weights_from_disk`,
//! vLLM's LoRA-adapter endpoints, or a user command that restarts the server.

use super::http::Client;
use crate::atomic::Replace;
use crate::model::{gguf, hf};
use crate::policy::Policy;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

/// How the server is told to load new weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMethod {
    /// The server cannot be synced; generate needs `allow_stale`.
    None,
    /// Runs `command` (with METAAPO_WEIGHTS set to the export), then waits for the server.
    Command,
    /// SGLang: POST `/update_weights_from_disk` with the exported HF directory.
    Sglang,
    /// vLLM (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True): the policy's LoRA adapter is reloaded under
    /// `lora_name` through `/v1/unload_lora_adapter` and `/v1/load_lora_adapter`.
    VllmLora,
}

/// What the policy is exported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// A HF directory (a PEFT adapter directory with `vllm_lora`).
    Hf,
    /// A GGUF file in f32, for llama.cpp.
    GgufF32,
    /// A GGUF file with f16 matrices, for llama.cpp.
    GgufF16,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// How the server is told to load the export.
    pub reload: SyncMethod,
    /// What the policy is exported as.
    pub format: ExportFormat,
    /// The shell command of `reload: "command"`; METAAPO_WEIGHTS names the exported weights.
    pub command: String,
    /// Seconds to wait for the server to answer `/v1/models` after the command.
    pub ready_timeout_s: f64,
    /// The adapter name of `reload: "vllm_lora"`, which generation then requests as its model.
    pub lora_name: String,
    /// Exports kept on disk; older ones this server wrote are removed.
    pub keep_exports: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            reload: SyncMethod::None,
            format: ExportFormat::Hf,
            command: String::new(),
            ready_timeout_s: 300.0,
            lora_name: "policy".into(),
            keep_exports: 1,
        }
    }
}

impl SyncConfig {
    pub fn check(&self) -> Result<()> {
        match self.reload {
            SyncMethod::Command if self.command.trim().is_empty() => {
                bail!("server: reload \"command\" needs `command`, the shell command that restarts the server")
            }
            SyncMethod::Sglang | SyncMethod::VllmLora if self.format != ExportFormat::Hf => {
                bail!(
                    "server: reload {:?} reads HF files; use format \"hf\"",
                    self.reload
                )
            }
            SyncMethod::VllmLora if self.lora_name.is_empty() => {
                bail!("server: reload \"vllm_lora\" needs a `lora_name`")
            }
            _ if !(self.ready_timeout_s.is_finite() && self.ready_timeout_s > 0.0) => {
                bail!(
                    "server: ready_timeout_s must be > 0 (got {})",
                    self.ready_timeout_s
                )
            }
            _ if self.keep_exports == 0 => bail!("server: keep_exports must be at least 1"),
            _ => Ok(()),
        }
    }

    /// The model name generation requests once synced, when the sync method sets one.
    pub(super) fn lora_name(&self) -> Option<String> {
        (self.reload == SyncMethod::VllmLora).then(|| self.lora_name.clone())
    }
}

/// The policy revision a server serves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Synced {
    pub revision: (u64, u64),
}

/// What one sync did and how long each part took.
#[derive(Debug, Clone)]
pub struct SyncReport {
    pub path: PathBuf,
    pub export_s: f64,
    pub reload_s: f64,
}

/// Writes `policy` into `dir` in `cfg.format`; returns the path.
pub(super) fn export(cfg: &SyncConfig, policy: &Policy, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = format!("policy-{}-{}", policy.revision().0, policy.revision().1);
    let model = policy.model();
    match cfg.format {
        ExportFormat::Hf => {
            let path = dir.join(name);
            let merged;
            let model = match (model.lora().is_some(), cfg.reload) {
                (false, SyncMethod::VllmLora) => bail!(
                    "sync_weights: reload \"vllm_lora\" loads a LoRA adapter, and the policy has none (see lora)"
                ),
                (true, SyncMethod::VllmLora) | (false, _) => model,
                (true, _) => {
                    merged = model.merged()?;
                    &merged
                }
            };
            hf::save_as(
                &path,
                model,
                Some(policy.tokenizer()),
                Replace::SameKind,
                "",
            )?;
            Ok(path)
        }
        ExportFormat::GgufF32 | ExportFormat::GgufF16 => {
            let path = dir.join(format!("{name}.gguf"));
            let ty = if cfg.format == ExportFormat::GgufF16 {
                gguf::ExportType::F16
            } else {
                gguf::ExportType::F32
            };
            gguf::export(&path, model, ty)?;
            Ok(path)
        }
    }
}

/// Tells the server behind `client` to load `path` (for `Command`, runs the command; the
/// caller waits for the restarted server).
pub(super) fn reload(client: &Client, cfg: &SyncConfig, path: &Path) -> Result<()> {
    let abs = std::path::absolute(path)?;
    let abs_text = abs.display().to_string();
    match cfg.reload {
        SyncMethod::None => unreachable!("refused before a sync"),
        SyncMethod::Sglang => {
            let reply = client.post(
                "/update_weights_from_disk",
                &json!({"model_path": abs_text}),
            )?;
            if reply.get("success").and_then(|v| v.as_bool()) != Some(true) {
                bail!(
                    "{}/update_weights_from_disk: {}",
                    client.base(),
                    super::http::excerpt(&reply.to_string(), 300)
                );
            }
            Ok(())
        }
        SyncMethod::VllmLora => {
            let name = &cfg.lora_name;
            // Unloading fails when nothing was loaded yet, which is fine.
            let _ = client.post_text("/v1/unload_lora_adapter", &json!({"lora_name": name}));
            client.post_text(
                "/v1/load_lora_adapter",
                &json!({"lora_name": name, "lora_path": abs_text}),
            )?;
            Ok(())
        }
        SyncMethod::Command => {
            // Its output goes to a file, not a pipe: a server it starts in the background
            // would hold a pipe open, and waiting for its end would wait for that server.
            let log_path = path.with_file_name("command.log");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("cannot open {}", log_path.display()))?;
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(&cfg.command)
                .env("METAAPO_WEIGHTS", &abs)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .status()
                .context("cannot run the sync command with sh")?;
            if !status.success() {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                let from = text.char_indices().rev().nth(499).map_or(0, |(i, _)| i);
                let tail = &text[from..];
                bail!(
                    "the sync command {:?} failed ({status}); the end of {}: {}",
                    cfg.command,
                    log_path.display(),
                    tail.trim()
                );
            }
            Ok(())
        }
    }
}

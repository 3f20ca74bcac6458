//! JSON over plain HTTP with the failure handling every serving call needs: a timeout on each
//! request (so nothing hangs), retries with exponential backoff for failures a retry can fix
//! (no connection, a timeout, HTTP 429 and 5xx), and errors that name the endpoint and what was
//! wrong (the status and the start of the body, or the reply that is not JSON).

use anyhow::{bail, Result};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How a client talks to one server.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Seconds one request may take, connecting included.
    pub timeout_s: f64,
    /// Further tries after a failure a retry can fix.
    pub retries: usize,
    /// Seconds before the first retry; doubled for each further one.
    pub backoff_s: f64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The environment variable holding a bearer token ("" sends none).
    pub api_key_env: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout_s: 120.0,
            retries: 2,
            backoff_s: 0.5,
            concurrency: 4,
            api_key_env: String::new(),
        }
    }
}

/// A client for one server (`base`, e.g. `http://127.0.0.1:8000`).
pub struct Client {
    agent: ureq::Agent,
    base: String,
    cfg: HttpConfig,
    token: Option<String>,
}

/// Why one try failed, and whether another may succeed.
struct Failure {
    message: String,
    retry: bool,
}

/// The first `n` characters of `s`, marked when cut.
pub fn excerpt(s: &str, n: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl Client {
    pub fn new(url: &str, cfg: &HttpConfig) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        let Some(rest) = base.strip_prefix("http://") else {
            if base.starts_with("https://") {
                bail!("{url}: https is not supported (plain http only; put a TLS proxy in front)");
            }
            bail!("{url:?} is not an http:// URL");
        };
        if rest.is_empty() || rest.starts_with('/') {
            bail!("{url:?} names no host");
        }
        let ok = cfg.timeout_s.is_finite()
            && cfg.timeout_s > 0.0
            && cfg.backoff_s.is_finite()
            && cfg.backoff_s >= 0.0
            && cfg.concurrency > 0;
        if !ok {
            bail!(
                "{url}: timeout_s must be > 0, backoff_s >= 0 and concurrency >= 1 (got {}, {}, {})",
                cfg.timeout_s,
                cfg.backoff_s,
                cfg.concurrency
            );
        }
        let token = if cfg.api_key_env.is_empty() {
            None
        } else {
            Some(std::env::var(&cfg.api_key_env).map_err(|_| {
                anyhow::anyhow!(
                    "{url}: api_key_env names {}, which is not set",
                    cfg.api_key_env
                )
            })?)
        };
        let timeout = Duration::from_secs_f64(cfg.timeout_s);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout(timeout)
            .build();
        Ok(Self {
            agent,
            base,
            cfg: cfg.clone(),
            token,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn config(&self) -> &HttpConfig {
        &self.cfg
    }

    /// POSTs `body` to `path` and returns the JSON reply.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.json(path, &self.call(path, Some(body))?)
    }

    /// POSTs `body` to `path` and returns the reply as text (vLLM's adapter endpoints answer
    /// in plain text).
    pub fn post_text(&self, path: &str, body: &Value) -> Result<String> {
        self.call(path, Some(body))
    }

    /// GETs `path` and returns the JSON reply.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.json(path, &self.call(path, None)?)
    }

    fn json(&self, path: &str, text: &str) -> Result<Value> {
        serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "{}{path}: the reply is not JSON ({e}): {:?}",
                self.base,
                excerpt(text, 200)
            )
        })
    }

    fn call(&self, path: &str, body: Option<&Value>) -> Result<String> {
        let url = format!("{}{path}", self.base);
        let mut wait = self.cfg.backoff_s;
        let mut attempt = 0;
        loop {
            match self.once(&url, body) {
                Ok(text) => return Ok(text),
                Err(f) if f.retry && attempt < self.cfg.retries => {
                    crate::interrupt::check()?;
                    std::thread::sleep(Duration::from_secs_f64(wait));
                    wait *= 2.0;
                    attempt += 1;
                }
                Err(f) => {
                    let tries = if attempt > 0 {
                        format!(" (after {} tries)", attempt + 1)
                    } else {
                        String::new()
                    };
                    bail!("{url}: {}{tries}", f.message);
                }
            }
        }
    }

    fn once(&self, url: &str, body: Option<&Value>) -> std::result::Result<String, Failure> {
        let mut req = match body {
            Some(_) => self.agent.post(url),
            None => self.agent.get(url),
        };
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let reply = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let resp = match reply {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                return Err(Failure {
                    message: format!("HTTP {code}: {}", excerpt(&text, 300)),
                    retry: code == 429 || code >= 500,
                });
            }
            Err(ureq::Error::Transport(t)) => {
                use std::error::Error;
                let cause = t.source().map(|e| e.to_string()).unwrap_or_default();
                let cause = [t.message().unwrap_or_default(), &cause].join(" ");
                let timed_out = cause.to_lowercase().contains("timed out");
                return Err(Failure {
                    message: if timed_out {
                        format!("no reply within {} s (timeout_s)", self.cfg.timeout_s)
                    } else {
                        format!("{}: {}", t.kind(), cause.trim())
                    },
                    retry: true,
                });
            }
        };
        resp.into_string().map_err(|e| Failure {
            message: format!("cannot read the reply: {e}"),
            retry: true,
        })
    }
}

/// `v[key]` as an array, or an error naming the endpoint's missing field.
pub fn array<'a>(v: &'a Value, key: &str, endpoint: &str) -> Result<&'a Vec<Value>> {
    v.get(key).and_then(Value::as_array).ok_or_else(|| {
        anyhow::anyhow!(
            "{endpoint}: the reply has no `{key}` array: {}",
            excerpt(&v.to_string(), 200)
        )
    })
}

/// `f(0)`, ..., `f(n - 1)` with at most `workers` running at once, in order; the first error
/// stops the rest (requests already sent finish).
pub fn concurrently<R: Send>(
    n: usize,
    workers: usize,
    f: impl Fn(usize) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let results: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, n.max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let failing = failed.lock().map(|f| f.is_some()).unwrap_or(true);
                if i >= n || failing || crate::interrupt::requested() {
                    return;
                }
                match f(i) {
                    Ok(r) => *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r),
                    Err(e) => {
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    crate::interrupt::check()?;
    Ok(results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every index ran")
        })
        .collect())
}

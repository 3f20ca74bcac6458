//! Atomic writes: readers see the old content or the new, never a half-written file or folder.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A temporary name next to `path`, unique to this process and call, so concurrent writers
/// (threads included) never share one.
fn sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let mut s = name.to_os_string();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    s.push(format!(".{tag}-{}-{n}", std::process::id()));
    Ok(path.with_file_name(s))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = sibling(path, "tmp")?;
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename onto {}", path.display()))
}

/// Fills a temporary folder with `fill`, then puts it in place of `dir` (replacing any old one).
/// If `fill` fails, the temporary folder is removed and `dir` is untouched.
pub fn write_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, "tmp")?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        let old = sibling(dir, "old")?;
        std::fs::rename(dir, &old)
            .with_context(|| format!("cannot move {} aside", dir.display()))?;
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("cannot rename onto {}", dir.display()))?;
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))
    } else {
        std::fs::rename(&tmp, dir).with_context(|| format!("cannot rename onto {}", dir.display()))
    }
}

//! Atomic, non-destructive writes: readers see the old content or the new, never a half-written
//! file or folder, and nothing metaapo did not write is ever removed.
//!
//! Every output folder (a model, a checkpoint, a reward head, a download) carries a marker,
//! [`MARKER`], written last: its kind and the entries metaapo put there. A folder counts as
//! complete only with its marker, and only a folder marked with the same kind may be replaced,
//! and only when the caller asks; entries the user added to it are carried over to the new one.
//!
//! `METAAPO_CRASH_AFTER=<kind>:<k>` kills the process (SIGKILL) after the k-th filesystem
//! operation of writing folders of that kind: the tests use it to crash a checkpoint at every
//! point and check that resuming is still safe.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The completeness marker of an output folder.
pub const MARKER: &str = ".metaapo.json";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    kind: String,
    /// The entries (files and folders) metaapo wrote, marker aside.
    entries: Vec<String>,
}

/// What a write may do to an existing output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Refuse any non-empty folder.
    Never,
    /// Replace an earlier output of the same kind (the caller asked for it explicitly, or the
    /// folder is metaapo's own, as a run's checkpoints are).
    SameKind,
}

/// A temporary name next to `path`, unique to this process and call, so concurrent writers
/// (threads included) never share one: `<name>.<tag>-<pid>-<n>`.
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

/// The process id in a temporary name made by [`sibling`], if `name` is one.
fn temp_owner(name: &str) -> Option<u32> {
    let (_, rest) = name.rsplit_once(".tmp-")?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Whether `name` is a temporary name of an unfinished write (never a finished output).
pub fn is_temporary(name: &str) -> bool {
    temp_owner(name).is_some() || name.contains(".old-")
}

fn alive(pid: u32) -> bool {
    // Signal 0 checks for existence only.
    let found = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes the temporary folders and files in `dir` left by writes whose process has died:
/// every one in a folder of metaapo's own (`of` None, e.g. a run's `checkpoints/`), or only those
/// of the output named `of` in a folder that may be the user's. Folders moved aside while
/// replacing an output (`.old-`) are left alone: they may hold the user's files.
pub fn clean_stale(dir: &Path, of: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if of.is_some_and(|o| !name.starts_with(&format!("{o}.tmp-"))) {
            continue;
        }
        let Some(pid) = temp_owner(&name) else {
            continue;
        };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        // Best effort: what cannot be removed now is tried again on the next run.
        let _ = remove_entry(&entry.path());
    }
}

/// Removes a file, or a folder with everything in it.
pub fn remove_entry(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

thread_local! {
    /// The kind of folder being written, for fault injection.
    static WRITING: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Marks one filesystem operation of the current write; see the module doc for
/// `METAAPO_CRASH_AFTER`.
pub fn fault_point(what: &str) {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static DONE: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let v = std::env::var("METAAPO_CRASH_AFTER").ok()?;
        let (kind, k) = v.rsplit_once(':')?;
        Some((kind.to_string(), k.parse().ok()?))
    });
    let Some((kind, k)) = armed else { return };
    if WRITING.with(|w| w.get()) != Some(kind.as_str()) {
        return;
    }
    let n = DONE.fetch_add(1, Ordering::SeqCst) + 1;
    if n == *k {
        eprintln!("METAAPO_CRASH_AFTER: killed after operation {n} of writing a {kind} ({what})");
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Files get the usual permissions (0644, folders 0755), whatever the library that wrote them
/// chose (safetensors writes through a 0600 temporary file).
fn normalize_permissions(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        for e in std::fs::read_dir(path)? {
            normalize_permissions(&e?.path())?;
        }
    } else if meta.is_file() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename. On any
/// failure (a full disk, say) the temporary file is removed and `path` is untouched.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if path.is_dir() {
        bail!(
            "{} is a folder; refusing to replace it with a file",
            path.display()
        );
    }
    let tmp = sibling(path, "tmp")?;
    let written = std::fs::write(&tmp, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
        .and_then(|()| {
            fault_point(&format!("write {}", tmp.display()));
            normalize_permissions(&tmp)?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot rename onto {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    fault_point(&format!("rename onto {}", path.display()));
    written
}

/// What is at an output path before a write.
enum Existing {
    Nothing,
    EmptyFolder,
    /// An earlier output of the same kind, with the entries metaapo wrote there.
    Ours(Vec<String>),
}

fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().to_string()))
        .collect::<Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

fn read_marker(dir: &Path) -> Option<Marker> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether `dir` is a complete output folder of `kind`.
pub fn is_complete(dir: &Path, kind: &str) -> bool {
    read_marker(dir).is_some_and(|m| m.kind == kind)
}

fn inspect(dir: &Path, kind: &str, replace: Replace, hint: &str) -> Result<Existing> {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return Ok(Existing::Nothing);
    };
    if !meta.is_dir() {
        bail!(
            "{} exists and is not a folder; refusing to replace it with a {kind}",
            dir.display()
        );
    }
    let names = entries(dir)?;
    if names.is_empty() {
        return Ok(Existing::EmptyFolder);
    }
    match read_marker(dir) {
        Some(m) if m.kind == kind && replace == Replace::SameKind => Ok(Existing::Ours(m.entries)),
        Some(m) if m.kind == kind => bail!(
            "{} already holds a {kind} written by metaapo; {hint} to replace it",
            dir.display()
        ),
        Some(m) => bail!(
            "{} holds a {} written by metaapo, not a {kind}; refusing to write into it",
            dir.display(),
            m.kind
        ),
        None => {
            let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
            bail!(
                "{} is a folder metaapo did not write (it holds {}{}); refusing to write a {kind} \
                 into it: choose a new or empty folder",
                dir.display(),
                shown.join(", "),
                if names.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            )
        }
    }
}

/// Fills a temporary folder with `fill`, marks it complete, then puts it in place of `dir`.
///
/// `dir` may be absent or empty; an earlier output of the same `kind` is replaced only with
/// [`Replace::SameKind`], and then only the entries its marker lists are removed (anything else
/// moves into the new folder; a name clash is refused before anything is replaced). Anything
/// else already at `dir` is refused before anything is written; `hint` says how to ask for a
/// replacement (e.g. "pass --force"). If `fill` fails, the temporary folder is removed and `dir`
/// is untouched.
pub fn write_dir(
    dir: &Path,
    kind: &'static str,
    replace: Replace,
    hint: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    // Refused before anything is written; looked at again when placing (another process may
    // have written `dir` meanwhile).
    inspect(dir, kind, replace, hint)?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        if let Some(name) = dir.file_name() {
            clean_stale(parent, Some(&name.to_string_lossy()));
        }
    }
    let previous = WRITING.with(|w| w.replace(Some(kind)));
    let result = (|| {
        let tmp = sibling(dir, "tmp")?;
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        fault_point("create the temporary folder");
        let filled = fill(&tmp).and_then(|()| {
            normalize_permissions(&tmp)?;
            let marker = Marker {
                kind: kind.to_string(),
                entries: entries(&tmp)?,
            };
            fault_point("fill");
            write_file(
                &tmp.join(MARKER),
                serde_json::to_string_pretty(&marker)?.as_bytes(),
            )
        });
        if let Err(e) = filled {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        place(&tmp, dir, kind, replace, hint).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&tmp);
        })
    })();
    WRITING.with(|w| w.set(previous));
    result
}

/// Moves the finished `tmp` to `dir`.
fn place(tmp: &Path, dir: &Path, kind: &str, replace: Replace, hint: &str) -> Result<()> {
    let rename = |from: &Path, to: &Path| {
        let r = std::fs::rename(from, to)
            .with_context(|| format!("cannot rename {} onto {}", from.display(), to.display()));
        fault_point(&format!("rename onto {}", to.display()));
        r
    };
    let ours = match inspect(dir, kind, replace, hint)? {
        // An empty folder is replaced by the rename itself.
        Existing::Nothing | Existing::EmptyFolder => match rename(tmp, dir) {
            // Another process finished the same output first: replace it as the caller allows.
            Err(_) if matches!(inspect(dir, kind, replace, hint)?, Existing::Ours(_)) => {
                return place(tmp, dir, kind, replace, hint)
            }
            other => return other,
        },
        Existing::Ours(ours) => ours,
    };
    let new = entries(tmp)?;
    let foreign: Vec<String> = entries(dir)?
        .into_iter()
        .filter(|n| n != MARKER && !ours.contains(n))
        .collect();
    if let Some(clash) = foreign.iter().find(|n| new.contains(n)) {
        bail!(
            "{} holds {clash}, which metaapo did not write, and the new output has an entry of \
             that name; move it away first",
            dir.display()
        );
    }
    let aside = sibling(dir, "old")?;
    rename(dir, &aside)?;
    rename(tmp, dir)?;
    for name in &foreign {
        rename(&aside.join(name), &dir.join(name))?;
    }
    for name in ours.iter().chain([&MARKER.to_string()]) {
        let p = aside.join(name);
        if let Err(e) = remove_entry(&p) {
            if p.exists() {
                bail!("cannot remove {}: {e}", p.display());
            }
        }
        fault_point(&format!("remove {}", p.display()));
    }
    std::fs::remove_dir(&aside).with_context(|| format!("cannot remove {}", aside.display()))?;
    fault_point("remove the old folder");
    Ok(())
}

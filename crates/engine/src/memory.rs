//! Start-up allocator settings. glibc returns large freed buffers to the OS and page-faults them
//! back on the next step; activations are freed and re-allocated every step, so this cost ~30% of
//! training time (docs/ARCHITECTURE.md, "Measured engine facts"). Keeping them in the heap made steps 1.5-1.8x faster.

/// Keeps freed memory in the process for reuse. Call once, first thing in `main`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), for benchmarks.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Memory this process can still take, in bytes: Linux `MemAvailable`, or a cgroup limit when
/// that is lower, plus what this process freed and kept ([`keep_freed_memory`]): the OS counts
/// that as used, but the next allocation takes it first. Unknown (another OS) is unlimited.
fn available_bytes() -> f64 {
    system_available() + kept_free()
}

/// Bytes freed by this process that its heap kept (glibc's `mallinfo2().fordblks`).
fn kept_free() -> f64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    unsafe {
        libc::mallinfo2().fordblks as f64
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0.0
}

fn system_available() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
            .map(|kib| kib * 1024.0)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok());
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => f64::INFINITY,
    }
}

/// `bytes` for people: `12.3 GB`.
pub fn human(bytes: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if v >= 1000.0 {
        return format!("{bytes:.1e} B");
    }
    format!("{v:.1} {}", units[i])
}

/// Refuses, before anything is allocated, work whose memory (`bytes`, an estimate) is more
/// than the machine has free; `what` says what was asked, e.g. "n = 10^12 samples of 3 prompts".
pub fn ensure_fits(what: &str, bytes: f64) -> anyhow::Result<()> {
    // The heap's statistics walk every free chunk (~4% of a scoring forward on a small
    // model), so they are read only when the system's free memory alone is not enough.
    if bytes <= system_available() {
        return Ok(());
    }
    let free = available_bytes();
    if bytes > free {
        anyhow::bail!(
            "{what} would need about {}, more than the {} of memory available",
            human(bytes),
            human(free)
        );
    }
    Ok(())
}

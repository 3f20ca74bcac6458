//! Ctrl-C as the engine sees it: a flag the host sets, polled by every long loop (each decoding
//! step, each scoring and reward batch, each training step), so a request to stop is honoured
//! within about a second wherever the run is.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks every running loop to stop at its next poll.
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Forgets a stop request (the REPL, after an interrupted input, goes on with the next one).
pub fn clear() {
    REQUESTED.store(false, Ordering::Relaxed);
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// An error once a stop was requested; loops call it between steps.
pub fn check() -> anyhow::Result<()> {
    if requested() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

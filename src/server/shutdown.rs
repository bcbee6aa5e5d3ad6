//! Graceful shutdown on SIGTERM or SIGINT.
//!
//! The signal only sets a flag (the one thing a handler may safely do).
//! Each worker watches it: it stops accepting, lets the requests in flight
//! finish for up to `--shutdown-grace`, hands its last usage to the writer
//! and ends; the process then commits the usage and exits 0.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Routes SIGTERM and SIGINT to the stop flag.
pub fn install() -> Result<(), String> {
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false))).clone();
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, flag.clone()).map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    Ok(())
}

/// True once a stop was requested.
pub fn requested() -> bool {
    STOP.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

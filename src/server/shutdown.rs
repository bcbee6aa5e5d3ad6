//! Graceful shutdown on SIGTERM or SIGINT, and SIGHUP's reload.
//!
//! A signal only sets a flag (the one thing a handler may safely do).
//! Each worker watches the stop flag: it stops accepting, lets the requests
//! in flight finish for up to `--shutdown-grace`, hands its last usage to
//! the writer and ends; the process then commits the usage and exits 0.
//! SIGHUP asks for the TLS certificate to be loaded again (it never stops
//! the gateway, with TLS or without).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static HANGUP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Routes SIGTERM and SIGINT to the stop flag.
pub fn install() -> Result<(), String> {
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false))).clone();
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, flag.clone()).map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    let hup = HANGUP.get_or_init(|| Arc::new(AtomicBool::new(false))).clone();
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup).map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    Ok(())
}

/// True once per SIGHUP received since the last call.
pub fn take_hangup() -> bool {
    HANGUP.get().is_some_and(|f| f.swap(false, Ordering::Relaxed))
}

/// True once a stop was requested.
pub fn requested() -> bool {
    STOP.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

//! One server per data directory.
//!
//! Limits, quotas and the usage writer assume that one process serves a
//! store: two `serve` processes on the same directory would each enforce a
//! key's limits alone (doubling them) and race their usage totals. So
//! `serve` takes an exclusive `flock` on `serve.lock` in the directory and
//! writes its pid there; a second one is refused with the directory and the
//! pid that holds it. The lock goes with the process (a crash releases it).
//! The `keys` and `usage` commands do not take it: they work beside a
//! running server, as LMDB allows.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The held lock; released when dropped or when the process ends.
pub struct ServeLock {
    _file: std::fs::File,
}

impl ServeLock {
    /// Takes the lock of `dir` (which must exist), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, String> {
        let path = dir.join("serve.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // SAFETY: flock only takes the descriptor of the file we hold open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => "another process".to_owned(),
                p => format!("process {p}"),
            };
            return Err(format!(
                "the data directory {} is in use by another ai-gateway serve ({holder}); one server per data directory (the keys and usage commands work beside it)",
                dir.display()
            ));
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_with_the_holder() {
        let dir = crate::store::temp_dir("lock");
        std::fs::create_dir_all(&dir).unwrap();
        let held = ServeLock::acquire(&dir).unwrap();
        let e = ServeLock::acquire(&dir).err().unwrap();
        assert!(e.contains(&format!("process {}", std::process::id())), "{e}");
        assert!(e.contains(&dir.display().to_string()), "{e}");
        drop(held);
        assert!(ServeLock::acquire(&dir).is_ok());
    }
}

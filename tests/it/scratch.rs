//! Scratch directories for tests: one per test under one per-process root in the system's
//! temp directory, removed when the test that made it ends well, kept (and named on stderr)
//! when it panics so that a failure's evidence survives. Roots left by earlier runs whose
//! process is gone (a killed run) are removed when this run makes its first scratch dir.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// A test's own directory; removed on drop unless the test is panicking.
pub(crate) struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A fresh, empty directory `<tmp>/shikaku-it-<pid>/<name>`.
    pub(crate) fn new(name: &str) -> Scratch {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_dead_roots);
        let path = root(std::process::id()).join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch { path }
    }
}

fn root(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("shikaku-it-{pid}"))
}

/// Removes the roots of earlier runs whose process no longer exists (Linux: `/proc/<pid>`).
fn sweep_dead_roots() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("shikaku-it-")) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test scratch kept for inspection: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

//! Processes for scenarios: a daemon (vxcd) running in a namespace for the length of a scenario,
//! and bounded waits for a condition (a socket appearing, a link showing up).

use super::net::Netns;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A background process whose stdout and stderr go to a log file; killed when dropped.
pub struct Spawned {
    child: Child,
    pub what: String,
    pub log_path: PathBuf,
}

impl Spawned {
    /// Starts `program args` in `ns` (or in the current namespace when `ns` is None).
    pub fn start(ns: Option<&Netns>, program: &Path, args: &[&str]) -> Spawned {
        let program_text = program.to_string_lossy().into_owned();
        let mut cmd = match ns {
            Some(ns) => ns.command(&program_text, args),
            None => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
        };
        let name = program
            .file_name()
            .map_or("process".into(), |n| n.to_string_lossy().into_owned());
        let log_path = std::env::temp_dir().join(format!(
            "lab-{name}-{}-{}.log",
            std::process::id(),
            unique()
        ));
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("creating log {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("duplicating log {}: {e}", log_path.display()));
        let what = format!("{program_text} {}", args.join(" "));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting `{what}`: {e}"));
        Spawned {
            child,
            what,
            log_path,
        }
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Ok(None) while it runs, Ok(Some(status)) once it exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("checking on `{}`: {e}", self.what))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SERIAL: AtomicU32 = AtomicU32::new(0);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// Polls `ready` every 20 ms until it holds; panics naming `what` after `limit`. The limit bounds a
/// hang, it is not a timing assertion: pick it generously (TCG is slow).
pub fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "waited {} s for {what}",
            limit.as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
        Spawned::start_with_env(ns, program, args, &[])
    }

    /// Like `start`, with extra environment variables (e.g. NOTIFY_SOCKET for a daemon's
    /// readiness).
    pub fn start_with_env(
        ns: Option<&Netns>,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Spawned {
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
        cmd.envs(env.iter().copied());
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

    /// The process id. Started in a namespace, this is still the program's own pid: `ip netns
    /// exec` execs it in place.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. SIGTERM) without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("sending {signal} to `{}`: {e}", self.what));
    }

    /// Waits for the process to exit, at most `limit` (a bound on a hang); panics with its log
    /// when it does not.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "`{}` did not exit within {} s; its log:\n{}",
                self.what,
                limit.as_secs_f64(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

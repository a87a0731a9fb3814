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

/// Bound on waiting for the daemon and its answers: a hang limit, not a timing assertion.
pub const DAEMON_LIMIT: Duration = Duration::from_secs(60);

/// vxcd's default IFLA_GROUP for the links it owns (config/vxcd.toml), and the prio of its
/// filters (0x7863).
pub const OWNER_GROUP: u32 = 0x7863;

/// The real vxcd running in a scenario's namespace with its own config, state directory and
/// socket. Readiness is its sd_notify READY=1 (it converges the kernel before that), so nothing
/// waits by guessing. Its log goes to the guest console when it is dropped.
pub struct Vxcd {
    netns: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    pub socket: PathBuf,
    /// (port name, interface) as configured.
    ports: Vec<(String, String)>,
    process: Option<Spawned>,
    /// Logs of the earlier runs of this daemon (restarts).
    earlier_logs: String,
}

impl Vxcd {
    /// Starts vxcd in `ns` with these (port name, interface) pairs and `extra` config sections
    /// (e.g. "[reconcile]\nrepair = false").
    pub fn start(ns: &Netns, ports: &[(&str, &str)], extra: &str) -> Vxcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut vxcd = Vxcd {
            netns: ns.name.clone(),
            socket: dir.path().join("control.sock"),
            config: dir.path().join("vxcd.toml"),
            dir,
            ports: ports
                .iter()
                .map(|(p, i)| (p.to_string(), i.to_string()))
                .collect(),
            process: None,
            earlier_logs: String::new(),
        };
        vxcd.configure(extra);
        vxcd.launch();
        vxcd
    }

    /// Rewrites the config with other `extra` sections; it counts from the next `launch`.
    pub fn configure(&self, extra: &str) {
        let mut text = format!(
            "[control]\nsocket = \"{}\"\nmode = \"0600\"\n\n[state]\ndir = \"{}\"\n\n{extra}\n",
            self.socket.display(),
            self.dir.path().join("state").display()
        );
        for (name, interface) in &self.ports {
            text.push_str(&format!(
                "\n[[port]]\nname = \"{name}\"\ninterface = \"{interface}\"\n"
            ));
        }
        std::fs::write(&self.config, text).expect("writing vxcd.toml");
    }

    /// Starts the daemon (again, with the config as it is now and the same state) and waits
    /// for READY=1.
    pub fn launch(&mut self) {
        use std::os::unix::net::UnixDatagram;
        let notify_path = self.dir.path().join(format!("notify-{}", unique()));
        let notify = UnixDatagram::bind(&notify_path).expect("binding the notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let vxcd = super::bin("vxcd");
        let config = self.config.to_string_lossy().into_owned();
        let notify_text = notify_path.to_string_lossy().into_owned();
        let mut process = Spawned::start_with_env(
            None,
            Path::new(&super::net::tool("ip")),
            &[
                "netns",
                "exec",
                &self.netns,
                &vxcd.to_string_lossy(),
                "--config",
                &config,
            ],
            &[("NOTIFY_SOCKET", &notify_text)],
        );
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    break;
                }
            }
            if let Some(status) = process.try_wait() {
                panic!(
                    "vxcd exited with {status} before READY=1; its log:\n{}",
                    process.log()
                );
            }
            assert!(
                started.elapsed() < DAEMON_LIMIT,
                "vxcd sent no READY=1 within {} s; its log:\n{}",
                DAEMON_LIMIT.as_secs(),
                process.log()
            );
        }
        eprintln!(
            "vxcd ready in {:.2} s (pid {})",
            started.elapsed().as_secs_f64(),
            process.pid()
        );
        let _ = std::fs::remove_file(&notify_path);
        self.process = Some(process);
    }

    fn running(&mut self) -> &mut Spawned {
        self.process.as_mut().expect("vxcd is not running")
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let process = self.running();
        process.signal(nix::sys::signal::Signal::SIGTERM);
        let status = process.wait_exit(DAEMON_LIMIT);
        self.retire(&format!("daemon stopped: {status}"));
        status
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(&mut self) {
        self.running().kill9();
        self.retire("daemon killed");
    }

    /// Keeps the log of the run that ended (`how`) for `log`.
    fn retire(&mut self, how: &str) {
        if let Some(process) = self.process.take() {
            self.earlier_logs.push_str(&process.log());
            self.earlier_logs.push_str(&format!("---- ({how}) ----\n"));
        }
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("vxcd is not running").pid()
    }

    /// Everything every run of this daemon printed (it logs to stderr: no journald in the lab).
    pub fn log(&self) -> String {
        let current = self.process.as_ref().map(|p| p.log()).unwrap_or_default();
        format!("{}{current}", self.earlier_logs)
    }

    /// Connects a protocol client.
    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// One request on a fresh connection; the whole answer.
    pub fn call(&self, request: serde_json::Value) -> serde_json::Value {
        self.client()
            .call(&request)
            .unwrap_or_else(|| panic!("vxcd gave no answer to {request}; its log:\n{}", self.log()))
    }

    /// The result of a request that must succeed.
    pub fn ok(&self, request: serde_json::Value) -> serde_json::Value {
        let answer = self.call(request.clone());
        assert_eq!(
            answer["ok"],
            serde_json::Value::Bool(true),
            "{request} was refused: {answer}\nvxcd log:\n{}",
            self.log()
        );
        answer["result"].clone()
    }

    /// Runs `vxcctl --socket S ARGS` (in the current namespace: the socket is a file);
    /// returns its output whatever the exit status.
    pub fn vxcctl(&self, args: &[&str]) -> std::process::Output {
        let socket = self.socket.to_string_lossy().into_owned();
        super::net::output(
            Command::new(super::bin("vxcctl"))
                .args(["--socket", &socket])
                .args(args),
        )
    }

    /// The error of a request that must fail with `code`.
    pub fn refused(&self, request: serde_json::Value, code: &str) -> serde_json::Value {
        let answer = self.call(request.clone());
        assert!(
            answer["ok"] == serde_json::Value::Bool(false) && answer["error"]["code"] == code,
            "{request}: expected error {code}, got {answer}\nvxcd log:\n{}",
            self.log()
        );
        answer["error"].clone()
    }

    /// The answer to `status`.
    pub fn status(&self) -> serde_json::Value {
        self.ok(serde_json::json!({"op": "status"}))
    }

    /// The VXCs `vxc.list` returns.
    pub fn vxcs(&self) -> Vec<serde_json::Value> {
        self.ok(serde_json::json!({"op": "vxc.list"}))["vxcs"]
            .as_array()
            .expect("vxcs is a list")
            .clone()
    }

    /// Like `vxcctl`; asserts it exits 0 and returns stdout.
    pub fn vxcctl_ok(&self, args: &[&str]) -> String {
        let out = self.vxcctl(args);
        assert!(
            out.status.success(),
            "vxcctl {} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Vxcd {
    fn drop(&mut self) {
        // After the network state snapshot when the scenario failed, before the namespaces go.
        eprintln!(
            "---- vxcd log ----\n{}---- end of vxcd log ----",
            self.log()
        );
    }
}

/// A line-protocol client on one connection.
pub struct Client {
    stream: std::os::unix::net::UnixStream,
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let stream = std::os::unix::net::UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
        stream
            .set_read_timeout(Some(DAEMON_LIMIT))
            .expect("read timeout");
        let reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        Client { stream, reader }
    }

    /// Sends one request and reads its answer; None when the connection breaks (daemon killed).
    pub fn call(&mut self, request: &serde_json::Value) -> Option<serde_json::Value> {
        use std::io::{BufRead, Write};
        let mut line = request.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes()).ok()?;
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(n) if n > 0 => Some(
                serde_json::from_str(&answer)
                    .unwrap_or_else(|e| panic!("answer to {request}: {answer:?}: {e}")),
            ),
            _ => None,
        }
    }

    /// The next line the daemon sends unasked (a `watch` stream); None when it closes.
    pub fn next_line(&mut self) -> Option<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => Some(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("stream line {line:?}: {e}")),
            ),
            _ => None,
        }
    }
}

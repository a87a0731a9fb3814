//! Runs the real `vxcd` binary for a test: in a network namespace the test made, with its own
//! config, state directory and socket, and readiness taken from the daemon's own sd_notify
//! READY=1 (so tests never guess with sleeps).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use super::Netns;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running daemon and everything it owns for the test.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub netns: String,
    stderr_path: PathBuf,
}

/// Config text for a test daemon; `ports` are (name, interface).
pub fn config_text(dir: &Path, ports: &[(&str, &str)], extra: &str) -> String {
    let mut text = format!(
        "[control]\nsocket = \"{}\"\nmode = \"0666\"\nwriters = [\"4242\"]\n\n[state]\ndir = \"{}\"\n\n{extra}\n",
        dir.join("control.sock").display(),
        dir.join("state").display()
    );
    for (name, interface) in ports {
        text.push_str(&format!(
            "[[port]]\nname = \"{name}\"\ninterface = \"{interface}\"\n\n"
        ));
    }
    text
}

impl Daemon {
    /// Starts vxcd in `netns` with these ports ((name, interface)) and extra config text, and
    /// waits for READY=1.
    pub fn start(netns: &Netns, ports: &[(&str, &str)], extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("vxcd.toml");
        std::fs::write(&config_path, config_text(dir.path(), ports, extra))
            .expect("writing config");
        let mut daemon = Daemon {
            child: None,
            socket: dir.path().join("control.sock"),
            config: config_path,
            netns: netns.name.clone(),
            stderr_path: dir.path().join("stderr.log"),
            dir,
        };
        daemon.restart();
        daemon
    }

    /// Starts (again) with the same config and state; waits for READY=1.
    pub fn restart(&mut self) {
        let notify_path = self
            .dir
            .path()
            .join(format!("notify-{}", NEXT.fetch_add(1, Ordering::SeqCst)));
        let notify = UnixDatagram::bind(&notify_path).expect("binding notify socket");
        notify
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, env!("CARGO_BIN_EXE_vxcd")])
            .arg("--config")
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawning vxcd");
        self.child = Some(child);
        let mut buf = [0u8; 4096];
        loop {
            match notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    if msg.lines().any(|l| l == "READY=1") {
                        break;
                    }
                }
                Err(e) => panic!(
                    "vxcd sent no READY=1 within 60 s ({e}); its log:\n{}",
                    self.log()
                ),
            }
        }
        let _ = std::fs::remove_file(&notify_path);
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// One request on a fresh connection; returns the whole answer object.
    pub fn call(&self, request: Value) -> Value {
        self.client().call(request)
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // `ip netns exec` execs vxcd in place, so the child's pid is the daemon's.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().ok()?.code()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A line-protocol client on one connection.
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client { stream, reader }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("writing request");
    }

    /// Reads one answer line; None at end of stream.
    pub fn read_answer(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("reading answer");
        if n == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?}: {e}")))
    }

    /// Like `call`, but `None` when the connection breaks instead of a panic.
    pub fn try_call(&mut self, request: Value) -> Option<Value> {
        let mut line = request.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes()).ok()?;
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(n) if n > 0 => serde_json::from_str(&answer).ok(),
            _ => None,
        }
    }

    pub fn call(&mut self, request: Value) -> Value {
        let mut line = request.to_string();
        line.push('\n');
        self.send_raw(line.as_bytes());
        self.read_answer().expect("daemon closed the connection")
    }
}

/// The `result` of a successful answer, or a panic naming the error.
pub fn ok(answer: Value) -> Value {
    assert_eq!(answer["ok"], json!(true), "expected success, got {answer}");
    answer["result"].clone()
}

/// The `error` of a failed answer, asserting its code.
pub fn err(answer: Value, code: &str) -> Value {
    assert_eq!(answer["ok"], json!(false), "expected {code}, got {answer}");
    assert_eq!(answer["error"]["code"], json!(code), "{answer}");
    answer["error"].clone()
}

/// The tunnel edge of host tests (this kernel has VXLAN, not 802.1Q): an edge namespace with a
/// core link to a peer (`core0`, 10.99.0.1 and 10.99.0.2), `ports` untagged veth ports `c<n>` on
/// `cust<n>` (their peers `cust<n>x` in the edge too, n from 1), IPv6 address generation off by
/// the edge's default (links born so are made up and promiscuous in one request:
/// `dataplane/end.rs`, `born_up`); vxcd started there with `[core]` and periodic passes off
/// (`interval_s` an hour), and a multi-use key `far` towards the peer.
pub fn tunnel_edge(prefix: &str, ports: u32) -> (Netns, Netns, Daemon) {
    super::require_root();
    let edge = Netns::new(prefix);
    let peer = Netns::new(&format!("{prefix}p"));
    super::veth(&edge, "core0", &peer, "core0");
    edge.ip(&["addr", "add", "10.99.0.1/24", "dev", "core0"]);
    peer.ip(&["addr", "add", "10.99.0.2/24", "dev", "core0"]);
    let names: Vec<(String, String)> = (1..=ports)
        .map(|n| (format!("c{n}"), format!("cust{n}")))
        .collect();
    for (_, interface) in &names {
        super::veth_local(&edge, interface, &format!("{interface}x"));
    }
    let ports: Vec<(&str, &str)> = names
        .iter()
        .map(|(p, i)| (p.as_str(), i.as_str()))
        .collect();
    assert!(edge.exec_ok(&[
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv6/conf/default/addr_gen_mode"
    ]));
    let vxcd = Daemon::start(
        &edge,
        &ports,
        "[core]\naddress = \"10.99.0.1\"\ninterface = \"core0\"\n\n[reconcile]\ninterval_s = 3600\n",
    );
    ok(vxcd.call(
        json!({"op": "key.put", "key": {"key": "far", "port": "mel-1",
        "host": "10.99.0.2", "single_use": false, "max_speed_mbps": 1000}}),
    ));
    (edge, peer, vxcd)
}

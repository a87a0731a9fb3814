//! Shared helpers for host tests: network namespaces with a Drop guard, veth pairs,
//! and running code (sync or async) inside a namespace.
#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod daemon;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace made for one test; deleted on drop, even when the test fails.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `/run/netns/<prefix>-<pid>-<n>`; panics with the reason if it cannot.
    pub fn new(prefix: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        // Loopback up so local sockets work.
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args...`, panicking with stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip -n <ns> args...`, returning whether it succeeded.
    pub fn ip_ok(&self, args: &[&str]) -> bool {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        Command::new("ip")
            .args(&full)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// `tc -n <ns> args...`.
    pub fn tc(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("tc", &full)
    }

    /// Runs a command inside the namespace, returning whether it succeeded.
    pub fn exec_ok(&self, cmd: &[&str]) -> bool {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(cmd);
        Command::new("ip")
            .args(&full)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Whether a TCP connection from this namespace to `addr` in `to` works and carries a
    /// byte each way (this machine has no `ping`); one second per try, three tries.
    pub fn reaches(&self, to: &Netns, addr: &str) -> bool {
        let ip: std::net::IpAddr = addr.parse().expect("address");
        let listener = to.run(move || std::net::TcpListener::bind((ip, 0)).expect("bind"));
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let server = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
            while std::time::Instant::now() < deadline {
                if let Ok((mut conn, _)) = listener.accept() {
                    let _ = conn.set_nonblocking(false);
                    let mut b = [0u8; 1];
                    if conn.read_exact(&mut b).is_ok() {
                        let _ = conn.write_all(&b);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        let ok = self.run(move || {
            (0..3).any(|_| {
                let target = std::net::SocketAddr::new(ip, port);
                let Ok(mut conn) = std::net::TcpStream::connect_timeout(
                    &target,
                    std::time::Duration::from_secs(1),
                ) else {
                    return false;
                };
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(1)));
                let mut b = [0u8; 1];
                conn.write_all(&[7]).is_ok() && conn.read_exact(&mut b).is_ok() && b[0] == 7
            })
        });
        drop(server);
        ok
    }

    /// Ifindex of an interface in the namespace.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let out = self.ip(&["-o", "link", "show", "dev", ifname]);
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex in {out:?}"))
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it opens live there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Runs an async closure on a current-thread tokio runtime inside this namespace.
    pub fn block_on<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        self.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns on a valid, open namespace fd; it only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// Runs a command, panicking with its stderr if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A VXC joining two interfaces untagged at both ends (port names `port-<interface>`): the pipe
/// this kernel can carry without 802.1Q.
pub fn untagged_vxc(id: &str, rate_mbps: u32, a: &str, b: &str) -> vxcd::dataplane::VxcSpec {
    let end = |interface: &str| vxcd::dataplane::EndSpec {
        port: format!("port-{interface}"),
        interface: interface.into(),
        vlan: None,
        tunnel: None,
    };
    vxcd::dataplane::VxcSpec {
        id: id.into(),
        rate_mbps,
        a: end(a),
        b: end(b),
        shutdown: false,
    }
}

/// A veth pair with both ends in one namespace, both up.
pub fn veth_local(ns: &Netns, a_if: &str, b_if: &str) {
    veth(ns, a_if, ns, b_if)
}

/// A veth pair `a_if` in `a` and `b_if` in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// Fails the test with a clear message when not root (namespaces need CAP_SYS_ADMIN).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "host dataplane tests need root (network namespaces, netlink writes)"
    );
}

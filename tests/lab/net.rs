//! Topology helpers for scenarios: "hosts" are network namespaces joined by veth pairs. They work
//! in the lab guest and on the host (where there is no 802.1Q). Every helper panics with the
//! command, its output and the cause when something fails: these are test helpers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The program for `tool` (ip, tc, bridge, tcpdump): by full path in the guest, where busybox
/// applets would otherwise shadow iproute2; from PATH on the host.
pub fn tool(name: &str) -> String {
    if super::in_guest() {
        if let Some((_, path)) = super::vm::GUEST_TOOLS.iter().find(|(t, _)| *t == name) {
            return path.to_string();
        }
    }
    name.to_string()
}

fn shown(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd`, returns its output whatever the exit status.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", shown(cmd)))
}

/// Runs `cmd`; Ok(stdout) on success, Err(what ran, status, stderr and stdout) otherwise.
pub fn try_run(cmd: &mut Command) -> Result<String, String> {
    let out = output(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "`{}` exited with {}: {}{}",
            shown(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", stdout.trim())
            }
        ))
    }
}

/// Runs `cmd` and returns its stdout; panics with the details when it fails.
pub fn run(cmd: &mut Command) -> String {
    try_run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// `ip ARGS` (in the root namespace), split on whitespace.
pub fn ip(args: &str) -> String {
    run(Command::new(tool("ip")).args(args.split_whitespace()))
}

static NETNS_SERIAL: AtomicU32 = AtomicU32::new(0);

/// A network namespace standing for one host; removed (with its interfaces) when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace named `lab-<role>-<pid>-<n>` with `lo` up.
    pub fn new(role: &str) -> Netns {
        let name = format!(
            "lab-{role}-{}-{}",
            std::process::id(),
            NETNS_SERIAL.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new(tool("ip")).args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n NS ARGS`, split on whitespace; panics on failure.
    pub fn ip(&self, args: &str) -> String {
        run(&mut self.ip_cmd(args))
    }

    /// `ip -n NS ARGS` as a Result, for commands that are expected to fail.
    pub fn try_ip(&self, args: &str) -> Result<String, String> {
        try_run(&mut self.ip_cmd(args))
    }

    fn ip_cmd(&self, args: &str) -> Command {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["-n", &self.name]).args(args.split_whitespace());
        cmd
    }

    /// `tc -n NS ARGS`, split on whitespace; panics on failure.
    pub fn tc(&self, args: &str) -> String {
        run(Command::new(tool("tc"))
            .args(["-n", &self.name])
            .args(args.split_whitespace()))
    }

    /// A command that runs `program args` inside this namespace (`ip netns exec`), to adjust
    /// (env, stdio) and run or spawn.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    /// Runs `program args` in this namespace and returns stdout; panics on failure.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        run(&mut self.command(program, args))
    }

    /// Runs a shell snippet in this namespace (`sh -c`); full paths for ip/tc in the guest.
    pub fn sh(&self, script: &str) -> String {
        self.exec("sh", &["-c", script])
    }

    /// Adds VLAN `id` on `parent` as `<parent>.<id>`, with `cidr` (e.g. "10.0.0.1/24"), up.
    /// Returns the subinterface name.
    pub fn add_vlan(&self, parent: &str, id: u16, cidr: &str) -> String {
        let name = format!("{parent}.{id}");
        self.ip(&format!(
            "link add link {parent} name {name} up type vlan id {id}"
        ));
        self.ip(&format!("addr add {cidr} dev {name}"));
        name
    }

    /// Adds `cidr` to `dev` and sets it up.
    pub fn addr(&self, dev: &str, cidr: &str) {
        self.ip(&format!("addr add {cidr} dev {dev}"));
        self.ip(&format!("link set {dev} up"));
    }

    /// Pings `addr` `count` times (deadline count + 3 s) and reports what came back.
    pub fn ping(&self, addr: &str, count: u32) -> Ping {
        let deadline = (count + 3).to_string();
        let out =
            output(&mut self.command("ping", &["-c", &count.to_string(), "-w", &deadline, addr]));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ping::parse(&self.name, addr, &text)
    }

    /// Pings and asserts every echo came back.
    pub fn assert_ping(&self, addr: &str, count: u32) -> Ping {
        let ping = self.ping(addr, count);
        assert!(
            ping.transmitted == count && ping.received == count,
            "ping {addr} from {}: {} sent, {} received\n{}",
            self.name,
            ping.transmitted,
            ping.received,
            ping.output
        );
        ping
    }

    /// `tc -n NS ARGS` as a Result, for commands that are expected to fail.
    pub fn try_tc(&self, args: &str) -> Result<String, String> {
        try_run(
            Command::new(tool("tc"))
                .args(["-n", &self.name])
                .args(args.split_whitespace()),
        )
    }

    /// Every link of this namespace as `ip -d` sees it (read with `ip -j -d link show`).
    pub fn links(&self) -> Vec<Link> {
        let text = self.ip("-j -d link show");
        let parsed: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("`ip -j -d link show` in {}: {e}\n{text}", self.name));
        let Some(list) = parsed.as_array() else {
            panic!("`ip -j -d link show` in {}: not a list\n{text}", self.name);
        };
        list.iter().map(Link::from_json).collect()
    }

    /// The link named `name`, if there is one.
    pub fn link(&self, name: &str) -> Option<Link> {
        self.links().into_iter().find(|l| l.name == name)
    }

    /// The ifindex of `name`; panics naming the link when it does not exist.
    pub fn ifindex(&self, name: &str) -> u32 {
        self.link(name)
            .unwrap_or_else(|| panic!("no link {name} in {}", self.name))
            .index
    }

    /// Runs `work` on a new thread that has entered this namespace (`setns`, which moves only
    /// the calling thread), so a scenario can open sockets in a host of its topology without
    /// another process. The namespace must outlive the thread.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        std::thread::spawn(move || {
            // SAFETY: setns only reads the descriptor, which `file` keeps open for the call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            );
            drop(file);
            work()
        })
    }

    /// Sends `count` copies of `frame` (a whole Ethernet frame, tags inline, no FCS) out of
    /// `ifname` with an AF_PACKET socket from inside this namespace, so a scenario knows exactly
    /// how many frames went on the wire. Returns once the kernel took every one.
    pub fn send_frames(&self, ifname: &str, frame: &[u8], count: usize) {
        let (ifname, frame, ns) = (ifname.to_string(), frame.to_vec(), self.name.clone());
        self.spawn_in(move || {
            let what = format!("sending frames out of {ifname} in {ns}");
            let c_name = std::ffi::CString::new(ifname.as_str()).expect("interface name");
            // SAFETY: if_nametoindex reads the NUL-terminated name, which outlives the call.
            let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
            assert_ne!(index, 0, "{what}: {}", std::io::Error::last_os_error());
            // Protocol 0: this socket receives nothing, it only sends.
            // SAFETY: plain socket(2) call; the descriptor is owned below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(
                fd >= 0,
                "{what}: socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is a new descriptor that nothing else owns.
            let socket =
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            for n in 0..count {
                // SAFETY: the buffer and the address are valid for the lengths given.
                let sent = unsafe {
                    libc::sendto(
                        std::os::fd::AsRawFd::as_raw_fd(&socket),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&addr as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                assert_eq!(
                    sent,
                    frame.len() as isize,
                    "{what}: frame {n} of {count}: {}",
                    std::io::Error::last_os_error()
                );
            }
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }

    /// Starts `tcpdump -e -n -l -i IF [filter]` in this namespace and returns once it listens.
    pub fn capture(&self, ifname: &str, filter: &str) -> Capture {
        Capture::start(self, ifname, filter)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new(tool("ip"))
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A link as `ip -j -d link show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_GROUP as a number ("default" is 0).
    pub group: u32,
    pub alias: Option<String>,
    /// `linkinfo.info_kind`: "vlan", "veth", "dummy"...
    pub kind: Option<String>,
    pub vlan: Option<u16>,
    /// The parent's name (`link` in the JSON) when it is in the same namespace.
    pub parent: Option<String>,
}

impl Link {
    fn from_json(v: &serde_json::Value) -> Link {
        let group = match &v["group"] {
            serde_json::Value::Number(n) => n.as_u64().unwrap_or(0) as u32,
            serde_json::Value::String(s) if s == "default" => 0,
            serde_json::Value::String(s) => s
                .parse()
                .unwrap_or_else(|_| panic!("group {s:?} of link {v}")),
            _ => 0,
        };
        Link {
            index: v["ifindex"]
                .as_u64()
                .unwrap_or_else(|| panic!("no ifindex in {v}")) as u32,
            name: v["ifname"].as_str().unwrap_or_default().to_string(),
            group,
            alias: v["ifalias"].as_str().map(str::to_string),
            kind: v["linkinfo"]["info_kind"].as_str().map(str::to_string),
            vlan: v["linkinfo"]["info_data"]["id"]
                .as_u64()
                .map(|id| id as u16),
            parent: v["link"].as_str().map(str::to_string),
        }
    }
}

/// Joins `a:a_if` and `b:b_if` with a veth pair, both ends up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.ip(&format!(
        "link add {a_if} type veth peer name {b_if} netns {}",
        b.name
    ));
    a.ip(&format!("link set {a_if} up"));
    b.ip(&format!("link set {b_if} up"));
}

/// The usual three hosts: customer --veth-- edge (where vxcd runs) --veth-- provider.
/// Interfaces: customer `eth0` <-> edge `cust0`; edge `prov0` <-> provider `eth0`.
pub struct Topology {
    pub customer: Netns,
    pub edge: Netns,
    pub provider: Netns,
}

impl Topology {
    pub fn new() -> Topology {
        let topo = Topology {
            customer: Netns::new("cust"),
            edge: Netns::new("edge"),
            provider: Netns::new("prov"),
        };
        veth(&topo.customer, "eth0", &topo.edge, "cust0");
        veth(&topo.edge, "prov0", &topo.provider, "eth0");
        topo
    }
}

/// The result of a ping: counts from the summary line and the full output.
#[derive(Debug)]
pub struct Ping {
    pub transmitted: u32,
    pub received: u32,
    pub output: String,
}

impl Ping {
    fn parse(ns: &str, addr: &str, text: &str) -> Ping {
        // busybox: "3 packets transmitted, 3 packets received, 0% packet loss"
        // iputils: "3 packets transmitted, 3 received, 0% packet loss, time 2003ms"
        let summary = text.lines().find(|l| l.contains("packets transmitted"));
        let number_before = |line: &str, word: &str| -> Option<u32> {
            let at = line.find(word)?;
            line[..at]
                .split([' ', ','])
                .rev()
                .find(|w| !w.is_empty() && *w != "packets")?
                .parse()
                .ok()
        };
        let counts = summary.and_then(|l| {
            Some((
                number_before(l, "packets transmitted")?,
                number_before(l, "received")?,
            ))
        });
        let (transmitted, received) = counts.unwrap_or_else(|| {
            panic!("ping {addr} in {ns}: no summary line in its output:\n{text}")
        });
        Ping {
            transmitted,
            received,
            output: text.to_string(),
        }
    }
}

/// A running tcpdump; its packet lines are collected as they are printed.
pub struct Capture {
    child: Option<Child>,
    what: String,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
}

/// How long to wait for tcpdump to listen: it is a bound on a hang, not a timing assertion.
const CAPTURE_START_LIMIT: Duration = Duration::from_secs(20);

impl Capture {
    fn start(ns: &Netns, ifname: &str, filter: &str) -> Capture {
        let what = format!("tcpdump on {ifname} in {}", ns.name);
        let tcpdump = tool("tcpdump");
        let mut args = vec!["-e", "-n", "-l", "--immediate-mode", "-i", ifname];
        args.extend(filter.split_whitespace());
        let mut child = ns
            .command(&tcpdump, &args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // tcpdump ends its output with an empty line when interrupted.
                if line.trim().is_empty() {
                    continue;
                }
                let (list, cv) = &*sink;
                list.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        // tcpdump prints "listening on IF" once its socket is bound: only then may traffic start.
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let err_sink = Arc::clone(&stderr_text);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
                let mut text = err_sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut capture = Capture {
            child: Some(child),
            what,
            lines,
            reader: Some(reader),
            stderr: stderr_text,
        };
        if ready_rx.recv_timeout(CAPTURE_START_LIMIT).is_err() {
            let err = capture.stderr.lock().unwrap().clone();
            capture.kill();
            panic!("{} did not start listening: {err}", capture.what);
        }
        capture
    }

    /// Waits until `done(lines)` holds, at most `limit`; returns the lines either way (the
    /// caller asserts on them).
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let (list, cv) = &*self.lines;
        let deadline = Instant::now() + limit;
        let mut lines = list.lock().unwrap();
        while !done(&lines) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            lines = cv.wait_timeout(lines, left).unwrap().0;
        }
        lines.clone()
    }

    /// Lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().clone()
    }

    /// Stops tcpdump (SIGINT, so it flushes) and returns every line it printed.
    pub fn stop(mut self) -> Vec<String> {
        if let Some(child) = self.child.as_mut() {
            // SIGINT lets tcpdump print its counters; the packet lines are line-buffered (-l)
            // and already read.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let _ = child.wait();
        }
        self.child = None;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.lines()
    }

    /// tcpdump's stderr so far (its banner and packet counts).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The network state of every namespace (and the root one): links with details, qdiscs with
/// statistics, ingress filters, and the end of the kernel log. Printed after a failed assertion
/// in the guest.
pub fn snapshot() -> String {
    let ip = tool("ip");
    let tc = tool("tc");
    let text = |cmd: &mut Command| match cmd.output() {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("(cannot run: {e})\n"),
    };
    let mut namespaces = vec![None];
    let listed = text(Command::new(&ip).args(["netns", "list"]));
    namespaces.extend(
        listed
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|n| Some(n.to_string())),
    );
    let mut report = String::from("==== network state after the failure ====\n");
    for ns in namespaces {
        let with_ns = |program: &str| {
            let mut cmd = Command::new(program);
            if let Some(ns) = &ns {
                cmd.args(["-n", ns]);
            }
            cmd
        };
        let label = ns.as_deref().unwrap_or("(root namespace)");
        report.push_str(&format!("---- {label}: ip -d link ----\n"));
        report.push_str(&text(with_ns(&ip).args(["-d", "link", "show"])));
        report.push_str(&format!("---- {label}: ip addr ----\n"));
        report.push_str(&text(with_ns(&ip).args(["-br", "addr", "show"])));
        report.push_str(&format!("---- {label}: tc -s qdisc ----\n"));
        report.push_str(&text(with_ns(&tc).args(["-s", "qdisc", "show"])));
        let links = text(with_ns(&ip).args(["-o", "link", "show"]));
        for dev in links
            .lines()
            .filter_map(|l| Some(l.split(": ").nth(1)?.split('@').next()?.to_string()))
        {
            let filters = text(with_ns(&tc).args(["-s", "filter", "show", "dev", &dev, "ingress"]));
            if !filters.trim().is_empty() {
                report.push_str(&format!(
                    "---- {label}: tc filter show dev {dev} ingress ----\n{filters}"
                ));
            }
        }
    }
    let dmesg = text(&mut Command::new("dmesg"));
    let tail: Vec<&str> = dmesg.lines().rev().take(20).collect();
    report.push_str("---- dmesg (last 20 lines) ----\n");
    for line in tail.into_iter().rev() {
        report.push_str(line);
        report.push('\n');
    }
    report.push_str("==== end of network state ====");
    report
}

/// The encapsulation tcpdump -e printed on one line: the VLAN ids of its 802.1Q tags, outer
/// first ("ethertype 802.1Q (0x8100), length 64: vlan 100, p 0, ethertype ..."); empty: untagged.
pub fn tcpdump_vlans(line: &str) -> Vec<u16> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "vlan")
        .filter_map(|w| w[1].trim_end_matches(',').parse().ok())
        .collect()
}

/// An Ethernet frame from `src` to `dst`, 802.1Q-tagged (TPID 0x8100, PCP 0) with `vlan` when
/// given, then `ether_type` and zeroes up to the minimum size (60 bytes untagged, 64 tagged:
/// the tag travels as metadata past the receiving port, which then sees 60 bytes).
pub fn ethernet_frame(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, ether_type: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    if let Some(vid) = vlan {
        frame.extend_from_slice(&0x8100u16.to_be_bytes());
        frame.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.resize(if vlan.is_some() { 64 } else { 60 }, 0);
    frame
}

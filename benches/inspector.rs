//! Inspector throughput, next to `tcpdump -w /dev/null` in the same run (acceptance 5).
//!
//!     sudo cargo bench --bench inspector
//!     VXCD_BENCH_RATES=100000,400000,0 VXCD_BENCH_SECS=3 cargo bench --bench inspector
//!
//! In a namespace it creates (IPv6 off), 64-byte frames (60 bytes + FCS, 802.1Q tag 100)
//! are replayed over a veth pair b0 -> b1 with AF_PACKET `sendmmsg`, paced to each offered
//! rate (0 = as fast as the sender goes). For each rate, first the inspector captures b1
//! (port with VLAN 100 -> one VXC end) and counts what it classified, then tcpdump
//! captures b1 while the same frames are replayed, and reports what it captured and what
//! the kernel dropped. A rate is "kept up" when every frame sent was counted and the kernel
//! dropped none. Also printed: the consumer's CPU time per frame (the inspector's capture
//! thread; tcpdump's process), which compares cost where a single sender cannot saturate
//! either. Needs root and tcpdump.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vxcd::dataplane::Side;
use vxcd::inspector::ring::Sender;
use vxcd::inspector::{EndRef, Expectation, InspectConfig, Inspector, PortExpect};

struct Ns(String);

fn cpu_secs(who: libc::c_int) -> f64 {
    // SAFETY: plain data, zero is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is writable.
    unsafe { libc::getrusage(who, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns on an open namespace fd; changes only this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// 60 bytes: dst, src, 0x8100 tag 100, EtherType 0x0800, zero payload.
fn frame() -> Vec<u8> {
    let mut f = vec![
        0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x81, 0x00, 0x00, 100, 0x08, 0x00,
    ];
    f.resize(60, 0);
    f
}

/// Sends `total` frames at `rate` per second (0: unpaced) from b0; returns (sent, seconds,
/// CPU seconds of the sending thread).
fn replay(ns: &str, rate: u64, total: u64) -> (u64, f64, f64) {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        let sender = Sender::open("b0").expect("sender on b0");
        let f = frame();
        let start = Instant::now();
        let cpu_before = cpu_secs(libc::RUSAGE_THREAD);
        let mut sent = 0u64;
        while sent < total {
            let batch = (total - sent).min(64) as usize;
            sent += sender.send_copies(&f, batch).expect("sendmmsg") as u64;
            if rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                let elapsed = start.elapsed();
                if due > elapsed + Duration::from_micros(200) {
                    std::thread::sleep(due - elapsed);
                }
            }
        }
        (
            sent,
            start.elapsed().as_secs_f64(),
            cpu_secs(libc::RUSAGE_THREAD) - cpu_before,
        )
    })
    .join()
    .expect("sender thread")
}

/// (sent, seconds, counted, kernel drops, consumer CPU seconds)
type Run = (u64, f64, u64, u64, f64);

fn inspector_run(ns: &str, rate: u64, total: u64) -> Run {
    let exp = Expectation {
        ports: vec![PortExpect {
            port: "bench".into(),
            interface: "b1".into(),
            untagged: None,
            vlans: vec![(
                100,
                EndRef {
                    vxc: "vxc-bench".into(),
                    side: Side::A,
                },
            )],
        }],
    };
    let ns_name = ns.to_string();
    let inspector = std::thread::spawn(move || {
        enter(&ns_name);
        Inspector::start(InspectConfig::default(), exp).expect("inspector")
    })
    .join()
    .expect("start thread");
    let cpu_before = cpu_secs(libc::RUSAGE_SELF);
    let (sent, secs, sender_cpu) = replay(ns, rate, total);
    let count = |i: &Inspector| {
        let v = i.snapshot();
        let p = &v.ports[0];
        (
            p.ends[0].rx_frames + p.violations.iter().map(|v| v.count).sum::<u64>(),
            p.kernel_drops,
        )
    };
    // Drain: until everything is counted or the count stops moving for 300 ms.
    let mut last = (u64::MAX, 0);
    let mut still = Instant::now();
    loop {
        let now = count(&inspector);
        if now.0 >= sent {
            last = now;
            break;
        }
        if now != last {
            last = now;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_millis(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The process's CPU minus the sender thread's: the capture thread (plus this loop).
    let consumer_cpu = cpu_secs(libc::RUSAGE_SELF) - cpu_before - sender_cpu;
    drop(inspector);
    (sent, secs, last.0, last.1, consumer_cpu)
}

// The child is reaped with wait4 (for its CPU time), which clippy does not recognise.
#[allow(clippy::zombie_processes)]
fn tcpdump_run(ns: &str, rate: u64, total: u64) -> Run {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "tcpdump",
            "-i",
            "b1",
            "-w",
            "/dev/null",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (is it installed?)");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = err.read_line(&mut line).expect("tcpdump stderr");
        assert!(n > 0, "tcpdump ended before listening");
        if line.contains("listening on") {
            break;
        }
    }
    let (sent, secs, _) = replay(ns, rate, total);
    // libpcap hands a partly filled ring block over after its 1000 ms timeout; wait longer
    // than that so tcpdump has read everything the kernel queued before SIGINT.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signals our own child (ip netns exec execs tcpdump in place).
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    // SAFETY: plain data, zero is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    // SAFETY: waits for our own child; `status` and `ru` are writable.
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let tcpdump_cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
    let number = |what: &str| {
        rest.lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no '{what}' in tcpdump's output: {rest}"))
    };
    (
        sent,
        secs,
        number("packets captured"),
        number("dropped by kernel"),
        tcpdump_cpu,
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only on
    // request.
    if !std::env::args().any(|a| a == "--bench") {
        println!("inspector benchmark: run with `cargo bench --bench inspector` (root)");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the benchmark needs root (namespaces)"
    );
    let secs: f64 = std::env::var("VXCD_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let rates: Vec<u64> = std::env::var("VXCD_BENCH_RATES")
        .unwrap_or_else(|_| "100000,200000,400000,800000,0".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let ns = Ns(format!("vxbench-{}", std::process::id()));
    sh(&["ip", "netns", "add", &ns.0]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.0,
        "sysctl",
        "-qw",
        "net.ipv6.conf.default.disable_ipv6=1",
    ]);
    sh(&[
        "ip", "-n", &ns.0, "link", "add", "b0", "type", "veth", "peer", "name", "b1",
    ]);
    sh(&["ip", "-n", &ns.0, "link", "set", "b0", "up"]);
    sh(&["ip", "-n", &ns.0, "link", "set", "b1", "up"]);

    println!("64-byte frames (802.1Q tag 100) over veth, {secs} s per rate; inspector: TPACKET_V3, snap 128, 4 MiB ring; tcpdump -w /dev/null (defaults)");
    println!(
        "{:>10} | {:>10} {:>10} {:>8} {:>6} {:>8} | {:>10} {:>10} {:>8} {:>6} {:>8}",
        "offered",
        "sent/s",
        "inspected",
        "drops",
        "ok",
        "ns/frame",
        "sent/s",
        "tcpdump",
        "drops",
        "ok",
        "ns/frame"
    );
    let mut best = (0u64, 0u64);
    for rate in rates {
        let total = if rate == 0 {
            (1_500_000.0 * secs) as u64
        } else {
            (rate as f64 * secs) as u64
        };
        let (i_sent, i_secs, i_seen, i_drops, i_cpu) = inspector_run(&ns.0, rate, total);
        let (t_sent, t_secs, t_seen, t_drops, t_cpu) = tcpdump_run(&ns.0, rate, total);
        let i_ok = i_seen == i_sent && i_drops == 0;
        let t_ok = t_seen == t_sent && t_drops == 0;
        let i_pps = i_sent as f64 / i_secs;
        let t_pps = t_sent as f64 / t_secs;
        if i_ok {
            best.0 = best.0.max(i_pps as u64);
        }
        if t_ok {
            best.1 = best.1.max(t_pps as u64);
        }
        println!(
            "{:>10} | {:>10.0} {:>10} {:>8} {:>6} {:>8.0} | {:>10.0} {:>10} {:>8} {:>6} {:>8.0}",
            if rate == 0 {
                "max".to_string()
            } else {
                rate.to_string()
            },
            i_pps,
            i_seen,
            i_drops,
            if i_ok { "yes" } else { "LOSS" },
            i_cpu * 1e9 / i_sent.max(1) as f64,
            t_pps,
            t_seen,
            t_drops,
            if t_ok { "yes" } else { "LOSS" },
            t_cpu * 1e9 / t_sent.max(1) as f64,
        );
    }
    println!(
        "highest rate kept up without loss: inspector {} frames/s, tcpdump {} frames/s",
        best.0, best.1
    );
    println!("ns/frame: consumer CPU (user+sys) per frame sent; the kernel's copy into the ring is mostly charged to the sender");
}

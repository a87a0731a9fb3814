//! Host tier: how the daemon starts and stops. A start that is going to be refused touches no
//! kernel object; signals that would kill a process by default either stop it cleanly (socket
//! removed) or are logged and ignored.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{config_text, ok, Daemon};
use common::{veth_local, Netns};
use serde_json::json;

fn signal(d: &Daemon, name: &str) {
    let pid = d.child.as_ref().expect("daemon running").id();
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Waits (bounded) for the daemon to exit and returns its exit code.
fn wait_exit(d: &mut Daemon) -> Option<i32> {
    let mut child = d.child.take().expect("daemon running");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        assert!(Instant::now() < deadline, "daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start(ns: &Netns) -> Daemon {
    Daemon::start(ns, &[("mel-1", "nope1"), ("mel-2", "nope2")], "")
}

#[test]
fn sighup_usr1_and_usr2_are_logged_and_ignored() {
    let ns = Netns::new("sg");
    let d = start(&ns);
    for name in ["HUP", "USR1", "USR2"] {
        signal(&d, name);
        // The answer comes after the signal was handled: signals are delivered before the
        // daemon reads the next request only if it survived them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.log().contains(&format!("SIG{name}:")) {
            assert!(
                Instant::now() < deadline,
                "SIG{name} not logged:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ok(d.call(json!({"op": "hello"})));
    }
    assert!(d.log().contains("SIGHUP: config reload"), "{}", d.log());
}

#[test]
fn stopping_signals_end_the_daemon_cleanly_and_remove_the_socket() {
    let ns = Netns::new("sq");
    for name in ["QUIT", "TERM", "INT", "ALRM", "PWR"] {
        let mut d = start(&ns);
        ok(d.call(
            json!({"op": "key.put", "key": {"key": format!("k-{name}"), "port": "mel-2",
            "single_use": false, "max_speed_mbps": 10}}),
        ));
        signal(&d, name);
        assert_eq!(wait_exit(&mut d), Some(0), "SIG{name}:\n{}", d.log());
        assert!(
            !d.socket.exists(),
            "SIG{name} left the socket behind:\n{}",
            d.log()
        );
        d.restart();
        assert_eq!(
            ok(d.call(json!({"op": "key.get", "key": format!("k-{name}")})))["key"]
                ["max_speed_mbps"],
            json!(10)
        );
    }
}

#[test]
fn a_refused_second_start_leaves_the_kernel_untouched() {
    let ns = Netns::new("s2");
    veth_local(&ns, "own0", "own0x");
    // A link that looks vxcd's own (owner group and alias) and belongs to no VXC: any converge
    // of a daemon that repairs would remove it as an orphan.
    ns.ip(&[
        "link",
        "set",
        "own0",
        "group",
        "30819",
        "alias",
        "vxcd:ghost:a",
    ]);
    let first = Daemon::start(&ns, &[("mel-1", "nope1")], "[reconcile]\nrepair = false\n");
    // The second: its own state directory, the first one's socket, and repair on.
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), &[("mel-1", "nope1")], "").replace(
        &dir.path().join("control.sock").display().to_string(),
        &first.socket.display().to_string(),
    );
    let config = dir.path().join("second.toml");
    std::fs::write(&config, text).expect("config");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_vxcd")])
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("second vxcd");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second vxcd started:\n{log}");
    assert!(log.contains("in use by a running daemon"), "{log}");
    let link = ns.ip(&["-d", "link", "show", "own0"]);
    assert!(link.contains("alias vxcd:ghost:a"), "{link}\n{log}");
    ok(first.call(json!({"op": "hello"})));
}

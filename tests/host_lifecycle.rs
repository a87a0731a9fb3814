//! Host tier: how the daemon starts and stops. A start that is going to be refused touches no
//! kernel object; signals that would kill a process by default either stop it cleanly (socket
//! removed) or are logged and ignored.

mod common;

use std::os::unix::process::CommandExt;
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
fn sigusr1_and_usr2_are_logged_and_ignored_and_sighup_reloads() {
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
    assert!(
        d.log().contains("SIGHUP: reloading the configuration"),
        "{}",
        d.log()
    );
    assert!(d.log().contains("SIGUSR1: ignored"), "{}", d.log());
}

/// Waits (bounded) until the daemon's log holds `text` `count` times.
fn wait_log(d: &Daemon, text: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.log().matches(text).count() < count {
        assert!(
            Instant::now() < deadline,
            "no {text:?} (x{count}) in:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn port_names(d: &Daemon) -> Vec<String> {
    ok(d.call(json!({"op": "port.list"})))["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_owned())
        .collect()
}

/// Issue 12 (acceptance 3): SIGHUP re-reads the config: a port added and a writer added take
/// effect in the same process; a config that does not load is refused and the running one
/// kept; a port removed leaves its key listed; what only a restart changes is named.
#[test]
fn sighup_reloads_ports_and_writers_and_a_bad_config_keeps_the_old_one() {
    let ns = Netns::new("rl");
    let d = Daemon::start(&ns, &[("mel-1", "nope1")], "");
    let pid = d.child.as_ref().expect("daemon running").id();
    assert_eq!(port_names(&d), ["mel-1"]);
    let reloaded = "configuration reloaded";
    // A port and a writer added, the reconcile interval changed.
    let text = config_text(d.dir.path(), &[("mel-1", "nope1"), ("mel-2", "nope2")], "").replacen(
        "writers = [\"4242\"]",
        "writers = [\"4242\", \"4243\"]",
        1,
    );
    std::fs::write(&d.config, text).expect("writing config");
    signal(&d, "HUP");
    wait_log(&d, reloaded, 1);
    assert_eq!(port_names(&d), ["mel-1", "mel-2"]);
    assert!(d.log().contains("port mel-2 added on nope2"), "{}", d.log());
    ok(d.call(
        json!({"op": "key.put", "key": {"key": "k-2", "port": "mel-2",
        "single_use": false, "max_speed_mbps": 10}}),
    ));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_writer = Command::new("socat")
        .args(["-", &format!("UNIX-CONNECT:{}", d.socket.display())])
        .uid(4243)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("socat");
    let answer = write_and_read(
        as_writer,
        r#"{"op":"key.put","key":{"key":"k-w","port":"mel-1","single_use":false,"max_speed_mbps":10}}"#,
    );
    assert!(
        answer.contains("\"ok\":true"),
        "uid 4243 is a writer after the reload: {answer}"
    );

    // A config that does not parse: refused, the running one kept.
    std::fs::write(&d.config, "[control\nsocket = ").expect("writing config");
    signal(&d, "HUP");
    wait_log(&d, "reload refused, the running configuration is kept", 1);
    assert_eq!(port_names(&d), ["mel-1", "mel-2"]);
    ok(d.call(json!({"op": "hello"})));

    // The port removed (its key stays), and a restart-only key changed.
    let text = config_text(d.dir.path(), &[("mel-1", "nope1")], "").replacen(
        "mode = \"0666\"",
        "mode = \"0600\"",
        1,
    );
    std::fs::write(&d.config, text).expect("writing config");
    signal(&d, "HUP");
    wait_log(&d, reloaded, 2);
    // mel-2 holds a key, so it is still listed, with no interface: not configured.
    let ports = ok(d.call(json!({"op": "port.list"})))["ports"].clone();
    assert_eq!(ports[1]["name"], json!("mel-2"), "{ports}");
    assert_eq!(ports[1]["interface"], json!(null), "{ports}");
    assert!(d.log().contains("port mel-2 removed"), "{}", d.log());
    assert!(ok(d.call(json!({"op": "key.get", "key": "k-2"})))["key"]["port"] == json!("mel-2"));
    assert!(d.log().contains("control.mode and control.group changed in the file but take effect only at the next restart"), "{}", d.log());
    assert_eq!(
        d.child.as_ref().expect("daemon running").id(),
        pid,
        "the reloads restarted the daemon"
    );
}

fn write_and_read(mut child: std::process::Child, line: &str) -> String {
    use std::io::Write;
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{line}").expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("socat output");
    String::from_utf8_lossy(&out.stdout).into_owned()
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

//! Host tier: the real daemon over its socket, in a namespace of the test's own, on this
//! machine's kernel (no 802.1Q: VXCs either fail with the clear dataplane error, or stay pending
//! on ports whose interface does not exist).

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::daemon::{self, err, ok, Daemon};
use common::{veth_local, Netns};
use serde_json::{json, Value};

fn single_use_key(id: &str, port: &str, vlan: u16) -> Value {
    json!({"op": "key.put", "key": {"key": id, "port": port, "single_use": true,
        "max_speed_mbps": 1000, "vlan": vlan, "description": "test"}})
}

fn multi_use_key(id: &str, port: &str) -> Value {
    json!({"op": "key.put", "key": {"key": id, "port": port, "single_use": false, "max_speed_mbps": 500}})
}

fn vxc(id: &str, key: &str, a_port: &str, a_vlan: Option<u16>) -> Value {
    let mut a_end = json!({"port": a_port});
    if let Some(v) = a_vlan {
        a_end["vlan"] = json!(v);
    }
    json!({"op": "vxc.put", "vxc": {"id": id, "name": format!("vxc {id}"), "service_key": key,
        "rate_mbps": 100, "a_end": a_end}})
}

/// A daemon whose two ports have real (veth) interfaces.
fn with_present_ports() -> (Netns, Daemon) {
    let ns = Netns::new("hd");
    // The test's own "customer" ends (p1x, p2x) must send nothing of their own (MLD, router
    // solicitations) that the inspector would count next to the frames a test injects.
    assert!(ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]));
    veth_local(&ns, "p1", "p1x");
    veth_local(&ns, "p2", "p2x");
    let d = Daemon::start(&ns, &[("syd-1", "p1"), ("syd-2", "p2")], "");
    (ns, d)
}

/// A daemon whose ports name interfaces that do not exist (VXCs stay pending).
fn with_absent_ports(ns: &Netns) -> Daemon {
    Daemon::start(ns, &[("mel-1", "nope1"), ("mel-2", "nope2")], "")
}

#[test]
fn read_operations_answer() {
    let (ns, d) = with_present_ports();
    let hello = ok(d.call(json!({"id": 1, "op": "hello"})));
    assert_eq!(hello["protocol"], json!(1));
    assert_eq!(hello["version"], json!(env!("CARGO_PKG_VERSION")));
    let status = ok(d.call(json!({"op": "status"})));
    assert_eq!(status["ports"], json!(2));
    assert_eq!(status["keys"], json!(0));
    assert_eq!(status["vxcs"], json!(0));
    // What the daemon reports must match what this kernel does with a VLAN link.
    let kernel_makes_vlans = ns.ip_ok(&[
        "link", "add", "link", "p1", "name", "p1.9", "type", "vlan", "id", "9",
    ]);
    if kernel_makes_vlans {
        ns.ip(&["link", "del", "p1.9"]);
    }
    assert_eq!(
        status["kernel"]["vlan_8021q"],
        json!(kernel_makes_vlans),
        "{status}"
    );
    assert!(status["last_reconcile"].is_string(), "{status}");
    let ports = ok(d.call(json!({"op": "port.list"})));
    assert_eq!(
        ports["ports"][0],
        json!({"name": "syd-1", "interface": "p1", "present": true, "host_ipv6_off": true, "vlans": [],
               "untagged_vxc": null, "accepting": true})
    );
    assert_eq!(ok(d.call(json!({"op": "key.list"})))["keys"], json!([]));
    assert_eq!(ok(d.call(json!({"op": "vxc.list"})))["vxcs"], json!([]));
    let answer = d.call(json!({"id": "x", "op": "vxc.get", "vxc": 1}));
    assert_eq!(answer["id"], json!("x"));
    err(answer, "bad_request");
}

#[test]
fn keys_over_the_socket() {
    let (_ns, d) = with_present_ports();
    let key = ok(d.call(single_use_key("k-1", "syd-2", 100)))["key"].clone();
    assert_eq!(key["redeemable"], json!(true));
    assert_eq!(key["reason"], json!(null));
    assert_eq!(key["used_by"], json!([]));
    assert_eq!(key["vlan"], json!(100));
    // Identical put: no-op success.
    assert_eq!(ok(d.call(single_use_key("k-1", "syd-2", 100)))["key"], key);
    // Immutable field.
    let e = err(
        d.call(single_use_key("k-1", "syd-2", 101)),
        "immutable_field",
    );
    assert_eq!(e["field"], json!("vlan"));
    // The reserved VLAN is taken for other keys, and named.
    let e = err(d.call(single_use_key("k-2", "syd-2", 100)), "vlan_in_use");
    assert_eq!(e["held_by"], json!("k-1"));
    assert_eq!(e["next_available"], json!(101));
    assert!(e["message"].as_str().unwrap().contains("port syd-2"), "{e}");
    // Deactivate, see the reason, delete is refused.
    let mut inactive = single_use_key("k-1", "syd-2", 100);
    inactive["key"]["active"] = json!(false);
    let key = ok(d.call(inactive))["key"].clone();
    assert_eq!(key["reason"], json!("key_inactive"));
    err(
        d.call(json!({"op": "key.delete", "key": "k-1"})),
        "key_not_removable",
    );
    assert_eq!(
        ok(d.call(json!({"op": "key.get", "key": "k-1"})))["key"],
        key
    );
    err(d.call(json!({"op": "key.get", "key": "nope"})), "not_found");
    let ports = ok(d.call(json!({"op": "port.list"})));
    assert_eq!(ports["ports"][1]["vlans"], json!([100]));
    err(d.call(single_use_key("k-3", "nowhere", 5)), "unknown_port");
}

#[test]
fn tagged_end_on_this_kernel_is_a_clear_dataplane_error_and_changes_nothing() {
    let (ns, d) = with_present_ports();
    let links_before = ns.ip(&["-o", "link", "show"]);
    let qdiscs_before = ns.tc(&["qdisc", "show"]);
    ok(d.call(single_use_key("k-1", "syd-2", 100)));
    let e = err(d.call(vxc("v-1", "k-1", "syd-1", Some(200))), "dataplane");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("802.1Q"), "{message}");
    // Nothing stored, nothing left in the kernel, the key still redeemable.
    assert_eq!(ok(d.call(json!({"op": "vxc.list"})))["vxcs"], json!([]));
    let key = ok(d.call(json!({"op": "key.get", "key": "k-1"})))["key"].clone();
    assert_eq!(key["redeemable"], json!(true), "{key}");
    assert_eq!(ns.ip(&["-o", "link", "show"]), links_before);
    assert_eq!(ns.tc(&["qdisc", "show"]), qdiscs_before);
    // The plan still answers: it is the order summary, not the kernel.
    let planned =
        ok(d.call(json!({"op": "vxc.plan", "vxc": vxc("v-1", "k-1", "syd-1", Some(200))["vxc"]})));
    assert_eq!(planned["vxc"]["state"], json!("planned"));
    assert_eq!(planned["vxc"]["a_end"]["interface"], json!("p1.200"));
    assert_eq!(planned["vxc"]["b_end"]["vlan"], json!(100));
}

#[test]
fn vxc_on_absent_port_is_pending_and_survives_sigterm_and_restart() {
    let ns = Netns::new("pend");
    let mut d = with_absent_ports(&ns);
    ok(d.call(single_use_key("k-1", "mel-2", 100)));
    let v = ok(d.call(vxc("v-1", "k-1", "mel-1", Some(200))))["vxc"].clone();
    assert_eq!(v["state"], json!("pending"), "{v}");
    assert_eq!(
        v["a_end"],
        json!({"port": "mel-1", "vlan": 200, "untagged": false, "interface": "nope1.200",
            "host": null})
    );
    assert_eq!(
        v["b_end"],
        json!({"port": "mel-2", "vlan": 100, "interface": "nope2.100", "host": null})
    );
    // Rate change on a pending VXC, then an identical put.
    let mut faster = vxc("v-1", "k-1", "mel-1", Some(200));
    faster["vxc"]["rate_mbps"] = json!(300);
    assert_eq!(ok(d.call(faster.clone()))["vxc"]["rate_mbps"], json!(300));
    let e = err(
        d.call(
            json!({"op": "vxc.put", "vxc": {"id": "v-1", "name": "vxc v-1",
        "service_key": "k-1", "rate_mbps": 2000, "a_end": {"port": "mel-1"}}}),
        ),
        "rate_exceeds_key",
    );
    assert_eq!(e["max_speed_mbps"], json!(1000));
    // A multi-use key on the other port, two VXCs with assigned VLANs.
    ok(d.call(multi_use_key("m-1", "mel-2")));
    let v2 = ok(d.call(vxc("v-2", "m-1", "mel-1", None)))["vxc"].clone();
    assert_eq!(v2["a_end"]["vlan"], json!(2));
    assert_eq!(v2["b_end"]["vlan"], json!(2));
    // Outside journald the log goes to stderr with the structured fields as key=value.
    let log = d.log();
    let created = log
        .lines()
        .find(|l| l.contains("VXC v-1 created"))
        .unwrap_or_else(|| panic!("no creation line in the log:\n{log}"));
    for field in [
        "vxc=v-1",
        "key=k-1",
        "a_port=mel-1",
        "a_vlan=200",
        "b_port=mel-2",
        "b_vlan=100",
    ] {
        assert!(created.contains(field), "{field} missing from {created:?}");
    }
    assert_eq!(d.terminate(), Some(0), "SIGTERM exits 0; log:\n{}", d.log());
    assert!(!d.socket.exists(), "the socket is removed on exit");
    d.restart();
    let after = ok(d.call(json!({"op": "vxc.get", "id": "v-1"})))["vxc"].clone();
    assert_eq!(after["rate_mbps"], json!(300));
    assert_eq!(after["created_at"], v["created_at"]);
    let key = ok(d.call(json!({"op": "key.get", "key": "k-1"})))["key"].clone();
    assert_eq!(key["reason"], json!("key_used"));
    assert_eq!(key["used_by"], json!(["v-1"]));
    // Delete frees the VLANs; the single-use key stays used.
    assert_eq!(
        ok(d.call(json!({"op": "vxc.delete", "id": "v-1"})))["deleted"],
        json!("v-1")
    );
    let key = ok(d.call(json!({"op": "key.get", "key": "k-1"})))["key"].clone();
    assert_eq!(key["reason"], json!("key_used"));
    assert_eq!(key["used_by"], json!([]));
    let ports = ok(d.call(json!({"op": "port.list"})));
    assert_eq!(ports["ports"][0]["vlans"], json!([2]));
    assert_eq!(ports["ports"][1]["vlans"], json!([2]));
    err(
        d.call(json!({"op": "vxc.delete", "id": "v-1"})),
        "not_found",
    );
}

#[test]
fn malformed_lines_get_bad_request_and_the_connection_survives() {
    let (_ns, d) = with_present_ports();
    let mut c = d.client();
    for raw in [
        &b"not json\n"[..],
        b"[1,2]\n",
        b"{\"id\":5,\"op\":\"hello\",\"extra\":true}\n",
        b"{\"op\":\"key.put\",\"key\":{\"key\":\"k\"}}\n",
        b"\xff\xfe\n",
    ] {
        c.send_raw(raw);
        let answer = c.read_answer().expect("an answer");
        err(answer, "bad_request");
    }
    c.send_raw(b"\n\r\n{\"id\":9,\"op\":\"vxc.explode\"}\n");
    let answer = c.read_answer().unwrap();
    assert_eq!(answer["id"], json!(9));
    err(answer, "unknown_op");
    // Several requests in one write are answered in order.
    c.send_raw(b"{\"id\":1,\"op\":\"hello\"}\n{\"id\":2,\"op\":\"status\"}\n");
    assert_eq!(c.read_answer().unwrap()["id"], json!(1));
    assert_eq!(c.read_answer().unwrap()["id"], json!(2));
}

#[test]
fn a_line_over_one_mebibyte_is_too_large_and_closes_the_connection() {
    let (_ns, d) = with_present_ports();
    let mut c = d.client();
    let mut big = b"{\"op\":\"hello\",\"pad\":\"".to_vec();
    big.resize((1 << 20) + 10, b'a');
    big.extend_from_slice(b"\"}\n");
    c.send_raw(&big);
    err(
        c.read_answer().expect("an answer before closing"),
        "too_large",
    );
    assert!(
        c.read_answer().is_none(),
        "the connection is closed after too_large"
    );
    // A line of exactly the limit is still read (and refused only for its content).
    let mut c = d.client();
    let mut edge = b"{\"op\":\"hello\",\"pad\":\"".to_vec();
    edge.resize((1 << 20) - 2, b'a');
    edge.extend_from_slice(b"\"}\n");
    c.send_raw(&edge);
    err(c.read_answer().unwrap(), "bad_request");
}

/// Sends one request line as another uid, through socat.
fn call_as(uid: u32, socket: &std::path::Path, request: &Value) -> Value {
    let mut child = Command::new("socat")
        .arg("-")
        .arg(format!("UNIX-CONNECT:{}", socket.display()))
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("socat is needed for this test (tests/run.sh installs it)");
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{request}").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "socat as uid {uid}: {e}: {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn changes_need_root_or_a_configured_writer() {
    let (_ns, d) = with_present_ports();
    // The test daemon's socket lives in a private temp dir; let other uids reach it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = 4243;
    let e = err(
        call_as(nobody, &d.socket, &multi_use_key("m-1", "syd-1")),
        "unauthorized",
    );
    assert!(e["message"].as_str().unwrap().contains("uid 4243"), "{e}");
    ok(call_as(nobody, &d.socket, &json!({"op": "status"})));
    ok(call_as(nobody, &d.socket, &json!({"op": "key.list"})));
    assert_eq!(ok(d.call(json!({"op": "status"})))["keys"], json!(0));
    // uid 4242 is in `writers`.
    ok(call_as(4242, &d.socket, &multi_use_key("m-1", "syd-1")));
    assert_eq!(ok(d.call(json!({"op": "status"})))["keys"], json!(1));
}

/// Issue 11, audit: every change and every refused change is logged with the caller's uid, the
/// op, the object and the outcome (journald fields UID, OP, OBJECT, OUTCOME; `key=value` on
/// stderr); a reader's refused attempts at a bounded rate.
#[test]
fn every_change_and_refusal_is_audited_with_uid_op_and_outcome() {
    let (_ns, d) = with_present_ports();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(call_as(4242, &d.socket, &multi_use_key("m-1", "syd-1")));
    let mut bad = multi_use_key("m-2", "syd-1");
    bad["key"]["max_speed_mbps"] = json!(0);
    err(d.call(bad), "rate_invalid");
    err(
        d.call(json!({"op": "vxc.delete", "id": "v-404"})),
        "not_found",
    );
    for _ in 0..20 {
        err(
            call_as(4243, &d.socket, &multi_use_key("m-3", "syd-1")),
            "unauthorized",
        );
    }
    ok(d.call(json!({"op": "key.list"})));
    let log = d.log();
    for line in [
        "uid 4242: key.put key m-1: ok uid=4242 op=key.put object=key m-1 outcome=ok",
        "uid 0: key.put key m-2: refused, rate_invalid",
        "uid=0 op=key.put object=key m-2 outcome=rate_invalid",
        "uid 0: vxc.delete VXC v-404: refused, not_found",
        "uid 4243: key.put key m-3: refused, unauthorized uid=4243 op=key.put object=key m-3 outcome=unauthorized",
    ] {
        assert!(log.contains(line), "no audit line {line:?} in:\n{log}");
    }
    let refusals = log.matches("uid 4243: key.put").count();
    assert_eq!(
        refusals, 1,
        "20 refused attempts in a burst must log once:\n{log}"
    );
    assert!(!log.contains("key.list"), "reads are not audited:\n{log}");
}

#[test]
fn many_concurrent_clients_each_get_their_own_answers_in_order() {
    let (_ns, d) = with_present_ports();
    let socket = d.socket.clone();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = daemon::Client::connect(&socket);
                for i in 0..40 {
                    let request = if i % 2 == 0 {
                        let mut r = multi_use_key(&format!("k-{t}-{i}"), "syd-1");
                        r["id"] = json!(format!("{t}/{i}"));
                        r
                    } else {
                        json!({"id": format!("{t}/{i}"), "op": "key.list"})
                    };
                    let answer = c.call(request);
                    assert_eq!(answer["id"], json!(format!("{t}/{i}")));
                    assert_eq!(answer["ok"], json!(true), "{answer}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert_eq!(ok(d.call(json!({"op": "status"})))["keys"], json!(16 * 20));
}

#[test]
fn kill_9_during_a_burst_loses_nothing_acknowledged() {
    let ns = Netns::new("k9");
    let mut d = with_absent_ports(&ns);
    let socket = d.socket.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        let mut c = daemon::Client::connect(&socket);
        let mut acked = Vec::new();
        for i in 0..100_000 {
            let id = format!("m-{i}");
            // Any answer but success (the daemon died) ends the burst.
            match c.try_call(multi_use_key(&id, "mel-2")) {
                Some(answer) if answer["ok"] == json!(true) => acked.push(id),
                _ => break,
            }
            if acked.len() == 50 {
                let _ = tx.send(());
            }
        }
        acked
    });
    rx.recv().expect("50 acknowledged keys");
    d.kill9();
    let acked = writer.join().expect("writer thread");
    assert!(acked.len() >= 50);
    d.restart();
    let keys = ok(d.call(json!({"op": "key.list"})))["keys"].clone();
    let stored: std::collections::HashSet<String> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_owned())
        .collect();
    for id in &acked {
        assert!(
            stored.contains(id),
            "acknowledged key {id} lost after kill -9"
        );
    }
    // At most the one request in flight at the kill may have landed unacknowledged.
    assert!(
        stored.len() <= acked.len() + 1,
        "{} stored, {} acknowledged",
        stored.len(),
        acked.len()
    );
}

#[test]
fn a_bad_config_stops_the_daemon_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[control]\nsocket = \"/tmp/x\"\n[reconcile]\nrepairs = false\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vxcd"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(stderr.contains("repairs"), "{stderr}");
}

/// Runs the real vxcctl against the daemon; returns (exit code, stdout, stderr).
fn vxcctl(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vxcctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .output()
        .expect("running vxcctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn vxcctl_against_the_running_daemon() {
    let ns = Netns::new("cli");
    veth_local(&ns, "p1", "p1x");
    veth_local(&ns, "p2", "p2x");
    let d = Daemon::start(
        &ns,
        &[("syd-1", "p1"), ("syd-2", "p2"), ("mel-2", "nope2")],
        "",
    );
    let (code, out, err) = vxcctl(
        &d,
        &[
            "key",
            "put",
            "--key",
            "k-1",
            "--port",
            "syd-2",
            "--max-speed",
            "1000",
            "--single-use",
            "--vlan",
            "100",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = vxcctl(
        &d,
        &[
            "vxc", "put", "--id", "v-1", "--name", "acme", "--key", "k-1", "--rate", "100",
            "--a-port", "syd-1", "--a-vlan", "200",
        ],
    );
    // syd-1 exists but has no 802.1Q here: refused by the kernel, exit 1 with the code on stderr.
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("dataplane") && err.contains("802.1Q"), "{err}");
    // A-End on the absent port: pending, shown in the table.
    let (code, out, err) = vxcctl(
        &d,
        &[
            "key",
            "put",
            "--key",
            "m-1",
            "--port",
            "syd-1",
            "--max-speed",
            "500",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = vxcctl(
        &d,
        &[
            "vxc", "put", "--id", "v-2", "--name", "beta", "--key", "k-1", "--rate", "100",
            "--a-port", "mel-2", "--a-vlan", "300",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = vxcctl(&d, &["vxcs"]);
    assert_eq!(code, 0);
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("STATE"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("v-2"))
        .expect("a row for v-2");
    assert!(
        row.contains("pending") && row.contains("mel-2/300 (nope2.300)"),
        "{out}"
    );
    let (code, out, _) = vxcctl(&d, &["--json", "vxc", "show", "v-2"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(shown["vxc"]["b_end"]["vlan"], json!(100));
    let (code, out, _) = vxcctl(&d, &["ports"]);
    assert_eq!(code, 0);
    let syd = out.lines().find(|l| l.starts_with("syd-1")).unwrap();
    assert!(syd.contains("yes"), "syd-1's interface is present: {out}");
    let mel = out.lines().find(|l| l.starts_with("mel-2")).unwrap();
    assert!(mel.contains(" no ") && mel.contains("300"), "{out}");
    let (code, out, _) = vxcctl(&d, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("vxcs") && out.contains("1"), "{out}");
    let (code, _, err) = vxcctl(&d, &["vxc", "delete", "v-9"]);
    assert_eq!(code, 1);
    assert!(err.contains("not_found") && err.contains("v-9"), "{err}");
    let (code, out, _) = vxcctl(&d, &["vxc", "delete", "v-2"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = vxcctl(&d, &["--json", "keys"]);
    assert_eq!(code, 0);
    let keys: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(keys["keys"][0]["reason"], json!("key_used"));
}

/// An Ethernet frame (UDP in IPv4), tagged with `vlan` or untagged.
fn frame(vlan: Option<u16>) -> Vec<u8> {
    use etherparse::{PacketBuilder, VlanId};
    let ethernet = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 1], [0x02, 0, 0, 0, 0, 2]);
    let ip = match vlan {
        Some(v) => {
            ethernet
                .single_vlan(VlanId::try_new(v).unwrap())
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        }
        None => ethernet.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64),
    };
    let mut out = Vec::new();
    ip.udp(1000, 2000).write(&mut out, &[0u8; 18]).unwrap();
    out
}

#[test]
fn inspect_reports_violations_from_the_wire_and_verify_needs_a_writer() {
    let (ns, d) = with_present_ports();
    // Key on syd-2 reserves VLAN 100 there; syd-1 carries nothing yet.
    ok(d.call(single_use_key("k-1", "syd-2", 100)));
    let view = ok(d.call(json!({"op": "inspect"})));
    assert_eq!(view["enabled"], json!(true));
    let ports = view["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 2, "{view}");
    assert!(
        ports.iter().all(|p| p["capturing"] == json!(true)),
        "{view}"
    );
    // The "customer" side of syd-1 (p1x, the veth peer) sends 3 frames tagged 77 and 2 untagged.
    ns.run(|| {
        let sender = vxcd::inspector::ring::Sender::open("p1x").expect("packet socket on p1x");
        sender
            .send_copies(&frame(Some(77)), 3)
            .expect("sending tagged frames");
        sender
            .send_copies(&frame(None), 2)
            .expect("sending untagged frames");
    });
    let mut found = None;
    for _ in 0..100 {
        let view = ok(d.call(json!({"op": "inspect"})));
        let syd1 = view["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == json!("syd-1"))
            .cloned()
            .unwrap();
        let violations = syd1["violations"].as_array().cloned().unwrap_or_default();
        let count = |kind: &str| {
            violations
                .iter()
                .filter(|v| v["kind"] == json!(kind) && v["direction"] == json!("rx"))
                .map(|v| v["count"].as_u64().unwrap())
                .sum::<u64>()
        };
        if count("unknown_vlan") >= 3 && count("untagged_on_tagged_port") >= 2 {
            found = Some(violations);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let violations = found.unwrap_or_else(|| panic!("violations never showed; log:\n{}", d.log()));
    let unknown = violations
        .iter()
        .find(|v| v["kind"] == json!("unknown_vlan"))
        .unwrap();
    assert_eq!(unknown["vlan"], json!(77));
    assert_eq!(unknown["count"], json!(3));
    let untagged = violations
        .iter()
        .find(|v| v["kind"] == json!("untagged_on_tagged_port"))
        .unwrap();
    assert_eq!(untagged["vlan"], json!(null));
    assert_eq!(untagged["count"], json!(2));
    let status = ok(d.call(json!({"op": "status"})));
    assert!(
        status["inspector"]["violations"].as_u64().unwrap() >= 5,
        "{status}"
    );
    assert_eq!(
        status["inspector"]["egress_violations"],
        json!(0),
        "{status}"
    );
    // verify sends probes into customer ports: writers only; an unknown VXC is not_found.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    err(
        call_as(4243, &d.socket, &json!({"op": "verify", "id": "v-1"})),
        "unauthorized",
    );
    err(d.call(json!({"op": "verify", "id": "v-1"})), "not_found");
    let all = ok(d.call(json!({"op": "verify"})));
    assert_eq!(all, json!({"pass": true, "results": []}));
}

#[test]
fn error_codes_for_malformed_ids_and_out_of_range_numbers() {
    let ns = Netns::new("ec");
    let d = with_absent_ports(&ns);
    for (op, field) in [
        ("key.get", "key"),
        ("vxc.get", "id"),
        ("vxc.delete", "id"),
        ("verify", "id"),
    ] {
        err(
            d.call(json!({"op": op, field: "no/such id"})),
            "bad_request",
        );
        err(d.call(json!({"op": op, field: "well-formed"})), "not_found");
    }
    for huge in [json!(1e30), json!(-1e30), json!(18446744073709551615u64)] {
        err(
            d.call(
                json!({"op": "key.put", "key": {"key": "k-huge", "port": "mel-2",
                "single_use": false, "max_speed_mbps": huge}}),
            ),
            "rate_invalid",
        );
        err(
            d.call(
                json!({"op": "key.put", "key": {"key": "k-huge", "port": "mel-2",
                "single_use": true, "max_speed_mbps": 100, "vlan": huge}}),
            ),
            "vlan_invalid",
        );
    }
    ok(d.call(multi_use_key("k-ok", "mel-2")));
    for huge in [json!(1e30), json!(-5)] {
        err(
            d.call(json!({"op": "vxc.put", "vxc": {"id": "v-huge", "name": "n",
            "service_key": "k-ok", "rate_mbps": huge, "a_end": {"port": "mel-1"}}})),
            "rate_invalid",
        );
        err(
            d.call(json!({"op": "vxc.put", "vxc": {"id": "v-huge", "name": "n",
            "service_key": "k-ok", "rate_mbps": 10, "a_end": {"port": "mel-1", "vlan": huge}}})),
            "vlan_invalid",
        );
    }
    // Nothing of the refused requests was stored.
    assert_eq!(ok(d.call(json!({"op": "status"})))["keys"], json!(1));
    assert_eq!(ok(d.call(json!({"op": "status"})))["vxcs"], json!(0));
}

/// tcpdump in `ns` on `interface` (frames arriving there only), started and listening.
fn tcpdump_in(ns: &Netns, interface: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "tcpdump", "-i", interface])
        .args(["-Q", "in", "-n", "-e", "-l"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let stderr = child.stderr.take().expect("stderr");
    for line in std::io::BufReader::new(stderr).lines() {
        if line.expect("tcpdump stderr").contains("listening on") {
            return child;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tcpdump on {interface} never started listening");
}

#[test]
fn a_managed_port_carries_nothing_of_the_hosts_own() {
    let edge = Netns::new("q6");
    let customer = Netns::new("q6c");
    for ns in [&edge, &customer] {
        assert!(ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"]));
        assert!(ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0"]));
    }
    common::veth(&edge, "p1", &customer, "c1");
    common::veth(&edge, "p2", &customer, "c2");
    // An interface of the host's that is no port: its IPv6 is not vxcd's business.
    common::veth(&edge, "u1", &customer, "cu1");
    // The host's IPv6 is there before vxcd starts: a link-local address on each interface.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for dev in ["p1", "p2", "u1"] {
        while !edge
            .ip(&["-6", "addr", "show", "dev", dev])
            .contains("fe80")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no link-local on {dev}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let d = Daemon::start(&edge, &[("syd-1", "p1"), ("syd-2", "p2")], "");
    for dev in ["p1", "p2"] {
        let addrs = edge.ip(&["-6", "addr", "show", "dev", dev]);
        assert!(
            !addrs.contains("fe80"),
            "link-local left on port {dev}:\n{addrs}\n{}",
            d.log()
        );
        assert!(edge
            .ip(&["-d", "link", "show", dev])
            .contains("addrgenmode none"));
    }
    let other = edge.ip(&["-6", "addr", "show", "dev", "u1"]);
    assert!(
        other.contains("fe80"),
        "u1 is no port, its link-local was removed:\n{other}"
    );
    assert!(!edge
        .ip(&["-d", "link", "show", "u1"])
        .contains("addrgenmode none"));
    let ports = ok(d.call(json!({"op": "port.list"})))["ports"].clone();
    assert_eq!(ports[0]["host_ipv6_off"], json!(true), "{ports}");
    assert_eq!(ports[1]["host_ipv6_off"], json!(true), "{ports}");
    // A flap makes a host with IPv6 send MLD reports, DAD and router solicitations within a
    // second or two; a port vxcd manages sends none of them. (The window is an observation
    // period, not a timing assertion: any frame in it fails the test.)
    let mut capture = tcpdump_in(&customer, "c1");
    edge.ip(&["link", "set", "p1", "down"]);
    edge.ip(&["link", "set", "p1", "up"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let _ = capture.kill();
    let out = capture.wait_with_output().expect("tcpdump output");
    let frames = String::from_utf8_lossy(&out.stdout);
    assert!(
        frames.trim().is_empty(),
        "the host sent to the customer:\n{frames}\n{}",
        d.log()
    );
    assert!(!d.log().contains("own egress"), "{}", d.log());
    ok(d.call(json!({"op": "hello"})));
}

#[test]
fn an_event_overflow_is_resynced_and_later_drift_still_repaired() {
    let ns = Netns::new("ov");
    veth_local(&ns, "p1", "p1x");
    let d = Daemon::start(
        &ns,
        &[("syd-1", "p1")],
        "[reconcile]\nevent_buffer_bytes = 2048\n",
    );
    let pid = d.child.as_ref().expect("running").id().to_string();
    // Stopped, the daemon reads no events while a burst overflows its small event buffer.
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill")
        .success());
    let batch: String = (0..400)
        .map(|i| format!("link set p1x alias burst-{i}\n"))
        .collect();
    let file = d.dir.path().join("burst.batch");
    std::fs::write(&file, batch).expect("batch file");
    ns.ip(&["-batch", &file.display().to_string()]);
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .expect("kill")
        .success());
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "{what}:\n{}", d.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_for("no resync after the overflow", &|| {
        d.log().contains("the kernel dropped events")
    });
    // The event stream lives on: a hand-made drift after the overflow is repaired.
    ns.ip(&["link", "set", "p1", "addrgenmode", "eui64"]);
    wait_for("drift after the overflow not repaired", &|| {
        ns.ip(&["-d", "link", "show", "p1"])
            .contains("addrgenmode none")
    });
    ok(d.call(json!({"op": "hello"})));
}

/// The `vxc` object of a `vxc.put` built by [`vxc`].
fn vxc_body(id: &str, key: &str, a_port: &str, a_vlan: Option<u16>) -> Value {
    vxc(id, key, a_port, a_vlan)["vxc"].clone()
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn vxc_ids(d: &Daemon) -> Vec<String> {
    let list = ok(d.call(json!({"op": "vxc.list"})))["vxcs"].clone();
    let mut ids: Vec<String> = list
        .as_array()
        .expect("vxcs")
        .iter()
        .map(|v| v["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// Issue 11, (6): `sync` converges to exactly the set (VXCs absent are deleted, keys absent are
/// left and listed), the same sync again is all unchanged and writes nothing, a stale
/// generation is refused, a dry run changes nothing, one invalid object refuses the whole sync
/// naming it, and the generation survives a restart. (VXCs stay pending here: this kernel has no
/// 802.1Q; the lab proves the kernel side.)
#[test]
fn sync_converges_to_exactly_the_set_and_refuses_what_breaks_a_rule() {
    let ns = Netns::new("sync");
    let mut d = with_absent_ports(&ns);
    ok(d.call(multi_use_key("k-old", "mel-2")));
    let key = multi_use_key("k-1", "mel-2")["key"].clone();
    let sync = |generation: u64, vxcs: Vec<Value>, dry_run: bool| {
        json!({"op": "sync", "generation": generation, "keys": [key.clone()], "vxcs": vxcs,
            "dry_run": dry_run})
    };
    let first = ok(d.call(sync(
        1,
        vec![
            vxc_body("v-1", "k-1", "mel-1", Some(200)),
            vxc_body("v-2", "k-1", "mel-1", None),
        ],
        false,
    )));
    assert_eq!(ids(&first["keys"]["created"]), ["k-1"], "{first}");
    assert_eq!(ids(&first["keys"]["left"]), ["k-old"], "{first}");
    assert_eq!(ids(&first["vxcs"]["created"]), ["v-1", "v-2"], "{first}");
    assert_eq!(ok(d.call(json!({"op": "status"})))["generation"], json!(1));

    let mut faster = vxc_body("v-2", "k-1", "mel-1", None);
    faster["rate_mbps"] = json!(300);
    let set2 = vec![faster, vxc_body("v-3", "k-1", "mel-1", Some(300))];
    let second = ok(d.call(sync(2, set2.clone(), false)));
    assert_eq!(ids(&second["vxcs"]["created"]), ["v-3"], "{second}");
    assert_eq!(ids(&second["vxcs"]["updated"]), ["v-2"], "{second}");
    assert_eq!(ids(&second["vxcs"]["deleted"]), ["v-1"], "{second}");
    assert_eq!(ids(&second["keys"]["unchanged"]), ["k-1"], "{second}");
    assert_eq!(vxc_ids(&d), ["v-2", "v-3"]);
    // VLAN 200 went with v-1: free again.
    let store_before = ok(d.call(json!({"op": "status"})))["store"]["last_seq"].clone();
    let again = ok(d.call(sync(2, set2.clone(), false)));
    assert_eq!(ids(&again["vxcs"]["unchanged"]), ["v-2", "v-3"], "{again}");
    for kind in ["created", "updated", "deleted"] {
        assert_eq!(ids(&again["vxcs"][kind]), Vec::<String>::new(), "{again}");
    }
    let store_after = ok(d.call(json!({"op": "status"})))["store"]["last_seq"].clone();
    assert_eq!(
        store_before, store_after,
        "the same sync again wrote to the journal"
    );

    let stale = err(d.call(sync(1, set2.clone(), false)), "stale_generation");
    assert!(
        stale["message"]
            .as_str()
            .unwrap_or("")
            .contains("generation 2"),
        "{stale}"
    );
    let dry = ok(d.call(sync(3, vec![], true)));
    assert_eq!(ids(&dry["vxcs"]["deleted"]), ["v-2", "v-3"], "{dry}");
    assert_eq!(dry["dry_run"], json!(true));
    assert_eq!(vxc_ids(&d), ["v-2", "v-3"], "a dry run changed the state");
    let mut broken = vxc_body("v-9", "k-1", "mel-1", None);
    broken["rate_mbps"] = json!(0);
    let refused = err(d.call(sync(3, vec![broken], false)), "rate_invalid");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .contains("VXC v-9"),
        "{refused}"
    );
    assert_eq!(refused["object"], json!("VXC v-9"), "{refused}");
    let taken = err(
        d.call(sync(
            3,
            vec![
                vxc_body("v-3", "k-1", "mel-1", Some(300)),
                vxc_body("v-4", "k-1", "mel-1", Some(300)),
            ],
            false,
        )),
        "vlan_in_use",
    );
    assert_eq!(taken["object"], json!("VXC v-4"), "{taken}");
    assert_eq!(
        vxc_ids(&d),
        ["v-2", "v-3"],
        "a refused sync changed the state"
    );
    assert_eq!(ok(d.call(json!({"op": "status"})))["generation"], json!(2));

    assert_eq!(d.terminate(), Some(0));
    d.restart();
    assert_eq!(ok(d.call(json!({"op": "status"})))["generation"], json!(2));
    err(d.call(sync(1, set2, false)), "stale_generation");
}

/// Issue 11's commands of vxcctl against the daemon: `vxc shutdown` / `vxc enable` change only
/// `shutdown`, `stats` prints a row per end, `watch` prints events as they happen.
#[test]
fn vxcctl_shutdown_enable_stats_and_watch() {
    let ns = Netns::new("ctl11");
    let d = with_absent_ports(&ns);
    ok(d.call(single_use_key("k-1", "mel-2", 100)));
    ok(d.call(vxc("v-1", "k-1", "mel-1", Some(200))));
    let (code, out, err) = vxcctl(&d, &["--json", "vxc", "shutdown", "v-1"]);
    assert_eq!(code, 0, "{out}{err}");
    let shut: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (
            shut["vxc"]["shutdown"].clone(),
            shut["vxc"]["a_end"]["vlan"].clone()
        ),
        (json!(true), json!(200)),
        "{out}"
    );
    let (code, out, _) = vxcctl(&d, &["vxc", "show", "v-1"]);
    assert_eq!(code, 0);
    assert!(out.contains("shutdown") && out.contains("yes"), "{out}");
    let (code, out, err) = vxcctl(&d, &["--json", "vxc", "enable", "v-1"]);
    assert_eq!(code, 0, "{out}{err}");
    let enabled: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(enabled["vxc"]["shutdown"], json!(false), "{out}");
    assert_eq!(enabled["vxc"]["rate_mbps"], json!(100), "{out}");
    let (code, out, err) = vxcctl(&d, &["stats", "v-1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("SHAPER DROPS") && out.contains("nope1.200") && out.contains("nope2.100"),
        "{out}"
    );
    let (code, _, err) = vxcctl(&d, &["stats", "v-404"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not_found"), "{err}");

    let mut watcher = std::process::Command::new(env!("CARGO_BIN_EXE_vxcctl"))
        .args(["--socket", d.socket.to_str().expect("socket path"), "watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("vxcctl watch");
    let stdout = watcher.stdout.take().expect("watch stdout");
    // The watch is in place once the daemon has answered it: its first line comes from the
    // key put below, which is sent until one arrives (bounded).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut line = None;
    for i in 0..50 {
        ok(d.call(multi_use_key(&format!("k-w{i}"), "mel-2")));
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            line = Some(l);
            break;
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    let line = line.expect("vxcctl watch printed no event");
    assert!(
        line.contains("key_stored") && line.contains("key=k-w"),
        "{line}"
    );
}

/// Issue 11, (5): a violation the inspector sees for the first time is a `violation` event on
/// `watch`; more frames of the same kind are counted, not sent again.
#[test]
fn a_violation_first_seen_is_an_event() {
    use std::io::{BufRead, BufReader, Write};
    let (ns, d) = with_present_ports();
    let stream = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    (&stream).write_all(b"{\"op\":\"watch\"}\n").expect("watch");
    let mut line = String::new();
    reader.read_line(&mut line).expect("watch answer");
    assert!(line.contains("\"watching\":true"), "{line}");
    ns.run(|| {
        let sender = vxcd::inspector::ring::Sender::open("p1x").expect("packet socket on p1x");
        sender
            .send_copies(&frame(Some(77)), 3)
            .expect("sending tagged frames");
    });
    let mut events = Vec::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap_or(0);
        assert!(
            n > 0,
            "the watch ended with no violation event; events: {events:?}\n{}",
            d.log()
        );
        let event: Value = serde_json::from_str(&line).expect("event json");
        if event["event"] == json!("violation") {
            assert_eq!(
                (
                    event["port"].clone(),
                    event["kind"].clone(),
                    event["vlan"].clone(),
                    event["direction"].clone()
                ),
                (
                    json!("syd-1"),
                    json!("unknown_vlan"),
                    json!(77),
                    json!("rx")
                ),
                "{event}"
            );
            break;
        }
        events.push(event);
    }
}

fn batch(ops: Vec<Value>, atomic: bool) -> Value {
    json!({"op": "batch", "ops": ops, "atomic": atomic})
}

/// Issue 9, `batch`: an atomic batch whose last op breaks a rule changes nothing and says which
/// op; a good one is applied whole (one journal entry) and survives a restart; a non-atomic one
/// applies what it can; ops that cannot be batched are refused.
#[test]
fn batches_atomic_all_or_nothing_and_non_atomic_each_alone() {
    let ns = Netns::new("batch");
    let mut d = with_absent_ports(&ns);
    let last_seq = |d: &Daemon| ok(d.call(json!({"op": "status"})))["store"]["last_seq"].clone();
    let mut ops = vec![multi_use_key("k-1", "mel-2")];
    for i in 0..499 {
        ops.push(vxc(&format!("v-{i}"), "k-1", "mel-1", None));
    }
    let mut bad = vxc("v-bad", "k-1", "mel-1", None);
    bad["vxc"]["rate_mbps"] = json!(0);
    ops.push(bad);
    let before = last_seq(&d);
    let refused = ok(d.call(batch(ops.clone(), true)));
    assert_eq!(
        (refused["applied"].clone(), refused["failed_op"].clone()),
        (json!(false), json!(500))
    );
    let results = refused["results"].as_array().expect("results");
    assert_eq!(results.len(), 501);
    assert_eq!(
        results[500]["error"]["code"],
        json!("rate_invalid"),
        "{}",
        results[500]
    );
    assert_eq!(
        results[3]["error"]["code"],
        json!("not_applied"),
        "{}",
        results[3]
    );
    assert_eq!(
        vxc_ids(&d),
        Vec::<String>::new(),
        "a refused atomic batch left VXCs"
    );
    err(d.call(json!({"op": "key.get", "key": "k-1"})), "not_found");
    assert_eq!(
        last_seq(&d),
        before,
        "a refused atomic batch wrote to the journal"
    );

    ops.pop();
    let applied = ok(d.call(batch(ops, true)));
    assert_eq!(applied["applied"], json!(true));
    assert!(applied["results"]
        .as_array()
        .expect("results")
        .iter()
        .all(|r| r["ok"] == json!(true)));
    assert_eq!(
        applied["results"][1]["result"]["vxc"]["a_end"]["vlan"],
        json!(2)
    );
    assert_eq!(vxc_ids(&d).len(), 499);
    let seq = last_seq(&d).as_u64().expect("seq");
    assert_eq!(
        seq,
        before.as_u64().expect("seq") + 500,
        "one record per change"
    );

    let mixed = ok(d.call(batch(
        vec![
            vxc("v-x", "k-1", "mel-1", Some(2)),
            vxc("v-y", "k-1", "mel-1", None),
            json!({"op": "vxc.get", "id": "v-y"}),
        ],
        false,
    )));
    assert_eq!(
        mixed["results"][0]["error"]["code"],
        json!("vlan_in_use"),
        "{mixed}"
    );
    assert_eq!(mixed["results"][1]["ok"], json!(true), "{mixed}");
    assert_eq!(
        mixed["results"][2]["result"]["vxc"]["id"],
        json!("v-y"),
        "{mixed}"
    );
    let e = err(
        d.call(batch(vec![json!({"op": "watch"})], false)),
        "bad_request",
    );
    assert!(e["message"].as_str().unwrap_or("").contains("watch"), "{e}");
    err(
        d.call(batch(vec![json!({"op": "status"})], true)),
        "bad_request",
    );
    err(
        d.call(batch(
            vec![json!({"op": "vxc.get", "id": "bad id!"})],
            false,
        )),
        "bad_request",
    );

    d.kill9();
    d.restart();
    assert_eq!(vxc_ids(&d).len(), 500, "after kill -9");
}

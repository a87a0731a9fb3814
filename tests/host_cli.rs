//! vxcctl as operators run it: the built binary against a fake vxcd (a Unix socket in a temp dir
//! that records the request line and answers with a canned protocol line).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;

use serde_json::{json, Value};

const VXCCTL: &str = env!("CARGO_BIN_EXE_vxcctl");

enum Answer {
    Ok(Value),
    Err(Value),
}

/// A fake vxcd answering one request.
struct FakeVxcd {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    requests: mpsc::Receiver<Value>,
}

impl FakeVxcd {
    fn start(answer: Answer) -> FakeVxcd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, requests) = mpsc::channel();
        thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let request: Value = serde_json::from_str(&line).unwrap();
            let id = request.get("id").cloned().unwrap_or(Value::Null);
            // Recorded before answering: once vxcctl has its answer, the request is here.
            tx.send(request).unwrap();
            let answer = match answer {
                Answer::Ok(result) => json!({"id": id, "ok": true, "result": result}),
                Answer::Err(error) => json!({"id": id, "ok": false, "error": error}),
            };
            let mut stream = stream;
            stream.write_all(format!("{answer}\n").as_bytes()).unwrap();
        });
        FakeVxcd {
            _dir: dir,
            socket,
            requests,
        }
    }

    /// The request vxcctl sent, if it sent one (call after vxcctl exited).
    fn request(&self) -> Option<Value> {
        self.requests.try_recv().ok()
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn vxcctl(socket: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(VXCCTL);
    cmd.env_remove("VXCD_SOCKET");
    if let Some(socket) = socket {
        cmd.arg("--socket").arg(socket);
    }
    let out = cmd.args(args).output().unwrap();
    Run {
        code: out.status.code().expect("vxcctl killed by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Runs vxcctl against a fake vxcd giving `answer`; returns the run and the request sent.
fn against(answer: Answer, args: &[&str]) -> (Run, Option<Value>) {
    let fake = FakeVxcd::start(answer);
    let run = vxcctl(Some(&fake.socket), args);
    let request = fake.request();
    (run, request)
}

fn key_view() -> Value {
    json!({
        "key": "k-1", "port": "syd-1", "description": "Acme B", "single_use": true,
        "max_speed_mbps": 1000, "vlan": 100, "valid_from": "2026-01-01T00:00:00Z",
        "valid_until": null, "active": false, "used_by": [], "redeemable": false,
        "reason": "key_inactive"
    })
}

fn vxc_view(id: &str, a_vlan: Option<u16>, a_if: &str, state: &str) -> Value {
    json!({
        "id": id, "name": "acme-aws", "service_key": "k-1", "rate_mbps": 100,
        "service_level_ref": null,
        "a_end": {"port": "syd-2", "vlan": a_vlan, "interface": a_if},
        "b_end": {"port": "syd-1", "vlan": 100, "interface": "eth1.100"},
        "state": state, "created_at": "2026-11-26T10:00:00Z"
    })
}

#[test]
fn key_put_from_flags_sends_the_key_object_and_shows_the_key() {
    let (run, request) = against(
        Answer::Ok(json!({"key": key_view()})),
        &[
            "key",
            "put",
            "--key",
            "k-1",
            "--port",
            "syd-1",
            "--max-speed",
            "1000",
            "--single-use",
            "--vlan",
            "100",
            "--description",
            "Acme B",
            "--valid-from",
            "2026-01-01T00:00:00Z",
            "--inactive",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        request.unwrap(),
        json!({"id": 1, "op": "key.put", "key": {
            "key": "k-1", "port": "syd-1", "description": "Acme B", "single_use": true,
            "max_speed_mbps": 1000, "vlan": 100, "valid_from": "2026-01-01T00:00:00Z",
            "valid_until": null, "active": false
        }})
    );
    assert_eq!(
        run.stdout,
        "key:         k-1\n\
         port:        syd-1\n\
         description: Acme B\n\
         use:         single\n\
         max speed:   1000 Mbps\n\
         vlan:        100\n\
         valid from:  2026-01-01T00:00:00Z\n\
         valid until: -\n\
         active:      no\n\
         redeemable:  no (key_inactive)\n\
         used by:     -\n"
    );
    assert_eq!(run.stderr, "");
}

#[test]
fn vxc_put_from_a_toml_file_sends_the_vxc_object() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vxc.toml");
    std::fs::write(
        &file,
        "id = \"v-1\"\nname = \"acme-aws\"\nservice_key = \"k-1\"\nrate_mbps = 100\n\
         service_level_ref = \"cc-42\"\n\n[a_end]\nport = \"syd-2\"\nvlan = 200\n",
    )
    .unwrap();
    let mut answer = vxc_view("v-1", Some(200), "eth2.200", "up");
    answer["service_level_ref"] = json!("cc-42");
    let (run, request) = against(
        Answer::Ok(json!({"vxc": answer})),
        &["vxc", "put", "--file", file.to_str().unwrap()],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        request.unwrap(),
        json!({"id": 1, "op": "vxc.put", "vxc": {
            "id": "v-1", "name": "acme-aws", "service_key": "k-1", "rate_mbps": 100,
            "service_level_ref": "cc-42", "shutdown": false,
            "a_end": {"port": "syd-2", "vlan": 200, "untagged": false}
        }})
    );
    assert_eq!(
        run.stdout,
        "id:                v-1\n\
         name:              acme-aws\n\
         state:             up\n\
         rate:              100 Mbps\n\
         a-end:             syd-2/200 (eth2.200)\n\
         b-end:             syd-1/100 (eth1.100)\n\
         service key:       k-1\n\
         service level ref: cc-42\n\
         created at:        2026-11-26T10:00:00Z\n"
    );
}

#[test]
fn vxc_plan_from_flags_sends_vxc_plan_with_an_untagged_a_end() {
    let (run, request) = against(
        Answer::Ok(json!({"vxc": vxc_view("v-2", None, "eth2", "planned")})),
        &[
            "vxc",
            "plan",
            "--id",
            "v-2",
            "--name",
            "acme-aws",
            "--key",
            "k-1",
            "--rate",
            "100",
            "--a-port",
            "syd-2",
            "--untagged",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        request.unwrap(),
        json!({"id": 1, "op": "vxc.plan", "vxc": {
            "id": "v-2", "name": "acme-aws", "service_key": "k-1", "rate_mbps": 100,
            "service_level_ref": null, "shutdown": false,
            "a_end": {"port": "syd-2", "vlan": null, "untagged": true}
        }})
    );
    assert!(
        run.stdout.contains("state:             planned\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("a-end:             syd-2/untagged (eth2)\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn ports_print_as_a_table_with_vlan_ranges() {
    let mut vlans: Vec<u16> = (100..=130).collect();
    vlans.push(200);
    let (run, request) = against(
        Answer::Ok(json!({"ports": [
            {"name": "syd-1", "interface": "eth1", "present": true, "vlans": vlans,
             "untagged_vxc": null, "accepting": true},
            {"name": "syd-2", "interface": "eth2", "present": false, "vlans": [],
             "untagged_vxc": "v-9", "accepting": false},
        ]})),
        &["ports"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(request.unwrap(), json!({"id": 1, "op": "port.list"}));
    assert_eq!(
        run.stdout,
        "NAME   INTERFACE  PRESENT  VLANS        UNTAGGED  ACCEPTING\n\
         syd-1  eth1       yes      100-130,200  -         yes\n\
         syd-2  eth2       no       -            v-9       no\n"
    );
}

#[test]
fn keys_print_as_a_table() {
    let multi = json!({
        "key": "k-2", "port": "syd-2", "description": "", "single_use": false,
        "max_speed_mbps": 10000, "vlan": null, "valid_from": null, "valid_until": null,
        "active": true, "used_by": ["v-3", "v-4"], "redeemable": true, "reason": null
    });
    let (run, request) = against(Answer::Ok(json!({"keys": [key_view(), multi]})), &["keys"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(request.unwrap(), json!({"id": 1, "op": "key.list"}));
    assert_eq!(
        run.stdout,
        "KEY  PORT   USE     MAX         VLAN  ACTIVE  REDEEMABLE  REASON        USED-BY\n\
         k-1  syd-1  single  1000 Mbps   100   no      no          key_inactive  -\n\
         k-2  syd-2  multi   10000 Mbps  -     yes     yes         -             v-3,v-4\n"
    );
}

#[test]
fn vxcs_print_as_a_table_with_ends_and_interfaces() {
    let (run, request) = against(
        Answer::Ok(json!({"vxcs": [
            vxc_view("v-1", Some(200), "eth2.200", "up"),
            vxc_view("v-2", None, "eth2", "pending"),
        ]})),
        &["vxcs"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(request.unwrap(), json!({"id": 1, "op": "vxc.list"}));
    assert_eq!(
        run.stdout,
        "ID   NAME      STATE    RATE      A-END                  B-END                 KEY\n\
         v-1  acme-aws  up       100 Mbps  syd-2/200 (eth2.200)   syd-1/100 (eth1.100)  k-1\n\
         v-2  acme-aws  pending  100 Mbps  syd-2/untagged (eth2)  syd-1/100 (eth1.100)  k-1\n"
    );
}

#[test]
fn status_prints_field_lines() {
    let (run, request) = against(
        Answer::Ok(json!({
            "version": "0.1.0", "uptime_s": 3725, "ports": 2, "keys": 5, "vxcs": 3,
            "kernel": {"vlan_8021q": false}, "last_reconcile": "2026-11-26T10:00:00Z",
            "drift_repairs": 4, "vxc_states": {"pending": 1, "up": 2},
            "inspector": {"enabled": true, "capturing": 2, "violations": 7, "egress_violations": 1}
        })),
        &["status"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(request.unwrap(), json!({"id": 1, "op": "status"}));
    assert_eq!(
        run.stdout,
        "version:        0.1.0\n\
         uptime:         1h 2m 5s\n\
         ports:          2\n\
         keys:           5\n\
         vxcs:           3 (pending 1, up 2)\n\
         kernel 802.1Q:  no\n\
         last reconcile: 2026-11-26T10:00:00Z\n\
         drift repairs:  4\n\
         inspector:      on, 2 ports capturing, 7 violation frames (1 SENT by this host)\n"
    );
}

#[test]
fn json_prints_the_result_object_pretty() {
    let result = json!({"vxcs": [vxc_view("v-1", Some(200), "eth2.200", "up")]});
    let (run, _) = against(Answer::Ok(result.clone()), &["vxcs", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!("{}\n", serde_json::to_string_pretty(&result).unwrap())
    );
    let back: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(back, result);
}

#[test]
fn show_and_delete_send_the_vxc_id_as_the_id_argument() {
    let (run, request) = against(
        Answer::Ok(json!({"vxc": vxc_view("v-1", Some(200), "eth2.200", "up")})),
        &["vxc", "show", "v-1"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(request.unwrap(), json!({"op": "vxc.get", "id": "v-1"}));

    let (run, request) = against(
        Answer::Ok(json!({"deleted": "v-1"})),
        &["vxc", "delete", "v-1"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(request.unwrap(), json!({"op": "vxc.delete", "id": "v-1"}));
    assert_eq!(run.stdout, "deleted VXC v-1\n");

    let (run, request) = against(
        Answer::Ok(json!({"key": key_view()})),
        &["key", "show", "k-1"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        request.unwrap(),
        json!({"id": 1, "op": "key.get", "key": "k-1"})
    );
}

#[test]
fn a_refusal_exits_1_with_code_and_message_on_stderr() {
    let error = json!({
        "code": "vlan_in_use",
        "message": "VLAN 200 on port syd-1 is in use by VXC v-17; next available 201",
        "port": "syd-1", "vlan": 200, "held_by": "v-17", "held_by_kind": "vxc",
        "next_available": 201
    });
    let args = [
        "vxc", "put", "--id", "v-1", "--name", "x", "--key", "k-1", "--rate", "100", "--a-port",
        "syd-1", "--a-vlan", "200",
    ];
    let (run, request) = against(Answer::Err(error.clone()), &args);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "vxcctl: vlan_in_use: VLAN 200 on port syd-1 is in use by VXC v-17; next available 201\n"
    );
    assert_eq!(run.stdout, "");
    assert_eq!(request.unwrap()["vxc"]["a_end"]["vlan"], json!(200));

    // With --json the error object goes to stdout too, for scripts that want next_available.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let (run, _) = against(Answer::Err(error.clone()), &json_args);
    assert_eq!(run.code, 1);
    let printed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed, error);
}

#[test]
fn a_missing_socket_exits_2_naming_the_path_and_suggesting_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let run = vxcctl(Some(&socket), &["status"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.starts_with(&format!(
            "vxcctl: cannot connect to vxcd at {}: no such socket",
            socket.display()
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--socket"), "{}", run.stderr);
    assert_eq!(run.stdout, "");
}

#[test]
fn vxcd_socket_env_picks_the_socket() {
    let fake = FakeVxcd::start(Answer::Ok(json!({"keys": []})));
    let out = Command::new(VXCCTL)
        .env("VXCD_SOCKET", &fake.socket)
        .arg("keys")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fake.request().unwrap()["op"], json!("key.list"));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "KEY  PORT  USE  MAX  VLAN  ACTIVE  REDEEMABLE  REASON  USED-BY\n"
    );
}

#[test]
fn usage_errors_exit_2_without_asking_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vxc.toml");
    std::fs::write(&file, "id = \"v-1\"\n").unwrap();
    let file = file.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["vxc", "put", "--id", "v-1"], "required"),
        (
            &[
                "vxc",
                "put",
                "--id",
                "v",
                "--name",
                "n",
                "--key",
                "k",
                "--rate",
                "1",
                "--a-port",
                "p",
                "--a-vlan",
                "5",
                "--untagged",
            ],
            "cannot be used with",
        ),
        (
            &["vxc", "put", "--file", file, "--rate", "5"],
            "cannot be used with",
        ),
        (
            &[
                "key",
                "put",
                "--key",
                "k",
                "--port",
                "p",
                "--max-speed",
                "1",
                "--valid-from",
                "yesterday",
            ],
            "RFC 3339",
        ),
        (
            &[
                "vxc",
                "put",
                "--id",
                "v",
                "--name",
                "n",
                "--key",
                "k",
                "--rate=-5",
                "--a-port",
                "p",
            ],
            "invalid value '-5' for '--rate",
        ),
        (&["frobnicate"], "unrecognized subcommand"),
        (&["vxc", "put", "--file", file], "missing field"),
        (
            &["vxc", "put", "--file", "/nonexistent/vxc.toml"],
            "/nonexistent/vxc.toml",
        ),
    ];
    for (args, says) in cases {
        let fake = FakeVxcd::start(Answer::Ok(json!({})));
        let run = vxcctl(Some(&fake.socket), args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert!(fake.request().is_none(), "{args:?} reached the daemon");
    }
}

#[test]
fn an_answer_of_the_wrong_shape_exits_2() {
    let (run, _) = against(Answer::Ok(json!({"vxcs": []})), &["ports"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unexpected answer") && run.stderr.contains("ports"),
        "{}",
        run.stderr
    );
}

#[test]
fn verify_prints_each_direction_and_exits_1_when_one_fails() {
    let direction = |dir: &str, pass: bool, observed: u16| {
        json!({"direction": dir, "pass": pass, "expected_vlan": 100,
               "observed_tag": {"tpid": 0x8100, "vid": observed, "pcp": 0}, "observed_inner": null,
               "seen": true, "left_on": [], "entered": true, "elapsed_us": 700,
               "detail": if pass { "left prov0 once with VLAN 100".to_owned() }
                         else { format!("left prov0 with VLAN {observed} instead of VLAN 100") }})
    };
    let (run, request) = against(
        Answer::Ok(json!({"pass": false, "results": [
            {"vxc": "v-1", "pass": false, "directions": [direction("a->b", false, 301), direction("b->a", true, 100)]}
        ]})),
        &["verify", "v-1"],
    );
    assert_eq!(request.unwrap(), json!({"op": "verify", "id": "v-1"}));
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("verification failed"), "{}", run.stderr);
    let fail = run.stdout.lines().find(|l| l.contains("a->b")).unwrap();
    assert!(
        fail.contains("FAIL") && fail.contains("VLAN 301") && fail.contains("instead of VLAN 100"),
        "{}",
        run.stdout
    );
    let pass = run.stdout.lines().find(|l| l.contains("b->a")).unwrap();
    assert!(
        pass.contains("pass") && pass.contains("0.7 ms"),
        "{}",
        run.stdout
    );

    let (run, _) = against(
        Answer::Ok(json!({"pass": true, "results": []})),
        &["verify"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("all passed"), "{}", run.stdout);
}

#[test]
fn inspect_prints_counters_and_violations() {
    let (run, request) = against(
        Answer::Ok(json!({"enabled": true, "ports": [{
            "port": "syd-1", "interface": "eth1", "capturing": true, "error": null,
            "ends": [{"vxc": "v-1", "side": "a", "vlan": 200, "rx_frames": 5, "rx_bytes": 500, "tx_frames": 4, "tx_bytes": 400}],
            "violations": [{"kind": "unknown_vlan", "vlan": 77, "tpid": 33024, "inner_vlan": null,
                            "direction": "rx", "count": 3, "last_seen": "2026-11-26T10:00:00Z"}],
            "probes_rx": 0, "probes_tx": 0, "unparsed": 0, "kernel_drops": 0}]})),
        &["inspect"],
    );
    assert_eq!(request.unwrap(), json!({"id": 1, "op": "inspect"}));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let end = run.stdout.lines().find(|l| l.contains("v-1")).unwrap();
    assert_eq!(
        end.split_whitespace().collect::<Vec<_>>(),
        ["syd-1", "v-1", "a", "200", "5", "500", "4", "400"]
    );
    let violation = run
        .stdout
        .lines()
        .find(|l| l.contains("unknown_vlan"))
        .unwrap();
    assert_eq!(
        violation.split_whitespace().collect::<Vec<_>>(),
        [
            "syd-1",
            "unknown_vlan",
            "77",
            "rx",
            "3",
            "2026-11-26T10:00:00Z"
        ]
    );
}

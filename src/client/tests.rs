use super::*;
use crate::domain::{KeyRequest, VxcRequest};
use crate::protocol::EndView;
use serde_json::json;
use std::io::BufRead;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::thread;

/// A server that reads one request per entry of `answers`, reports it, and answers with the
/// entry: `Some(line)` (the request's id is substituted for `$ID`) or `None` (stay silent).
fn fake_server(
    answers: Vec<Option<String>>,
) -> (tempfile::TempDir, PathBuf, mpsc::Receiver<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        for answer in answers {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                return;
            }
            let request: Value = serde_json::from_str(&line).unwrap();
            let id = request.get("id").cloned().unwrap_or(Value::Null);
            tx.send(request).unwrap();
            match answer {
                Some(a) => {
                    let a = a.replace("$ID", &id.to_string());
                    writer.write_all(format!("{a}\n").as_bytes()).unwrap();
                }
                None => {
                    // Hold the connection open without answering until the client gives up.
                    let mut rest = String::new();
                    let _ = reader.read_line(&mut rest);
                    return;
                }
            }
        }
    });
    (dir, path, rx)
}

#[test]
fn calls_carry_fresh_ids_and_return_results() {
    let (_dir, path, rx) = fake_server(vec![
        Some(r#"{"id":$ID,"ok":true,"result":{"n":1}}"#.into()),
        Some(r#"{"id":$ID,"ok":true,"result":{"n":2}}"#.into()),
    ]);
    let mut client = Client::connect(&path).unwrap();
    assert_eq!(
        client.call(&json!({"op": "status"})).unwrap(),
        json!({"n": 1})
    );
    assert_eq!(
        client.call_op(&Op::KeyGet { key: "k-1".into() }).unwrap(),
        json!({"n": 2})
    );
    assert_eq!(rx.recv().unwrap(), json!({"id": 1, "op": "status"}));
    assert_eq!(
        rx.recv().unwrap(),
        json!({"id": 2, "op": "key.get", "key": "k-1"})
    );
}

#[test]
fn requests_parse_back_as_the_daemon_parses_them() {
    let key = KeyPutArgs {
        file: None,
        key: Some("k-1".into()),
        port: Some("syd-1".into()),
        max_speed: Some(1000),
        single_use: true,
        vlan: Some(100),
        description: Some("Acme".into()),
        valid_from: Some(parse_rfc3339("2026-01-01T00:00:00+10:00").unwrap()),
        valid_until: None,
        inactive: true,
        host: Some("10.99.0.2".into()),
    }
    .request()
    .unwrap();
    let vxc = VxcArgs {
        file: None,
        id: Some("v-1".into()),
        name: Some("n".into()),
        key: Some("k-1".into()),
        rate: Some(100),
        a_port: Some("syd-2".into()),
        a_vlan: None,
        untagged: true,
        service_level_ref: Some("cc".into()),
        shutdown: false,
        a_host: None,
        vni: Some(17),
    }
    .request()
    .unwrap();
    let ops = vec![
        Op::VxcGet { id: "v-1".into() },
        Op::VxcDelete { id: "v-1".into() },
        Op::Status {},
        Op::PortList {},
        Op::KeyList {},
        Op::KeyGet { key: "k-1".into() },
        Op::KeyPut { key },
        Op::VxcList {},
        Op::VxcPut { vxc: vxc.clone() },
        Op::VxcPlan { vxc },
    ];
    let ok = r#"{"id":$ID,"ok":true,"result":{}}"#;
    let (_dir, path, rx) = fake_server(vec![Some(ok.into()); ops.len()]);
    let mut client = Client::connect(&path).unwrap();
    for op in &ops {
        client.call_op(op).unwrap();
        let sent = rx.recv().unwrap().to_string();
        let parsed = crate::protocol::parse_request(sent.as_bytes())
            .unwrap_or_else(|(_, f)| panic!("{sent}: {}", f.message));
        assert_eq!(&parsed.op, op, "{sent}");
    }
}

#[test]
fn an_id_argument_is_sent_as_is_and_may_be_echoed() {
    let (_dir, path, rx) = fake_server(vec![Some(
        r#"{"id":$ID,"ok":true,"result":{"deleted":"v-1"}}"#.into(),
    )]);
    let mut client = Client::connect(&path).unwrap();
    let result = client.call_op(&Op::VxcDelete { id: "v-1".into() }).unwrap();
    assert_eq!(result, json!({"deleted": "v-1"}));
    assert_eq!(rx.recv().unwrap(), json!({"op": "vxc.delete", "id": "v-1"}));
}

#[test]
fn refusals_keep_code_message_and_details() {
    let (_dir, path, _rx) = fake_server(vec![Some(
        r#"{"id":$ID,"ok":false,"error":{"code":"vlan_in_use","message":"VLAN 200 on port syd-1 is in use by VXC v-17; next available 201","port":"syd-1","next_available":201}}"#.into(),
    )]);
    let mut client = Client::connect(&path).unwrap();
    let err = client.call(&json!({"op": "vxc.put"})).unwrap_err();
    assert_eq!(err.exit_code(), 1);
    let ClientError::Remote(remote) = err else {
        panic!("{err}")
    };
    assert_eq!(remote.code, "vlan_in_use");
    assert_eq!(remote.details.get("next_available"), Some(&json!(201)));
    assert_eq!(
        remote.to_string(),
        "vlan_in_use: VLAN 200 on port syd-1 is in use by VXC v-17; next available 201"
    );
    assert_eq!(remote.to_json()["port"], json!("syd-1"));
}

#[test]
fn a_foreign_answer_id_is_a_protocol_error() {
    let (_dir, path, _rx) = fake_server(vec![Some(r#"{"id":99,"ok":true,"result":{}}"#.into())]);
    let mut client = Client::connect(&path).unwrap();
    let err = client.call(&json!({"op": "status"})).unwrap_err();
    assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("answer id 99"), "{err}");
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn garbage_and_missing_fields_are_protocol_errors() {
    for answer in [
        "not json",
        r#"{"id":$ID,"ok":true}"#,
        r#"{"id":$ID,"ok":"yes","result":{}}"#,
        r#"{"id":$ID,"ok":false,"error":{"code":5}}"#,
    ] {
        let (_dir, path, _rx) = fake_server(vec![Some(answer.into())]);
        let mut client = Client::connect(&path).unwrap();
        let err = client.call(&json!({"op": "status"})).unwrap_err();
        assert!(
            matches!(err, ClientError::Protocol { .. }),
            "{answer}: {err}"
        );
    }
}

#[test]
fn silence_is_a_timeout_naming_the_op() {
    let (_dir, path, _rx) = fake_server(vec![None]);
    let mut client = Client::connect_with_timeout(&path, Duration::from_millis(200)).unwrap();
    let err = client.call(&json!({"op": "vxc.list"})).unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("vxc.list"), "{err}");
}

#[test]
fn a_closed_connection_is_reported() {
    let (_dir, path, _rx) = fake_server(vec![]);
    let mut client = Client::connect(&path).unwrap();
    let err = client.call(&json!({"op": "status"})).unwrap_err();
    // The server may close before or after reading: either way no answer arrives.
    assert!(
        matches!(err, ClientError::Closed { .. } | ClientError::Io { .. }),
        "{err}"
    );
}

#[test]
fn a_missing_socket_names_the_path_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.sock");
    let err = Client::connect(&path).err().unwrap();
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("--socket"), "{text}");
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn vlans_compress_to_ranges() {
    assert_eq!(compress_vlans(&[]), "-");
    assert_eq!(compress_vlans(&[200]), "200");
    let mut vlans: Vec<u16> = (100..=130).collect();
    vlans.push(200);
    assert_eq!(compress_vlans(&vlans), "100-130,200");
    assert_eq!(compress_vlans(&[5, 3, 4, 4, 9, 10, 4093]), "3-5,9-10,4093");
}

#[test]
fn tables_align_and_have_no_trailing_blanks() {
    let out = table(
        &["A", "LONGER", "C"],
        &[
            vec!["xxxx".into(), "y".into(), "".into()],
            vec!["z".into(), "".into(), "w".into()],
        ],
    );
    assert_eq!(out, "A     LONGER  C\nxxxx  y\nz             w\n");
}

#[test]
fn field_lists_align_values() {
    assert_eq!(
        field_list(&[("id", "v-1".into()), ("created at", "now".into())]),
        "id:         v-1\ncreated at: now\n"
    );
}

#[test]
fn ends_show_vlan_or_untagged_and_interface() {
    let end = EndView {
        port: "syd-1".into(),
        vlan: Some(200),
        untagged: None,
        interface: Some("eth1.200".into()),
        host: None,
    };
    assert_eq!(end_text(&end), "syd-1/200 (eth1.200)");
    let end = EndView {
        vlan: None,
        untagged: Some(true),
        interface: Some("eth1".into()),
        ..end
    };
    assert_eq!(end_text(&end), "syd-1/untagged (eth1)");
    let end = EndView {
        interface: None,
        ..end
    };
    assert_eq!(end_text(&end), "syd-1/untagged");
    let end = EndView {
        vlan: Some(100),
        untagged: None,
        interface: Some("vxc17".into()),
        host: Some("10.99.0.2".into()),
        ..end
    };
    assert_eq!(end_text(&end), "syd-1@10.99.0.2/100 (vxc17)");
}

#[test]
fn a_vxc_across_hosts_shows_the_peer_the_tunnel_and_the_vni() {
    let view = serde_json::json!({"vxc": {"id": "v-1", "name": "n", "service_key": "k-1",
        "rate_mbps": 100, "service_level_ref": null, "state": "up",
        "created_at": "2026-11-26T10:00:00Z", "shutdown": false, "vni": 17,
        "a_end": {"port": "syd-1", "vlan": 200, "untagged": false, "interface": "eth1.200",
            "host": null},
        "b_end": {"port": "mel-1", "vlan": 100, "interface": "vxc17",
            "host": "10.99.0.2"}}});
    let text = render_vxc(&view).unwrap();
    assert!(
        text.contains("a-end:             syd-1/200 (eth1.200)\n"),
        "{text}"
    );
    assert!(
        text.contains("b-end:             mel-1@10.99.0.2/100 (vxc17)\n"),
        "{text}"
    );
    assert!(text.contains("vni:               17\n"), "{text}");
}

#[test]
fn toml_bodies_accept_datetimes_and_refuse_unknown_fields() {
    let key: KeyRequest = parse_body(
        "key = \"k-1\"\nport = \"syd-1\"\nsingle_use = false\nmax_speed_mbps = 100\n\
         valid_from = 2026-01-01T00:00:00Z\nvalid_until = \"2026-02-01T00:00:00+01:00\"\n",
        false,
        "key",
        "k.toml",
    )
    .unwrap();
    assert_eq!(
        key.valid_from.unwrap(),
        parse_rfc3339("2026-01-01T00:00:00Z").unwrap()
    );
    assert!(key.valid_until.is_some());
    assert!(key.active);

    let err = parse_body::<VxcRequest>(
        "id = \"v\"\nname = \"n\"\nservice_key = \"k\"\nrate_mbps = 1\ncolour = \"red\"\n[a_end]\nport = \"p\"\n",
        false,
        "vxc",
        "v.toml",
    )
    .unwrap_err();
    assert!(err.0.starts_with("v.toml: not a valid vxc object"), "{err}");
    assert!(err.0.contains("colour"), "{err}");

    let err = parse_body::<VxcRequest>("id = ", false, "vxc", "v.toml").unwrap_err();
    assert!(err.0.contains("not valid TOML"), "{err}");
}

#[test]
fn json_bodies_are_recognised_by_name_or_brace() {
    let text = r#"{"id":"v-1","name":"n","service_key":"k","rate_mbps":10,"a_end":{"port":"syd-1","untagged":true}}"#;
    let vxc: VxcRequest = parse_body(text, false, "vxc", "-").unwrap();
    assert!(vxc.a_end.untagged);
    let vxc: VxcRequest = parse_body(&format!("\n {text}"), true, "vxc", "v.json").unwrap();
    assert_eq!(vxc.rate_mbps, 10);
}

#[test]
fn renderers_refuse_other_shapes() {
    assert!(render_ports(&json!({"vxcs": []})).is_err());
    assert!(render_vxc(&json!({"vxc": {"id": 1}})).is_err());
    assert!(render_status(&json!({})).is_err());
}

#[test]
fn uptime_reads_as_days_hours_minutes() {
    assert_eq!(duration_text(5), "5s");
    assert_eq!(duration_text(3 * 3600 + 2 * 60 + 5), "3h 2m 5s");
    assert_eq!(duration_text(86_400 + 61), "1d 0h 1m 1s");
}

use super::*;

fn parse(line: &str) -> Result<Request, (Value, Failure)> {
    parse_request(line.as_bytes())
}

#[test]
fn ids_outside_the_grammar_are_bad_requests_for_every_lookup() {
    for (op, field) in [
        ("key.get", "key"),
        ("key.delete", "key"),
        ("vxc.get", "id"),
        ("vxc.delete", "id"),
        ("verify", "id"),
    ] {
        for bad in ["", "a b", "../etc", "ü", &"x".repeat(65)] {
            let line = json!({"op": op, field: bad}).to_string();
            let (_, failure) = parse(&line).expect_err(&line);
            assert_eq!(failure.code, "bad_request", "{line}: {}", failure.message);
        }
        let line = json!({"op": op, field: "v-7"}).to_string();
        assert!(parse(&line).is_ok(), "{line}");
    }
}

#[test]
fn numbers_of_any_size_reach_the_rules() {
    for raw in [
        "99999999999999999999",
        "1e30",
        "-1e30",
        "-99999999999999999999",
    ] {
        let line = format!(
            r#"{{"op": "key.put", "key": {{"key": "k", "port": "p", "single_use": true,
                "max_speed_mbps": {raw}, "vlan": {raw}}}}}"#
        );
        let Op::KeyPut { key } = parse(&line).expect(&line).op else {
            panic!("{line}")
        };
        let want = if raw.starts_with('-') {
            i64::MIN
        } else {
            i64::MAX
        };
        assert_eq!((key.max_speed_mbps, key.vlan), (want, Some(want)), "{raw}");
        let line = format!(
            r#"{{"op": "vxc.put", "vxc": {{"id": "v", "name": "n", "service_key": "k",
                "rate_mbps": {raw}, "a_end": {{"port": "p", "vlan": {raw}}}}}}}"#
        );
        let Op::VxcPut { vxc } = parse(&line).expect(&line).op else {
            panic!("{line}")
        };
        assert_eq!((vxc.rate_mbps, vxc.a_end.vlan), (want, Some(want)), "{raw}");
    }
    let line = r#"{"op": "key.put", "key": {"key": "k", "port": "p", "single_use": false,
        "max_speed_mbps": 10.5}}"#;
    assert_eq!(parse(line).expect_err(line).1.code, "bad_request");
}

#[test]
fn parses_every_op_and_echoes_any_id() {
    let req = parse(r#"{"id": [1, "x"], "op": "hello"}"#).unwrap();
    assert_eq!(req.id, json!([1, "x"]));
    assert_eq!(req.op, Op::Hello {});
    // For vxc.get and vxc.delete the request id is the VXC id.
    let req = parse(r#"{"op": "vxc.get", "id": "v-7"}"#).unwrap();
    assert_eq!(req.id, json!("v-7"));
    assert_eq!(req.op, Op::VxcGet { id: "v-7".into() });
    let req = parse(r#"{"op": "vxc.delete", "id": "v-7"}"#).unwrap();
    assert_eq!(req.op, Op::VxcDelete { id: "v-7".into() });
    let req = parse(r#"{"op": "verify", "id": "v-7"}"#).unwrap();
    assert_eq!(
        req.op,
        Op::Verify {
            id: Some("v-7".into())
        }
    );
    let req = parse(r#"{"op": "verify"}"#).unwrap();
    assert_eq!(req.op, Op::Verify { id: None });
    let (_, failure) = parse(r#"{"op": "vxc.get", "id": 7}"#).unwrap_err();
    assert_eq!(failure.code, "bad_request", "a VXC id is a string");
    let req = parse(
        r#"{"op":"key.put","key":{"key":"k-1","port":"syd-1","single_use":true,"max_speed_mbps":100,"vlan":100}}"#,
    )
    .unwrap();
    match req.op {
        Op::KeyPut { key } => {
            assert_eq!(key.vlan, Some(100));
            assert!(key.active, "active defaults to true");
            assert_eq!(key.description, "");
        }
        other => panic!("{other:?}"),
    }
    for op in OPS {
        let parsed = parse(&format!(r#"{{"op":"{op}"}}"#));
        if let Err((_, failure)) = parsed {
            assert_eq!(failure.code, "bad_request", "{op}: {}", failure.message);
        }
    }
}

#[test]
fn refuses_unknown_fields_at_every_level() {
    for line in [
        r#"{"op":"hello","extra":1}"#,
        r#"{"op":"key.get","key":"k","x":1}"#,
        r#"{"op":"key.put","key":{"key":"k","port":"p","single_use":false,"max_speed_mbps":1,"colour":"red"}}"#,
        r#"{"op":"vxc.put","vxc":{"id":"v","name":"n","service_key":"k","rate_mbps":1,"a_end":{"port":"p","speed":1}}}"#,
    ] {
        let (_, failure) = parse(line).unwrap_err();
        assert_eq!(failure.code, "bad_request", "{line}");
        assert!(
            failure.message.contains("unknown field"),
            "{}",
            failure.message
        );
    }
}

#[test]
fn malformed_lines_are_bad_requests() {
    for line in [
        "",
        "not json",
        "[1,2]",
        "42",
        r#"{"op": 5}"#,
        r#"{"id": 3}"#,
    ] {
        let (_, failure) = parse(line).unwrap_err();
        assert_eq!(failure.code, "bad_request", "{line:?}");
    }
    let (id, failure) = parse(r#"{"id": "a", "op": 5}"#).unwrap_err();
    assert_eq!(id, json!("a"), "the id is echoed even when the op is bad");
    assert_eq!(failure.code, "bad_request");
}

#[test]
fn unknown_op_is_its_own_code() {
    let (id, failure) = parse(r#"{"id":1,"op":"vxc.explode"}"#).unwrap_err();
    assert_eq!(id, json!(1));
    assert_eq!(failure.code, "unknown_op");
    assert!(failure.message.contains("vxc.explode"));
}

#[test]
fn mistyped_fields_are_bad_requests() {
    let (_, failure) = parse(
        r#"{"op":"key.put","key":{"key":"k","port":"p","single_use":"yes","max_speed_mbps":1}}"#,
    )
    .unwrap_err();
    assert_eq!(failure.code, "bad_request");
    let (_, failure) = parse(
        r#"{"op":"key.put","key":{"key":"k","port":"p","single_use":false,"max_speed_mbps":1,"valid_from":"yesterday"}}"#,
    )
    .unwrap_err();
    assert_eq!(failure.code, "bad_request");
}

#[test]
fn failure_lines_flatten_details() {
    let failure = Failure::new("vlan_in_use", "VLAN 200 on port syd-1 is in use")
        .with("port", "syd-1")
        .with("next_available", 201);
    let line = failure_line(&json!("r1"), &failure);
    let back: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        back,
        json!({"id": "r1", "ok": false, "error": {"code": "vlan_in_use",
            "message": "VLAN 200 on port syd-1 is in use", "port": "syd-1", "next_available": 201}})
    );
    let ok: Value = serde_json::from_str(&success_line(&Value::Null, json!({"a": 1}))).unwrap();
    assert_eq!(ok, json!({"id": null, "ok": true, "result": {"a": 1}}));
}
